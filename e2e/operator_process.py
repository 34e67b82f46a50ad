"""Runs `loraplex operator` as a real child process against a cluster, for tests and the local fleet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from loraplex.e2e.http_probe import free_port, healthz_ok, prometheus_samples
from loraplex.e2e.waiting import wait_until


class OperatorProcess:
    """One operator replica: its own ports, log file and peering priority."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        priority: int = 100,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_env = dict(extra_env or {})
        self.namespace = namespace
        self.log_path = log_path
        self.priority = priority
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LORAPLEX_STATUS_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "loraplex.cli", "operator",
                    "--namespace", self.namespace,
                    "--priority", str(self.priority),
                    "--metrics-port", str(self.metrics_port),
                    "--health-port", str(self.health_port),
                ],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._healthy, timeout, f"operator (priority {self.priority}) answering /healthz")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def metrics(self) -> dict[str, float]:
        """The loraplex_ samples of /metrics, keyed by 'name{labels}'."""
        return prometheus_samples(f"http://127.0.0.1:{self.metrics_port}/metrics", "loraplex_")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return healthz_ok(self.health_port)

"""The local fleet's operator: `loraplex operator` as a background daemon beside the control plane.

`loraplex dev up` starts it once (pid file and log in the cluster's state
folder) and `loraplex dev down` stops it, so the fleet keeps running between
commands like the control plane does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from loraplex.e2e.cluster import LocalCluster, process_alive, wait_processes_gone
from loraplex.e2e.operator_process import free_port, healthz_ok
from loraplex.e2e.waiting import wait_until


class LocalOperator:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pid_file = cluster.state_dir / "loraplex-operator.pid"
        self.log_file = cluster.state_dir / "loraplex-operator.log"
        self.ports_file = cluster.state_dir / "loraplex-operator.ports"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text())
            return pid if process_alive(pid) else None
        return None

    def ports(self) -> tuple[int, int]:
        metrics, health = self.ports_file.read_text().split()
        return int(metrics), int(health)

    def start(self, timeout: float = 60.0) -> int:
        """Start the operator unless it runs; return its pid."""
        running = self.pid()
        if running is not None:
            return running
        metrics, health = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "loraplex.cli", "operator"]
        command += ["--metrics-port", str(metrics), "--health-port", str(health)]
        # posix_spawn, not Popen: the daemon outlives this process, so there is no handle to wait on.
        pid = os.posix_spawn(
            sys.executable, command, env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self.log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )  # fmt: skip
        self.pid_file.write_text(str(pid))
        self.ports_file.write_text(f"{metrics} {health}")
        wait_until(lambda: self._healthy(pid), timeout, "local operator answering /healthz")
        return pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_processes_gone([pid], 30.0)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when we are the one who spawned it
        self.pid_file.unlink(missing_ok=True)

    def _healthy(self, pid: int) -> bool:
        if not process_alive(pid):
            raise RuntimeError(f"operator exited; see {self.log_file}")
        return healthz_ok(self.ports()[1])

"""The local fleet's operator: `loraplex operator` as a background daemon beside the control plane.

`loraplex dev up` starts it once (pid file and log in the cluster's state
folder) and `loraplex dev down` stops it, so the fleet keeps running between
commands like the control plane does.
"""

from __future__ import annotations

import os
import sys

from loraplex.e2e import daemon
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.http_probe import free_port, healthz_ok
from loraplex.e2e.waiting import wait_until

# The folder of the data the simulated example trains on (local_workers.EXAMPLE_DATASET): the local
# fleet's only dataset root.
EXAMPLE_DATASET_ROOT = "file:///tmp/loraplex-examples"


class LocalOperator:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pid_file = cluster.state_dir / "loraplex-operator.pid"
        self.log_file = cluster.state_dir / "loraplex-operator.log"
        self.ports_file = cluster.state_dir / "loraplex-operator.ports"

    def pid(self) -> int | None:
        return daemon.running_pid(self.pid_file)

    def ports(self) -> tuple[int, int]:
        metrics, health = self.ports_file.read_text().split()
        return int(metrics), int(health)

    def start(self, timeout: float = 60.0) -> int:
        """Start the operator unless it runs; return its pid."""
        running = self.pid()
        if running is not None:
            return running
        metrics, health = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            # Trainer pods of the local fleet run as local processes (e2e/local_workers.py): a local store.
            "LORAPLEX_TRAINING_STORE": f"file://{self.cluster.state_dir / 'training-store'}",
            # ...reading the example's data (examples/simulated/30-trainingjob.yaml) from its folder.
            "LORAPLEX_TRAINING_DATASET_ROOTS": EXAMPLE_DATASET_ROOT,
        }
        command = [sys.executable, "-m", "loraplex.cli", "operator"]
        command += ["--metrics-port", str(metrics), "--health-port", str(health)]
        pid = daemon.spawn(command, env, self.log_file, self.pid_file)
        self.ports_file.write_text(f"{metrics} {health}")
        wait_until(lambda: self._healthy(pid), timeout, "local operator answering /healthz")
        return pid

    def stop(self) -> None:
        daemon.stop(self.pid_file, timeout=30.0)

    def _healthy(self, pid: int) -> bool:
        if not process_alive(pid):
            raise RuntimeError(f"operator exited; see {self.log_file}")
        return healthz_ok(self.ports()[1])

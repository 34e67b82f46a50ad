"""`loraplex dev cluster up|status|down` on a cluster of its own: no stray processes afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from loraplex.cli import main
from loraplex.e2e.binaries import ensure_binaries
from loraplex.e2e.cluster import LocalCluster, process_alive, wait_processes_gone

pytestmark = pytest.mark.cluster

NAME = "loraplex-lifecycle"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_up_status_down_leaves_no_process(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = LocalCluster(NAME)
    try:
        assert main(["dev", "cluster", "up", "--name", NAME, "--nodes", "1"]) == 0
        out = capsys.readouterr().out
        assert f"export KUBECONFIG={cluster.kubeconfig}" in out
        assert main(["dev", "cluster", "status", "--name", NAME]) == 0
        status = cluster.status()
        assert status.running
        assert set(status.pids) >= {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok-controller",
        }
        # The CRDs come with it: the examples apply and kubectl lists them by their short names.
        kubectl = [str(ensure_binaries().kubectl), "--kubeconfig", str(cluster.kubeconfig)]
        applied = subprocess.run([*kubectl, "apply", "-f", str(EXAMPLES)], capture_output=True, text=True)
        assert applied.returncode == 0, applied.stderr
        listed = subprocess.run(
            [*kubectl, "get", "bm,lora,tj", "-o", "name"], check=True, capture_output=True, text=True
        ).stdout.split()
        assert "basemodel.loraplex.dev/tiny-llama" in listed
        assert "loraadapter.loraplex.dev/sql-gen" in listed
        assert "trainingjob.loraplex.dev/support-bot-retrain" in listed
        assert main(["dev", "cluster", "up", "--name", NAME, "--nodes", "1"]) == 0  # idempotent
        assert cluster.status().pids == status.pids
    finally:
        assert main(["dev", "cluster", "down", "--name", NAME]) == 0
    assert not any(process_alive(pid) for pid in status.pids.values())
    assert not cluster.state_dir.exists()
    assert main(["dev", "cluster", "status", "--name", NAME]) == 1


def test_up_recovers_from_a_killed_control_plane() -> None:
    cluster = LocalCluster(NAME)
    try:
        cluster.up(nodes=1)
        apiserver = cluster.status().pids["kube-apiserver"]
        os.kill(apiserver, signal.SIGKILL)
        wait_processes_gone([apiserver], timeout=10)  # SIGKILL is delivered asynchronously
        assert not cluster.status().running
        cluster.up(nodes=1)
        assert cluster.status().running
        assert Path(cluster.kubeconfig).is_file()
    finally:
        cluster.down()
    assert not cluster.state_dir.exists()

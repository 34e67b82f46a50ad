"""`loraplex dev up` (the README's main command): apply the examples and the fleet comes up."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.cli import main
from loraplex.e2e.binaries import cached_binaries
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.local_operator import LocalOperator
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster

NAME = "loraplex-devfleet"
ROOT = Path(__file__).resolve().parents[2]


def test_dev_up_serves_the_examples_and_dev_down_stops_everything() -> None:
    cluster = LocalCluster(NAME)
    try:
        assert main(["dev", "up", "--name", NAME, "--nodes", "3"]) == 0
        operator_pid = LocalOperator(cluster).pid()
        assert operator_pid is not None
        binaries = cached_binaries()
        assert binaries is not None
        kubectl = [str(binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig)]
        applied = subprocess.run(
            [*kubectl, "apply", "-f", str(ROOT / "examples")], capture_output=True, text=True, check=False
        )
        assert applied.returncode == 0, applied.stderr
        with contextlib.closing(cluster.api_client()) as api:
            status = wait_until(lambda: _ready_status(api), 60, "example BaseModel llama-8b Ready")
        assert status["workers"] == "2/2"
        pids = cluster.status().pids
        assert main(["dev", "up", "--name", NAME, "--nodes", "3"]) == 0  # idempotent: same processes
        assert LocalOperator(cluster).pid() == operator_pid
    finally:
        assert main(["dev", "down", "--name", NAME]) == 0
    assert not process_alive(operator_pid)
    assert not any(process_alive(pid) for pid in pids.values())


def _ready_status(api: Any) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, "default", "basemodels", "llama-8b"
    )
    status: dict[str, Any] = body.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return status if ready.get("status") == "True" else None

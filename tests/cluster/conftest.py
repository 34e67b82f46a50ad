"""Fixtures for tests that run the operator against the real control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.operator_process import OperatorProcess


@pytest.fixture
def operator(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace; it creates its own KopfPeering there."""
    process = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    yield process
    process.stop()

"""Fixtures for tests that run the operator against the real control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.priority_classes import ensure_trainer_priority_class


@pytest.fixture
def operator(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace; it creates its own KopfPeering there.

    `@pytest.mark.operator_env(LORAPLEX_...="...")` on a test sets operator settings for it.
    """
    marker = request.node.get_closest_marker("operator_env")
    env = {key: str(value) for key, value in marker.kwargs.items()} if marker else {}
    process = OperatorProcess(
        local_cluster.kubeconfig, namespace, tmp_path / "operator.log", extra_env=env
    ).start()
    yield process
    process.stop()


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A local training store: no PVC to schedule trainer pods against."""
    return f"file://{tmp_path}/store"


@pytest.fixture
def training_env(kube: Any, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator started next needs to run TrainingJobs: the trainer PriorityClass, the local
    store and `file:///data` as the one dataset root."""
    ensure_trainer_priority_class(kube)
    monkeypatch.setenv("LORAPLEX_TRAINING_STORE", store)
    monkeypatch.setenv("LORAPLEX_TRAINING_DATASET_ROOTS", "file:///data")


@pytest.fixture
def trainer_operator(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path, training_env: None
) -> Iterator[OperatorProcess]:
    """The operator, ready to run TrainingJobs (training_env)."""
    process = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    yield process
    process.stop()

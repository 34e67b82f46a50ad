"""Fixtures for tests that run the operator against the real control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.operator_process import OperatorProcess


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

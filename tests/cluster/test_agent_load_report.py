"""An agent's request load in its WorkerPlacement's status, as the real API server keeps it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.api.agent import AgentResidency
from loraplex.e2e.objects import create_object
from loraplex.worker.agent.placement_source import WorkerPlacementSource

pytestmark = pytest.mark.cluster


def test_a_load_the_agent_no_longer_reports_leaves_the_status(kube: Any, namespace: str) -> None:
    create_object(kube, namespace, "workerplacements", "WorkerPlacement", "tiny-worker-0",
                  {"baseModel": "tiny", "worker": "tiny-worker-0"})  # fmt: skip
    source = WorkerPlacementSource(kube, namespace, "tiny-worker-0", lambda *args: None)
    custom = client.CustomObjectsApi(kube)

    def status() -> dict[str, Any]:
        found = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "workerplacements", "tiny-worker-0"
        )
        return dict(found["status"])

    source._write(
        AgentResidency(worker="tiny-worker-0", engine_ready=True, observed_generation=1, requests=3.5)
    )
    assert status()["requests"] == 3.5
    # The BaseModel stopped scaling on load: the agent's report has no load, and neither has the status
    # (a merge patch that left the field out would keep the last one written).
    source._write(AgentResidency(worker="tiny-worker-0", engine_ready=True, observed_generation=1))
    assert "requests" not in status()
    assert status()["observedGeneration"] == 1

"""The status the BaseModel handlers write reads the fleet as kopf's indexes show it, lag included."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.basemodel_handlers import FleetIndexes, write_fleet_status
from loraplex.operator.fleet import BaseModelRef, owned_by, worker_statefulset
from loraplex.operator.fleet_status import ContainerTrouble, FleetPod
from loraplex.operator.observe import index_essentials
from loraplex.operator.settings import OperatorSettings

REF = BaseModelRef("tiny", "ns", "uid-1")
SETTINGS = OperatorSettings(image="loraplex:test")


def spec(max_loras: int) -> BaseModelSpec:
    return BaseModelSpec.model_validate(
        {"model": {"uri": "/m"}, "replicas": {"min": 2}, "engine": {"maxLoras": max_loras}}
    )


FIRST, SECOND = spec(2), spec(6)


def settled_statefulset(applied_spec: BaseModelSpec) -> dict[str, Any]:
    """The worker StatefulSet applied for `applied_spec`, rolled out and ready, as its index holds it."""
    applied = owned_by(REF, worker_statefulset(REF, applied_spec, SETTINGS, 2))
    applied["metadata"]["generation"] = 1
    applied["status"] = {
        "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
        "currentRevision": "tiny-worker-1", "updateRevision": "tiny-worker-1",
    }  # fmt: skip
    return index_essentials(applied)


def written_ready(planned: BaseModelSpec, generation: int, indexed: BaseModelSpec) -> tuple[Any, ...]:
    key = (REF.namespace, REF.name)
    indexes = FleetIndexes(
        worker_sets={key: [settled_statefulset(indexed)]},
        worker_pods={key: [FleetPod("tiny-worker-0", True), FleetPod("tiny-worker-1", True)]},
        worker_placements={},
        router_pods={key: [FleetPod("tiny-router-0", True)]},
    )
    body = kopf.Body({"metadata": {"name": "tiny", "generation": generation}, "status": {}})
    patch = kopf.Patch()
    write_fleet_status(planned, SETTINGS, REF, body, patch, indexes)
    conditions = {c["type"]: c for c in patch["status"]["conditions"]}
    ready, progressing = conditions["Ready"], conditions["Progressing"]
    return patch["status"]["observedGeneration"], ready["status"], ready["reason"], progressing["status"]


def test_a_spec_change_is_not_ready_while_the_index_shows_the_old_statefulset() -> None:
    # Right after applying generation 2's StatefulSet the watch may not have brought it yet: the index
    # shows generation 1's, settled. `kubectl wait --for=condition=Ready` must not see generation 2 done.
    assert written_ready(SECOND, 2, indexed=FIRST) == (2, "False", "RollingUpdate", "True")


def test_a_fleet_running_the_planned_statefulset_is_ready() -> None:
    assert written_ready(SECOND, 2, indexed=SECOND) == (2, "True", "WorkersReady", "False")


def test_a_fleet_that_gets_stuck_is_announced_by_one_warning_event(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, *, reason, message: warned.append((reason, message)))
    key = (REF.namespace, REF.name)
    status: dict[str, Any] = {}
    for restarts in (3, 4, 5):  # three status passes while a worker keeps crashing
        crashing = ContainerTrouble("vllm", "CrashLoopBackOff", "exit code 2 (Error): bad flag", restarts)
        pods = [FleetPod("tiny-worker-0", True), FleetPod("tiny-worker-1", False, trouble=crashing)]
        indexes = FleetIndexes({key: [settled_statefulset(FIRST)]}, {key: pods}, {}, {})
        body = kopf.Body({"metadata": {"generation": 1}, "status": status})
        patch = kopf.Patch()
        write_fleet_status(FIRST, SETTINGS, REF, body, patch, indexes)
        status = {**status, **patch.get("status", {})}
    said = "tiny-worker-1: container vllm restarted 3 times: exit code 2 (Error): bad flag"
    assert warned == [("WorkerCrashLoop", said)]

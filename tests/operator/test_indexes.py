"""Every kopf index of the operator is declared once, in operator/indexes.py, and read through accessors."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

import kopf

from loraplex.operator import adapter_handlers, basemodel_handlers, indexes, placement_loop, training_handlers
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.fleet_status import ContainerTrouble, FleetPod
from loraplex.operator.indexes import (
    INDEX_IDS,
    ZONE_LABEL,
    Indexes,
    NodeView,
    WorkerPodView,
    node_view,
    worker_pod_view,
)
from loraplex.operator.settings import OperatorSettings

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
SETTINGS = OperatorSettings(image="loraplex:test")


def operator_registry() -> kopf.OperatorRegistry:
    """A registry filled as operator/main.py fills it."""
    registry = kopf.OperatorRegistry()
    indexes.register(registry)
    basemodel_handlers.register(registry, SETTINGS, None, None, FleetTargets())  # type: ignore[arg-type]
    adapter_handlers.register(registry, None)  # type: ignore[arg-type]
    placement_loop.register(registry, SETTINGS, None, None, FleetTargets())  # type: ignore[arg-type]
    training_handlers.register(registry, SETTINGS, None, None, FleetTargets())  # type: ignore[arg-type]
    return registry


def test_every_index_is_registered_once_by_the_indexes_module() -> None:
    declared = Counter(handler.id for handler in operator_registry()._indexing.get_all_handlers())
    assert declared == Counter(INDEX_IDS)  # each id once, and none declared by a handler module


def test_every_accessor_reads_an_index_that_is_registered() -> None:
    fields = [field.name for field in dataclasses.fields(Indexes)]
    assert fields == list(INDEX_IDS)


def test_no_operator_module_reads_kopf_keyword_arguments_by_name() -> None:
    pattern = re.compile(r"""kwargs(\[|\.get\()\s*["']""")
    offending = [
        path.name
        for path in sorted(OPERATOR.glob("*.py"))
        if path.name != "indexes.py" and pattern.search(path.read_text())
    ]
    assert offending == []


def test_no_index_is_declared_outside_the_indexes_module() -> None:
    offending = [
        path.name
        for path in sorted(OPERATOR.glob("*.py"))
        if path.name != "indexes.py" and "kopf.index(" in path.read_text()
    ]
    assert offending == []


def test_accessors_read_what_kopf_passes_and_treat_a_missing_index_as_empty() -> None:
    key = ("ns", "tiny")
    pod = worker_pod_view(
        {
            "metadata": {"name": "tiny-worker-0", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "node-a"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    node = node_view(
        {"status": {"allocatable": {"nvidia.com/gpu": "4", "cpu": "8"}}},
        {"topology.kubernetes.io/zone": "zone-a"},
    )
    kwargs: dict[str, Any] = {
        "base_models": {key: [("uid-tiny", {"model": {"uri": "/m"}})]},
        "pods": {("worker", *key): [pod]},
        "nodes": {"node-a": [node]},
        "unrelated": object(),  # kopf's other keyword arguments are left alone
    }
    read = Indexes.from_kwargs(kwargs)
    assert read.base_model_specs(key) == [{"model": {"uri": "/m"}}]
    assert read.base_model_entries(("ns", "gone")) == []
    leaving = WorkerPodView(FleetPod("tiny-worker-0", ready=True), "node-a", deleting=True)
    assert read.workers(key) == [leaving]
    assert not read.workers(key)[0].healthy  # being deleted: no adapters go there
    crashing = worker_pod_view(
        {
            "metadata": {"name": "tiny-worker-1"},
            "status": {
                "initContainerStatuses": [{"name": "fetch-model", "state": {"running": {"startedAt": "T0"}}}],
                "containerStatuses": [
                    {"name": "vllm", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
                    {"name": "agent", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "m"}}},
                ],
            },
        }
    ).seen
    assert crashing.fetching_model_since == "T0"
    assert crashing.trouble == ContainerTrouble("agent", "ImagePullBackOff", "m")
    killed = {"name": "vllm", "restartCount": 3, "state": {"terminated": {"exitCode": 137}}}
    deleted = {"metadata": {"name": "w", "deletionTimestamp": "T"}, "status": {"containerStatuses": [killed]}}
    assert worker_pod_view(deleted).seen.trouble is None  # killed as its pod goes: no crash
    assert read.node("node-a") == NodeView({"nvidia.com/gpu": 4}, {ZONE_LABEL: "zone-a"}, False)
    assert read.node_zone("node-a") == "zone-a"
    assert read.node_zone("node-b") == ""
    assert (read.adapters(key), read.placements(key), read.worker_statefulsets(key)) == ([], [], [])


def pod(labels: dict[str, str], node: str | None = "node-a", gpus: int = 1) -> dict[str, Any]:
    resources = {"requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "metadata": {"name": "p", "namespace": "team", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": resources}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_one_pods_index_serves_the_fleet_and_training_admission() -> None:
    worker = {
        "app.kubernetes.io/managed-by": "loraplex", "app.kubernetes.io/component": "worker",
        "loraplex.dev/base-model": "tiny",
    }  # fmt: skip
    body = pod(worker)
    read = Indexes(pods={key: [value] for key, value in indexes.pod_entries(body, "team", worker).items()})  # type: ignore[arg-type]
    assert [(w.name, w.node, w.healthy) for w in read.workers(("team", "tiny"))] == [("p", "node-a", True)]
    assert read.scheduled_workers(("team", "tiny")) == [True]
    assert read.gpus_held_on("node-a") == [{"nvidia.com/gpu": 1}]
    # A pod that only looks like a worker (not loraplex's) holds GPUs but is no worker of the fleet.
    lookalike = {**worker, "app.kubernetes.io/managed-by": "someone-else"}
    entries = indexes.pod_entries(pod(lookalike), "team", lookalike)
    assert ("worker", "team", "tiny") not in entries
    assert entries[("node", "node-a")] == {"nvidia.com/gpu": 1}
    # A router pod is read for the fleet's status, as one; it holds no GPUs and is no worker.
    router = {**worker, "app.kubernetes.io/component": "router"}
    entries = indexes.pod_entries(pod(router, gpus=0), "team", router)
    read = Indexes(pods={key: [value] for key, value in entries.items()})  # type: ignore[arg-type]
    assert read.routers(("team", "tiny")) == [FleetPod("p", True)]
    assert read.workers(("team", "tiny")) == []
    foreign = {**router, "app.kubernetes.io/managed-by": "someone-else"}
    assert not indexes.pod_entries(pod(foreign, gpus=0), "team", foreign)

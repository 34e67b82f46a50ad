"""The operator places LoRAAdapters onto workers through WorkerPlacements, on the real control plane."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster


def adapter_spec(name: str, **extra: Any) -> dict[str, Any]:
    source = {"uri": f"s3://adapters/{name}/", "sha256": f"{len(name):064x}"}
    return {"baseModel": "tiny", "source": source, "rank": 8, **extra}


def placements(kube: Any, namespace: str) -> dict[str, dict[str, str]]:
    """adapter -> worker -> tier, as the WorkerPlacement objects hold it."""
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workerplacements"
    )
    held: dict[str, dict[str, str]] = {}
    for item in listed["items"]:
        for entry in item["spec"]["adapters"]:
            held.setdefault(entry["name"], {})[item["spec"]["worker"]] = entry["tier"]
    return held


WANTED = {"sql": 2, "chat": 1, "code": 1, "docs": 1, "math": 1}


def placed(kube: Any, namespace: str, workers: set[str]) -> dict[str, dict[str, str]] | None:
    held = placements(kube, namespace)
    complete = {name: len(held.get(name, {})) for name in WANTED} == WANTED
    within = all(set(where) <= workers for where in held.values())
    return held if complete and within else None


def test_adapters_are_placed_in_tiers_and_wait_for_agents(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 3}, "engine": {"maxLoras": 1, "maxCpuLoras": 2},
    })  # fmt: skip
    create_object(
        kube,
        namespace,
        "loraadapters",
        "LoRAAdapter",
        "sql",
        adapter_spec("sql", replicas=2, policy="Pinned"),
    )
    for name in ("chat", "code", "docs", "math"):
        create_object(kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name))
    workers = {f"tiny-worker-{i}" for i in range(3)}
    held = wait_until(lambda: placed(kube, namespace, workers), 60, "every adapter copy placed")
    assert operator.metrics().get('loraplex_reconciles_total{kind="LoRAAdapter",result="ok"}') == len(WANTED)
    assert set(held["sql"].values()) == {"GPU"}  # pinned: GPU slots on two distinct workers
    gpu_copies = [w for where in held.values() for w, tier in where.items() if tier == "GPU"]
    assert len(gpu_copies) <= 3  # one GPU slot per worker (maxLoras 1)

    def sql_loading() -> dict[str, Any] | None:
        body: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", "sql"
        )
        ready = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return body if ready.get("reason") == "Loading" else None

    # No agent reports residency yet, so no copy counts as loaded.
    body = wait_until(sql_loading, 30, "sql reported Loading")
    status = body["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], status["copies"], status["phase"]) == ("False", "0/2", "Loading")
    # `kubectl get --show-managed-fields` names the operator as the status's writer.
    status_writers = {
        m["manager"] for m in body["metadata"]["managedFields"] if m.get("subresource") == "status"
    }
    assert status_writers == {"loraplex-operator"}


def test_losing_a_worker_re_places_its_copies(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 3}, "engine": {"maxLoras": 2, "maxCpuLoras": 4},
    })  # fmt: skip
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "sql", adapter_spec("sql", replicas=2))
    for name in ("chat", "code", "docs", "math"):
        create_object(kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name))
    before = wait_until(lambda: placed(kube, namespace, {f"tiny-worker-{i}" for i in range(3)}), 60, "placed")
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny", {"spec": {"replicas": {"min": 2}}}
    )
    survivors = {"tiny-worker-0", "tiny-worker-1"}
    after = wait_until(lambda: placed(kube, namespace, survivors), 60, "copies of the lost worker re-placed")
    kept = [name for name, where in before.items() if "tiny-worker-2" not in where]
    assert all(set(after[name]) == set(before[name]) for name in kept)  # nothing else changed worker
    assert len(after["sql"]) == 2


def test_deleting_an_adapter_unloads_it_everywhere_first(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_object(
        kube,
        namespace,
        "basemodels",
        "BaseModel",
        "tiny",
        {"model": {"uri": "/models/tiny"}, "replicas": {"min": 2}},
    )
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "chat", adapter_spec("chat", replicas=2))
    wait_until(lambda: len(placements(kube, namespace).get("chat", {})) == 2, 60, "chat placed twice")
    custom = client.CustomObjectsApi(kube)
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")
    assert body["metadata"]["finalizers"] == [f"{GROUP}/unload"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")
        except client.exceptions.ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, 60, "chat deleted after it left every worker")
    assert "chat" not in placements(kube, namespace)


def test_deleting_a_base_model_with_its_adapters_lets_them_all_go(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # As `kubectl delete -f examples/` does: the BaseModel first, its adapters right after.
    create_object(
        kube,
        namespace,
        "basemodels",
        "BaseModel",
        "tiny",
        {"model": {"uri": "/models/tiny"}, "replicas": {"min": 2}},
    )
    for name, replicas in (("chat", 2), ("code", 1)):
        create_object(
            kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name, replicas=replicas)
        )
    wait_until(
        lambda: {k: len(v) for k, v in placements(kube, namespace).items()} == {"chat": 2, "code": 1},
        60,
        "chat and code placed",
    )
    custom = client.CustomObjectsApi(kube)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
    for name in ("chat", "code"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", name)

    def left() -> list[str]:
        return [
            f"{plural}/{item['metadata']['name']}"
            for plural in ("basemodels", "loraadapters", "workerplacements")
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
        ]

    try:
        wait_until(lambda: not left(), 60, "BaseModel, adapters and WorkerPlacements gone")
    except TimeoutError as error:
        raise AssertionError(f"still there after 60s: {left()}") from error

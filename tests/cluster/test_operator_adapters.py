"""The operator judges LoRAAdapters against their BaseModel on the real control plane."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster
DIGEST = "b" * 64


def base_model(kube: Any, namespace: str, max_rank: int) -> None:
    spec = {"model": {"uri": "/m"}, "engine": {"maxLoraRank": max_rank}}
    create_object(kube, namespace, "basemodels", "BaseModel", "llama-8b", spec)


def adapter(kube: Any, namespace: str, rank: int = 32) -> None:
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "sql-gen", {
        "baseModel": "llama-8b", "source": {"uri": "s3://adapters/sql-gen/", "sha256": DIGEST}, "rank": rank,
    })  # fmt: skip


def ready_reason(kube: Any, namespace: str, *reasons: str) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", "sql-gen"
    )
    status: dict[str, Any] = body.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return status if ready.get("reason") in reasons else None


def warnings_for(kube: Any, namespace: str) -> list[tuple[str, str]]:
    events = (
        client.CoreV1Api(kube)
        .list_namespaced_event(namespace, field_selector="involvedObject.name=sql-gen,type=Warning")
        .items
    )
    return [(e.reason, e.message) for e in events]


def test_adapter_of_a_missing_base_model_waits_and_recovers(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    adapter(kube, namespace)
    status = wait_until(lambda: ready_reason(kube, namespace, "UnknownBaseModel"), 30, "UnknownBaseModel")
    assert status["phase"] == "Failed"
    # kopf wrote this status; it still carries the operator's field manager, not kopf's default.
    body = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", "sql-gen"
    )
    managers = {m["manager"] for m in body["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert managers == {"loraplex-operator"}
    samples = operator.metrics()  # kopf sent that status from the check's patch: a write, counted once
    assert samples.get('loraplex_api_writes_total{resource="LoRAAdapter",verb="patch-status"}') == 1
    assert samples.get('loraplex_reconcile_duration_seconds_count{kind="LoRAAdapter",result="invalid"}') == 1
    events = wait_until(lambda: warnings_for(kube, namespace), 30, "a Warning Event on the adapter")
    assert events[0][0] == "UnknownBaseModel"
    assert "llama-8b does not exist" in events[0][1]
    base_model(kube, namespace, max_rank=64)
    status = wait_until(
        lambda: ready_reason(kube, namespace, "WaitingForWorkers", "Loading"), 30, "re-checked adapter"
    )
    assert status["phase"] in ("Pending", "Loading")


def test_adapter_above_the_rank_limit_is_refused_until_the_limit_rises(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    base_model(kube, namespace, max_rank=16)
    reconciled = 'loraplex_reconciles_total{kind="BaseModel",result="ok"}'
    wait_until(lambda: operator.metrics().get(reconciled), 30, "BaseModel reconciled")
    adapter(kube, namespace, rank=32)
    status = wait_until(lambda: ready_reason(kube, namespace, "RankTooHigh"), 30, "RankTooHigh")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "maxLoraRank 16" in ready["message"]
    assert operator.metrics().get('loraplex_reconciles_total{kind="LoRAAdapter",result="invalid"}') == 1
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "llama-8b", {"spec": {"engine": {"maxLoraRank": 32}}}
    )
    wait_until(
        lambda: ready_reason(kube, namespace, "WaitingForWorkers", "Loading"),
        30,
        "adapter accepted after raise",
    )
    assert len(warnings_for(kube, namespace)) == 1  # one Event for the problem, not one per pass

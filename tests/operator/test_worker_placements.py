"""A placement target becomes one WorkerPlacement per worker, and agents' reports become adapter status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.operator.adapter_residency import (
    Resident,
    WorkerReport,
    plan_placed_adapter_status,
    reports_by_adapter,
)
from loraplex.operator.conditions import condition
from loraplex.operator.fleet import HASH_ANNOTATION, BaseModelRef
from loraplex.operator.worker_placements import plan_worker_placements

REF = BaseModelRef("llama-8b", "serving", "uid-1")
NOW = datetime(2026, 11, 22, tzinfo=UTC)
SQL = LoRAAdapterSpec.model_validate({
    "baseModel": "llama-8b", "source": {"uri": "s3://adapters/sql/", "sha256": "1" * 64}, "rank": 16,
    "replicas": 2, "policy": "Pinned",
})  # fmt: skip
CHAT = LoRAAdapterSpec.model_validate(
    {"baseModel": "llama-8b", "source": {"uri": "s3://adapters/chat/", "sha256": "2" * 64}, "rank": 8}
)
WORKERS = ["llama-8b-worker-0", "llama-8b-worker-1", "llama-8b-worker-2"]


def test_each_worker_gets_one_object_listing_its_adapters_and_tiers() -> None:
    target = {
        "sql": {"llama-8b-worker-0": "GPU", "llama-8b-worker-1": "GPU"},
        "chat": {"llama-8b-worker-1": "CPU"},
    }
    manifests = {
        m["metadata"]["name"]: m
        for m in plan_worker_placements(REF, WORKERS, target, {"sql": SQL, "chat": CHAT})
    }
    assert sorted(manifests) == WORKERS
    worker1 = manifests["llama-8b-worker-1"]["spec"]["adapters"]
    assert [(a["name"], a["tier"], a["pinned"]) for a in worker1] == [
        ("chat", "CPU", False),
        ("sql", "GPU", True),
    ]
    assert worker1[1]["sha256"] == "1" * 64
    assert manifests["llama-8b-worker-2"]["spec"]["adapters"] == []
    assert manifests["llama-8b-worker-0"]["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"


def test_only_workers_whose_set_changed_get_a_new_hash() -> None:
    adapters = {"sql": SQL, "chat": CHAT}
    before = plan_worker_placements(REF, WORKERS, {"sql": {"llama-8b-worker-0": "GPU"}}, adapters)
    after = plan_worker_placements(
        REF, WORKERS, {"sql": {"llama-8b-worker-0": "GPU"}, "chat": {"llama-8b-worker-2": "Disk"}}, adapters
    )
    changed = [
        b["metadata"]["name"] for b, a in zip(before, after, strict=True)
        if b["metadata"]["annotations"][HASH_ANNOTATION] != a["metadata"]["annotations"][HASH_ANNOTATION]
    ]  # fmt: skip
    assert changed == ["llama-8b-worker-2"]


def report(**held: Resident) -> WorkerReport:
    return WorkerReport(held=held, failures={})


def sql_status(planned: list[str], reports: dict[str, WorkerReport]) -> dict[str, Any]:
    """sql's status as the placement loop plans it: from the workers' reports turned around."""
    return plan_placed_adapter_status(SQL, 1, planned, reports_by_adapter(reports)["sql"], {}, NOW)


def test_copies_count_only_what_agents_hold_with_the_right_digest() -> None:
    reports = {
        "w-0": report(sql=Resident("GPU", "1" * 64, 0.03)),
        "w-1": report(sql=Resident("CPU", "0" * 64)),  # an old revision: not a ready copy
    }
    status = sql_status(["w-0", "w-1"], reports)
    assert status["placements"] == [{"worker": "w-0", "tier": "GPU"}]
    assert (status["copies"], status["phase"]) == ("1/2", "Loading")
    assert status["lastLoadLatencySeconds"] == 0.03


def test_ready_when_every_copy_is_loaded() -> None:
    reports = {"w-0": report(sql=Resident("GPU", "1" * 64)), "w-1": report(sql=Resident("GPU", "1" * 64))}
    status = sql_status(["w-0", "w-1"], reports)
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"], status["phase"]) == ("True", "Placed", "Ready")


def test_a_digest_mismatch_reported_by_an_agent_is_shown_with_its_reason() -> None:
    reports = {
        "w-0": WorkerReport(held={}, failures={"sql": ("DigestMismatch", "sha256 of the files is 9f3e...")})
    }
    status = sql_status(["w-0"], reports)
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["reason"] == "DigestMismatch"
    assert "w-0 could not load it" in ready["message"]
    assert status["phase"] == "Failed"


def test_too_few_workers_for_the_replicas_is_insufficient_capacity() -> None:
    status = sql_status(["w-0"], {"w-0": report(sql=Resident("GPU", "1" * 64))})
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["reason"] == "InsufficientCapacity"
    assert status["phase"] == "Degraded"


def test_each_adapter_sees_only_its_own_copies_and_the_first_failing_worker_by_name() -> None:
    reports = {
        "w-2": WorkerReport(held={}, failures={"sql": ("DigestMismatch", "on w-2")}),
        "w-1": WorkerReport(
            held={"chat": Resident("GPU", "2" * 64)}, failures={"sql": ("FetchFailed", "on w-1")}
        ),
        "w-0": report(sql=Resident("CPU", "1" * 64), chat=Resident("GPU", "2" * 64)),
    }
    by_adapter = reports_by_adapter(reports)
    assert set(by_adapter["chat"].held) == {"w-0", "w-1"}
    status = sql_status(["w-0", "w-1"], reports)
    assert status["placements"] == [{"worker": "w-0", "tier": "CPU"}]
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert (ready["reason"], ready["message"]) == ("FetchFailed", "w-1 could not load it: on w-1")

"""A placement target becomes one WorkerPlacement per worker, and agents' reports become adapter status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.conditions import condition
from loraplex.api.labels import HASH_ANNOTATION
from loraplex.operator.adapter_residency import (
    NOT_REPORTED,
    FleetSize,
    Resident,
    WorkerReport,
    agent_failure_to_announce,
    plan_placed_adapter_status,
    reports_by_adapter,
)
from loraplex.operator.fleet import BaseModelRef
from loraplex.operator.worker_placements import on_demand_unloads, plan_worker_placements

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
FLEET_UP = FleetSize(ready=3, target=3)


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


def test_a_worker_holding_an_adapter_being_deleted_on_demand_is_told_to_unload_it() -> None:
    def placement(worker: str, *held: tuple[str, bool]) -> dict[str, Any]:
        adapters = [{"name": n, "tier": "CPU", "onDemand": True} if d else {"name": n, "tier": "GPU"}
                    for n, d in held]  # fmt: skip
        return {"spec": {"worker": worker}, "status": {"adapters": adapters}}

    placements = [
        placement("llama-8b-worker-0", ("sql", False), ("chat", True)),  # chat spilled here
        placement("llama-8b-worker-1", ("chat", False)),  # its placed copy: the spec change drops it
        placement("llama-8b-worker-2", ("news", True)),  # not being deleted
    ]
    unloads = on_demand_unloads({"chat"}, placements)
    assert unloads == {"llama-8b-worker-0": ["chat"]}
    assert on_demand_unloads(set(), placements) == {}
    manifests = plan_worker_placements(REF, WORKERS, {"sql": {"llama-8b-worker-0": "GPU"}}, {"sql": SQL},
                                       unloads)  # fmt: skip
    assert [m["spec"].get("unload") for m in manifests] == [["chat"], None, None]
    plain = plan_worker_placements(REF, WORKERS, {"sql": {"llama-8b-worker-0": "GPU"}}, {"sql": SQL})
    hashes = [m["metadata"]["annotations"][HASH_ANNOTATION] for m in (*manifests, *plain)]
    assert hashes[0] != hashes[3]
    assert hashes[1:3] == hashes[4:6]  # the other workers' objects are as they were: nothing rewritten


def test_the_agents_are_asked_for_their_load_only_while_the_base_model_scales_on_it() -> None:
    target = {"sql": {"llama-8b-worker-0": "GPU"}}
    asking = plan_worker_placements(REF, WORKERS, target, {"sql": SQL}, report_requests=True)
    assert [m["spec"].get("reportRequests") for m in asking] == [True, True, True]
    plain = plan_worker_placements(REF, WORKERS, target, {"sql": SQL})
    assert [m["spec"].get("reportRequests") for m in plain] == [None, None, None]  # left out: no rewrite


def report(**held: Resident) -> WorkerReport:
    return WorkerReport(held=held, failures={})


def sql_status(
    planned: list[str],
    reports: dict[str, WorkerReport],
    fleet: FleetSize = FLEET_UP,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """sql's status as the placement loop plans it: from the workers' reports turned around."""
    by_adapter = reports_by_adapter(reports)
    sql = by_adapter.get("sql", NOT_REPORTED)
    return plan_placed_adapter_status(SQL, 1, planned, sql, fleet, previous or {}, NOW)


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


@pytest.mark.parametrize("fleet", [FLEET_UP, FleetSize(ready=4, target=3)], ids=["at-target", "shrinking"])
def test_too_few_workers_for_the_replicas_once_the_fleet_is_up_is_insufficient_capacity(
    fleet: FleetSize,
) -> None:
    status = sql_status(["w-0"], {"w-0": report(sql=Resident("GPU", "1" * 64))}, fleet)
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["reason"] == "InsufficientCapacity"
    assert status["phase"] == "Degraded"


@pytest.mark.parametrize(
    ("planned", "reports", "phase"),
    [
        ([], {}, "Pending"),  # no worker ready yet: nothing placed
        (["w-0"], {"w-0": report(sql=Resident("GPU", "1" * 64))}, "Degraded"),  # one copy serves already
    ],
    ids=["nothing-placed", "one-copy-loaded"],
)
def test_copies_that_do_not_fit_while_the_fleet_comes_up_wait_for_workers(
    planned: list[str], reports: dict[str, WorkerReport], phase: str
) -> None:
    by_adapter = reports_by_adapter(reports)
    fleet = FleetSize(ready=len(planned), target=3)
    status = plan_placed_adapter_status(SQL, 1, planned, by_adapter.get("sql", NOT_REPORTED), fleet, {}, NOW)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == phase
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "WaitingForWorkers")
    assert f"{len(planned)} of 3 workers ready" in conditions["Ready"]["message"]
    assert (conditions["Reconciling"]["status"], conditions["Stalled"]["status"]) == ("True", "False")


def test_a_failure_from_a_worker_the_adapter_no_longer_is_planned_on_is_ignored() -> None:
    reports = {
        "w-0": report(sql=Resident("GPU", "1" * 64)),
        "w-1": report(sql=Resident("GPU", "1" * 64)),
        "w-2": WorkerReport(held={}, failures={"sql": ("SourceUnreachable", "an old outage")}),
    }
    status = sql_status(["w-0", "w-1"], reports)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "Placed")
    assert conditions["Stalled"]["status"] == "False"
    assert status["phase"] == "Ready"


def test_an_agent_failure_is_announced_once_when_it_becomes_the_ready_reason() -> None:
    failing = {"w-0": WorkerReport(held={}, failures={"sql": ("DigestMismatch", "sha256 is 9f3e...")})}
    loading = sql_status(["w-0", "w-1"], {})
    failed = sql_status(["w-0", "w-1"], failing, previous=loading)
    announced = agent_failure_to_announce(loading, failed)
    assert announced is not None
    ready = condition(failed["conditions"], "Ready")
    assert ready is not None
    assert (announced.reason, announced.message) == ("DigestMismatch", ready["message"])
    assert announced.message == "w-0 could not load it: sha256 is 9f3e..."
    again = sql_status(["w-0", "w-1"], failing, previous=failed)
    assert agent_failure_to_announce(failed, again) is None  # the next pass: still failing, no new Event
    other = {"w-1": WorkerReport(held={}, failures={"sql": ("LoadFailed", "vLLM refused it")})}
    assert agent_failure_to_announce(failed, sql_status(["w-1"], other, previous=failed)) is not None


@pytest.mark.parametrize(
    "fleet", [FLEET_UP, FleetSize(ready=0, target=3)], ids=["insufficient-capacity", "waiting-for-workers"]
)
def test_reasons_the_operator_decides_itself_are_not_announced(fleet: FleetSize) -> None:
    status = sql_status([], {}, fleet)
    assert agent_failure_to_announce({}, status) is None


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

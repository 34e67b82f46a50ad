"""A placement pass is a pure function: a snapshot of one BaseModel in, the writes to make out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from loraplex.api import API_VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.fleet import BaseModelRef
from loraplex.operator.placement_pass import (
    PassPlan,
    PlacementSnapshot,
    PlacementState,
    WorkerPodState,
    fleet_workers,
    run_pass,
)

REF = BaseModelRef("tiny", "team", "uid-tiny")
SHA = "1" * 64
NOW = datetime(2026, 1, 1, tzinfo=UTC)
# One GPU slot and one more CPU slot per worker: two warm copies a worker, one to three workers.
MODEL = BaseModelSpec.model_validate(
    {"model": {"uri": "/m"}, "replicas": {"min": 1, "max": 3}, "engine": {"maxLoras": 1, "maxCpuLoras": 2}}
)


def adapter(name: str, replicas: int = 1, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "generation": 1, **metadata},
        "spec": {
            "baseModel": "tiny", "source": {"uri": f"s3://adapters/{name}/", "sha256": SHA}, "rank": 8,
            "replicas": replicas,
        },
        "status": {},
    }  # fmt: skip


def snapshot(
    adapters: list[dict[str, Any]],
    placements: list[dict[str, Any]] | None = None,
    workers: tuple[str, ...] = ("w-0", "w-1"),
    running: int | None = 2,
    now: float = 0.0,
) -> PlacementSnapshot:
    pods = [WorkerPodState(name, f"node-{name}", healthy=True, zone=f"zone-{name}") for name in workers]
    return PlacementSnapshot(
        REF, MODEL, adapters, placements or [], fleet_workers(pods, MODEL, disk_slots=4), running, now, NOW
    )


def as_indexed(plan: PassPlan) -> list[dict[str, Any]]:
    """The WorkerPlacements the plan applied, as the index shows them once written."""
    return [dict(manifest) for manifest in plan.apply]


def test_a_pass_plans_the_worker_placements_the_adapter_statuses_and_the_worker_count() -> None:
    plan = run_pass(snapshot([adapter("sql", replicas=2), adapter("chat")]), PlacementState())
    assert sorted(m["metadata"]["name"] for m in plan.apply) == ["w-0", "w-1"]
    assert {m["kind"] for m in plan.apply} == {"WorkerPlacement"}
    assert sorted(name for name, _ in plan.statuses) == ["chat", "sql"]
    assert {status["phase"] for _, status in plan.statuses} == {"Loading"}  # planned, not yet reported
    assert (plan.target, plan.decided) == (2, True)  # three warm copies, two a worker
    assert plan.demand.warm_copies == 3
    assert sorted(plan.placement["sql"]) == ["w-0", "w-1"]
    assert (plan.delete, plan.release, plan.events, plan.missing) == ([], [], [], 0)
    assert plan.moved == 3  # the three copies placed


def test_a_pass_over_what_the_last_one_wrote_writes_nothing() -> None:
    state = PlacementState()
    adapters = [adapter("sql", replicas=2), adapter("chat")]
    first = run_pass(snapshot(adapters), state)
    written = {name: status for name, status in first.statuses}
    for body in adapters:
        body["status"] = written[body["metadata"]["name"]]
    second = run_pass(snapshot(adapters, as_indexed(first)), state)
    assert (second.apply, second.statuses, second.delete) == ([], [], [])


def test_before_the_statefulset_exists_the_count_is_what_the_adapters_need_and_not_a_decision() -> None:
    plan = run_pass(snapshot([adapter("sql", replicas=3)], running=None), PlacementState())
    assert (plan.target, plan.decided) == (3, False)


def test_the_placement_of_a_worker_that_is_gone_is_deleted() -> None:
    state = PlacementState()
    first = run_pass(snapshot([adapter("sql")]), state)
    plan = run_pass(snapshot([adapter("sql")], as_indexed(first), workers=("w-0",)), state)
    assert plan.delete == ["w-1"]
    assert plan.placement["sql"] == {"w-0": "GPU"}


def test_a_deleted_adapter_is_released_only_once_no_worker_wants_or_holds_it() -> None:
    state = PlacementState()
    first = run_pass(snapshot([adapter("sql")]), state)
    deleted = adapter("sql", deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[UNLOAD_FINALIZER])
    still_wanted = run_pass(snapshot([deleted], as_indexed(first)), state)
    assert still_wanted.release == []  # the WorkerPlacements written before still list it
    assert all(m["spec"]["adapters"] == [] for m in still_wanted.apply)  # this pass takes it off
    released = run_pass(snapshot([deleted], as_indexed(still_wanted)), state)
    assert [meta["name"] for meta in released.release] == ["sql"]


def test_a_scale_down_waits_out_its_delay_in_the_state_the_passes_share() -> None:
    state = PlacementState(scale_down_delay=60.0)
    adapters = [adapter("sql")]
    plan = run_pass(snapshot(adapters, running=3, now=100.0), state)
    assert (plan.target, state.pending) == (3, True)  # one worker would do: the delay starts
    plan = run_pass(snapshot(adapters, running=3, now=159.0), state)
    assert plan.target == 3
    plan = run_pass(snapshot(adapters, running=3, now=160.0), state)
    assert (plan.target, state.pending) == (1, False)


def test_the_requests_its_healthy_workers_report_size_a_fleet_with_a_target_per_worker() -> None:
    model = MODEL.model_copy(
        update={"replicas": MODEL.replicas.model_copy(update={"target_requests_per_worker": 4})}
    )
    adapters = [adapter("sql")]
    placements = as_indexed(run_pass(snapshot(adapters), PlacementState()))
    loads = {"w-0": 5.5, "w-1": 3.0, "w-9": 40.0}  # w-9 is gone: its last report does not count
    reported = [{**p, "status": {"requests": loads[p["spec"]["worker"]]}} for p in placements]
    reported.append(
        {**placements[0], "spec": {**placements[0]["spec"], "worker": "w-9"}, "status": {"requests": 40.0}}
    )
    busy = dataclasses.replace(snapshot(adapters, reported), model=model)
    plan = run_pass(busy, PlacementState())
    assert (plan.demand.requests, plan.target) == (8.5, 3)  # ceil(8.5 / 4), within max 3
    assert [m["spec"].get("reportRequests") for m in plan.apply] == [True, True]  # the agents are asked
    assert run_pass(dataclasses.replace(busy, model=MODEL), PlacementState()).target == 2  # no target


def test_an_adapter_turns_ready_once_its_agents_report_it_though_the_passes_remember_what_they_read() -> None:
    state = PlacementState()
    adapters = [adapter("sql", replicas=2)]
    first = run_pass(snapshot(adapters), state)
    written = dict(first.statuses)["sql"]
    adapters[0] = {**adapters[0], "status": written}  # the index's next object, as kopf replaces it
    placements = as_indexed(first)
    again = run_pass(snapshot(adapters, placements), state)
    assert again.statuses == []  # nothing reported yet: nothing to write
    reported = [
        {**p, "status": {"adapters": [{"name": "sql", "tier": "GPU", "sha256": SHA}]}} for p in placements
    ]
    ready = run_pass(snapshot(adapters, reported), state)
    (status,) = [status for name, status in ready.statuses if name == "sql"]
    assert (status["phase"], status["readyReplicas"]) == ("Ready", 2)

"""One placement pass of a BaseModel: a snapshot of what the indexes show in, a plan of writes out.

The snapshot is plain data (the BaseModel's spec, its LoRAAdapters and
WorkerPlacements as indexed, its healthy workers, the worker StatefulSet's
replicas, the clocks). The pass parses the adapters, brings the planner up to
date (placement_sync), decides the worker count (fleet_scale), renders the
WorkerPlacements and plans each adapter's status, and returns what to write:
the WorkerPlacements whose content changed, those of workers that are gone, the
adapter statuses that changed, the Warning Events to post, the deleted adapters
whose unload finalizer may come off, and the worker count decided. The placement
loop (operator/placement_loop.py) reads the snapshot and carries out the plan.

What a pass remembers for the next one is `PlacementState`, in memory: the
planner, the parsed specs, the scale step (its scale-down delay) and the
failures already announced. The pass advances the first three as it plans; the
announced failures are committed by the loop once the Events are posted.

Pure: no Kubernetes client, kopf, clock or I/O; the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import ConditionUpdate, condition
from loraplex.api.labels import HASH_ANNOTATION
from loraplex.api.workerplacement import read_status
from loraplex.operator.adapter_residency import (
    NOT_REPORTED,
    FleetSize,
    Resident,
    WorkerReport,
    active_adapters,
    agent_failure_to_announce,
    plan_placed_adapter_status,
    reports_by_adapter,
)
from loraplex.operator.adapter_status import check_adapter
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.fleet import BaseModelRef, Manifest
from loraplex.operator.fleet_scale import FleetDemand, ScaleStep, next_scale, slot_demand, workers_needed
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.placement import Adapter, Worker
from loraplex.operator.placement_sync import FleetSnapshot, PlacementSync
from loraplex.operator.worker_placements import on_demand_unloads, plan_worker_placements, workers_holding

ParsedSpecs = dict[tuple[str, int], LoRAAdapterSpec | None]
# worker -> (the status object last read, its report): a status the index still holds is not read again
ReportMemo = dict[str, tuple[Mapping[str, Any] | None, WorkerReport]]
# adapter -> (its body as last seen, what its status depended on, the status planned from them)
StatusMemo = dict[str, tuple[Mapping[str, Any], tuple[Any, ...], dict[str, Any]]]
# adapter name -> (the planner's view, its spec, its body as indexed)
ValidAdapters = dict[str, tuple[Adapter, LoRAAdapterSpec, Mapping[str, Any]]]


@dataclass(frozen=True)
class WorkerPodState:
    """One worker pod as the pass reads it: where it runs and whether it can take adapters."""

    name: str
    node: str | None
    healthy: bool  # Ready and not being deleted
    zone: str = ""


@dataclass(frozen=True)
class PlacementSnapshot:
    """One BaseModel as the indexes show it at the start of a pass."""

    ref: BaseModelRef
    model: BaseModelSpec
    adapters: Sequence[Mapping[str, Any]]  # its LoRAAdapters (index essentials), deleted ones included
    placements: Sequence[Mapping[str, Any]]  # its WorkerPlacements: spec, and the agents' status
    workers: Mapping[str, Worker]  # its healthy worker pods, as the planner sees them
    running: int | None  # the worker StatefulSet's replicas; None before it exists
    now: float  # a monotonic clock, for the scale-down delay
    wall: datetime  # for the conditions' transition times


@dataclass(frozen=True)
class PassPlan:
    """The writes one pass decided, and what it found (for metrics and logs)."""

    apply: list[Manifest] = field(default_factory=list)  # WorkerPlacements whose content changed
    delete: list[str] = field(default_factory=list)  # WorkerPlacements of workers gone
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # LoRAAdapter statuses
    events: list[tuple[Mapping[str, Any], ConditionUpdate]] = field(default_factory=list)  # Warnings
    announced: dict[str, str] = field(default_factory=dict)  # once the events are posted
    release: list[Mapping[str, Any]] = field(default_factory=list)  # adapters' metadata: finalizer off
    target: int = 0  # the worker count the fleet is heading for
    decided: bool = False  # the target is this pass's decision (False: no StatefulSet yet)
    demand: FleetDemand = field(default_factory=FleetDemand)
    placement: dict[str, dict[str, str]] = field(default_factory=dict)  # adapter -> worker -> tier
    moved: int = 0
    missing: int = 0
    active: int = 0  # adapters an agent reports active


class PlacementState:
    """What one BaseModel's passes remember between them, in memory."""

    def __init__(self, max_rebalance_moves: int = 64, scale_down_delay: float = 300.0) -> None:
        self.sync = PlacementSync(max_rebalance_moves)
        self.scale_down_delay = scale_down_delay
        self.parsed: ParsedSpecs = {}
        self.step: ScaleStep | None = None
        self.announced: dict[str, str] = {}  # adapter -> the agent failure its Warning Event told
        self.reports: ReportMemo = {}
        self.statuses: StatusMemo = {}

    @property
    def pending(self) -> bool:
        """Work waits without an event: a rebalance step to take, a scale-down waiting out its delay."""
        return self.sync.rebalancing or (self.step is not None and self.step.below_since is not None)


def run_pass(snapshot: PlacementSnapshot, state: PlacementState) -> PassPlan:
    """Plan one pass over `snapshot`, advancing `state`'s planner, parsed specs and scale step."""
    reports = worker_reports(snapshot.placements, state.reports)
    active = active_adapters(reports)
    adapters, state.parsed = valid_adapters(snapshot.adapters, snapshot.model, state.parsed, active)
    load = sum(reports[w].requests or 0.0 for w in sorted(snapshot.workers.keys() & reports.keys()))
    demand = replace(slot_demand(a for a, _, _ in adapters.values()), requests=load)
    decided = snapshot.running is not None
    if snapshot.running is None:
        target = workers_needed(snapshot.model, demand)  # the fleet handler creates the StatefulSet first
    else:
        # A fresh operator starts from what runs, so a restart never shrinks the fleet at once.
        current = state.step if state.step is not None else ScaleStep(snapshot.running)
        state.step = next_scale(snapshot.model, demand, current, snapshot.now, state.scale_down_delay)
        target = state.step.target
    workers = snapshot.workers
    result = state.sync.sync(
        FleetSnapshot(workers, {k: a for k, (a, _, _) in adapters.items()}), recorded(snapshot.placements)
    )
    specs = {k: s for k, (_, s, _) in adapters.items()}
    deleting = {b["metadata"]["name"] for b in snapshot.adapters if b["metadata"].get("deletionTimestamp")}
    unloads = on_demand_unloads(deleting, snapshot.placements)
    scales_on_load = snapshot.model.replicas.target_requests_per_worker is not None
    planned = plan_worker_placements(
        snapshot.ref, sorted(workers), result.placement, specs, unloads, report_requests=scales_on_load
    )
    statuses, events, announced = plan_adapter_statuses(
        adapters,
        result.placement,
        reports,
        FleetSize(len(workers), target),
        state.announced,
        snapshot.wall,
        state.statuses,
    )
    return PassPlan(
        apply=changed(planned, snapshot.placements),
        delete=sorted({p["spec"]["worker"] for p in snapshot.placements} - workers.keys()),
        statuses=statuses,
        events=events,
        announced=announced,
        release=[b["metadata"] for b in snapshot.adapters if releasable(b["metadata"], snapshot.placements)],
        target=target,
        decided=decided,
        demand=demand,
        placement={a: dict(copies) for a, copies in result.placement.items()},
        moved=result.moved,
        missing=len(result.missing),
        active=len(active & adapters.keys()),
    )


def fleet_workers(pods: Iterable[WorkerPodState], model: BaseModelSpec, disk_slots: int) -> dict[str, Worker]:
    """The healthy worker pods that run on a node, with the slots the BaseModel's engine gives each."""
    cpu_extra = max(model.engine.max_cpu_loras - model.engine.max_loras, 0)
    return {
        pod.name: Worker(pod.name, pod.node, pod.zone, model.engine.max_loras, cpu_extra, disk_slots)
        for pod in pods
        if pod.healthy and pod.node
    }


def worker_reports(
    placements: Iterable[Mapping[str, Any]], memo: ReportMemo | None = None
) -> dict[str, WorkerReport]:
    """What each worker's agent reports in its WorkerPlacement's status.

    With `memo`, a status object that is the very one the last pass read (kopf's index keeps it
    until the WorkerPlacement changes) is not validated again, and `memo` is left holding this
    pass's statuses: at 1,000 workers most passes see few statuses change.
    """
    reports, seen = {}, {}
    for body in placements:
        worker, raw = body["spec"]["worker"], body.get("status")
        known = memo.get(worker) if memo is not None else None
        if known is not None and known[0] is raw:
            report = known[1]
        else:
            status = read_status(raw)
            held = {a.name: Resident(a.tier, a.sha256, a.load_seconds, a.active) for a in status.adapters}
            failures = {f.name: (f.reason, f.message) for f in status.failures}
            report = WorkerReport(held, failures, status.requests)
        reports[worker] = seen[worker] = report
        if memo is not None:
            memo[worker] = (raw, report)
    if memo is not None:
        for gone in memo.keys() - seen.keys():
            del memo[gone]
    return reports


def valid_adapters(
    bodies: Iterable[Mapping[str, Any]], model: BaseModelSpec, parsed: ParsedSpecs, active: set[str]
) -> tuple[ValidAdapters, ParsedSpecs]:
    """Adapters of this BaseModel that passed the check and are not being deleted.

    An adapter an agent reports active gets warmth 1 (idle ones 0): among copies of equal priority,
    used ones win the faster tiers and idle ones give way first. Two levels, switched by the agents'
    active window, so steady traffic changes no standing and moves nothing.

    Specs are parsed once per (name, generation), not on every pass: at 10,000 adapters a
    pass would otherwise spend most of its time validating specs that did not change. The
    returned cache holds only the adapters seen in this pass.
    """
    valid: ValidAdapters = {}
    kept: ParsedSpecs = {}
    for body in bodies:
        meta = body["metadata"]
        key = (meta["name"], int(meta.get("generation", 0)))
        kept[key] = spec = parsed[key] if key in parsed else _parse_or_none(body["spec"])
        if spec is None or meta.get("deletionTimestamp"):
            continue
        if not check_adapter(meta["namespace"], spec, model).placeable:
            continue
        adapter = Adapter(
            meta["name"], replicas=spec.replicas, priority=spec.priority, pinned=spec.policy == "Pinned",
            warmth=1.0 if meta["name"] in active else 0.0,
        )  # fmt: skip
        valid[meta["name"]] = (adapter, spec, body)
    return valid, kept


def _parse_or_none(spec: Mapping[str, Any]) -> LoRAAdapterSpec | None:
    try:
        return LoRAAdapterSpec.model_validate(dict(spec))
    except ValidationError:
        return None  # admission refuses such specs; an old object is left unplaced


def recorded(placements: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The placement the WorkerPlacement objects hold: what the operator last decided."""
    found: dict[str, dict[str, str]] = {}
    for body in placements:
        worker = body["spec"]["worker"]
        for entry in body["spec"].get("adapters", []):
            found.setdefault(entry["name"], {})[worker] = entry["tier"]
    return found


def changed(planned: list[Manifest], placements: Iterable[Mapping[str, Any]]) -> list[Manifest]:
    """The WorkerPlacements whose content hash differs from what the index shows; the rest are not read.

    Without this, every pass would GET each of the fleet's WorkerPlacements (1,000 reads a second
    at 1,000 workers) only to find most of them unchanged. An index that lags behind this loop's
    own last write costs one GET (the applier then skips the write by the same hash).
    """
    live = {body["metadata"]["name"]: _hash(body) for body in placements}
    return [manifest for manifest in planned if live.get(manifest["metadata"]["name"]) != _hash(manifest)]


def _hash(body: Mapping[str, Any]) -> str | None:
    return (body["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)


def releasable(meta: Mapping[str, Any], placements: Iterable[Mapping[str, Any]]) -> bool:
    """A deleted adapter's unload finalizer may come off: no WorkerPlacement wants or holds it."""
    return (
        bool(meta.get("deletionTimestamp"))
        and UNLOAD_FINALIZER in (meta.get("finalizers") or [])
        and not workers_holding(placements, meta["name"])
    )


def plan_adapter_statuses(
    adapters: ValidAdapters,
    placement: Mapping[str, Mapping[str, str]],
    workers: Mapping[str, WorkerReport],
    fleet: FleetSize,
    announced: Mapping[str, str],
    now: datetime,
    memo: StatusMemo | None = None,
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[Mapping[str, Any], ConditionUpdate]], dict[str, str]]:
    """The statuses that changed, the Warning Events to post, and the failures announced after them.

    With `memo`, an adapter whose body (the same indexed object), planned workers, reports and
    fleet size are what the last pass planned from gets that pass's status again, unplanned:
    building and validating a status costs tens of microseconds, at 10,000 adapters a pass.

    An adapter whose Ready reason turned to a failure an agent reported gets one Warning Event with
    the condition's message. `announced` (adapter -> the failure reason last announced, kept by the
    loop) stops a repeat while kopf's index still shows the status from before the loop's own write.
    """
    reports = reports_by_adapter(workers)
    after = dict(announced)
    changed_statuses, events = [], []
    for name, (_, spec, body) in sorted(adapters.items()):
        current = dict(body.get("status") or {})
        inputs = (sorted(placement.get(name, {})), reports.get(name, NOT_REPORTED), fleet)
        known = memo.get(name) if memo is not None else None
        if known is not None and known[0] is body and known[1] == inputs:
            planned = known[2]
        else:
            generation = int(body["metadata"].get("generation", 0))
            planned = plan_placed_adapter_status(spec, generation, *inputs, current, now)
        if memo is not None:
            memo[name] = (body, inputs, planned)
        if status_changed(current, planned):
            changed_statuses.append((name, planned))
            failure = agent_failure_to_announce(current, planned)
            if failure is not None and announced.get(name) != failure.reason:
                events.append((body, failure))
        if name in after and (condition(planned["conditions"], "Ready") or {}).get("reason") != after[name]:
            del after[name]  # that failure is over: a later one is news again
    for gone in after.keys() - adapters.keys():
        del after[gone]
    if memo is not None:
        for gone in memo.keys() - adapters.keys():
            del memo[gone]
    for body, failure in events:
        after[body["metadata"]["name"]] = failure.reason
    return changed_statuses, events, after

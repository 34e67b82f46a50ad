"""The placement loop: one kopf daemon per BaseModel keeps its WorkerPlacements and adapter statuses right.

Each pass reads the fleet from kopf indexes (ready worker pods, node zones,
the BaseModel's LoRAAdapters, the WorkerPlacements with the agents' reports),
brings the planner up to date (placement_sync), writes the WorkerPlacements
whose content changed (the applier skips the rest), and writes the status of
each adapter whose placement or residency changed, with a Warning Event on the
adapter when an agent-reported failure becomes its Ready reason. The desired
placement lives in the WorkerPlacement objects, so a restarted operator resumes
from it. The loop wakes every `LORAPLEX_PLACEMENT_INTERVAL` seconds, but a pass
over the adapters runs only when what it reads changed, work is pending, or
`RESYNC_SECONDS` went by (operator/pass_gate.py): an idle fleet costs a
comparison of index snapshots, not a pass over 10,000 adapters a second.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client
from pydantic import ValidationError
from urllib3 import BaseHTTPResponse

from loraplex.api import API_VERSION, GROUP, VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator import metrics
from loraplex.operator.adapter_handlers import release_unloaded
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
from loraplex.operator.apply import Applier
from loraplex.operator.conditions import condition
from loraplex.operator.fleet import (
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    HASH_ANNOTATION,
    MANAGED_BY,
    BaseModelRef,
    Manifest,
    owned_by,
    worker_statefulset,
)
from loraplex.operator.fleet_scale import FleetTargets, ScaleStep, next_scale, slot_demand, workers_needed
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.observe import index_essentials, running_workers
from loraplex.operator.pass_gate import PassGate
from loraplex.operator.placement import Adapter, Worker
from loraplex.operator.placement_sync import FleetSnapshot, PlacementSync
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.worker_placements import on_demand_unloads, plan_worker_placements

ZONE_LABEL = "topology.kubernetes.io/zone"
RESYNC_SECONDS = 30.0  # a pass at least this often, changed inputs or not
WORKER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: "worker"}


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    api: client.ApiClient,
    applier: Applier,
    targets: FleetTargets,
) -> None:
    custom = client.CustomObjectsApi(api)
    writers = ThreadPoolExecutor(max_workers=settings.status_writers, thread_name_prefix="status-writer")

    @kopf.index("", "v1", "nodes", id="node_zones", registry=registry)
    async def node_zones(name: str, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
        return {name: labels.get(ZONE_LABEL, "")}

    @kopf.index("", "v1", "pods", labels=WORKER_LABELS, id="ready_workers", registry=registry)
    async def ready_workers(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[Any, Any]:
        conditions = {
            c.get("type"): c.get("status") for c in body.get("status", {}).get("conditions", []) or []
        }
        healthy = conditions.get("Ready") == "True" and not body["metadata"].get("deletionTimestamp")
        node = body.get("spec", {}).get("nodeName")
        return {(str(namespace), labels[BASE_MODEL_LABEL]): (body["metadata"]["name"], node, healthy)}

    @kopf.index(GROUP, VERSION, "workerplacements", id="worker_placements", registry=registry)
    async def worker_placements(
        body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), spec.get("baseModel", "")): index_essentials(body)}

    @kopf.daemon(GROUP, VERSION, "basemodels", id="placement", cancellation_timeout=10, registry=registry)
    def place_adapters(
        stopped: kopf.DaemonStopped, name: str, namespace: str | None, uid: str, spec: kopf.Spec,
        body: kopf.Body, logger: kopf.Logger, **kwargs: Any,
    ) -> None:  # fmt: skip
        key = (str(namespace), name)
        ref = BaseModelRef(name, str(namespace), uid)
        sync = PlacementSync(settings.max_rebalance_moves)
        parsed: ParsedSpecs = {}
        scaler = FleetScaler(key, ref, settings, applier, targets)
        gate = PassGate(RESYNC_SECONDS)
        announced: dict[str, str] = {}  # adapter -> the agent failure reason its Warning Event told
        while not stopped:
            started = time.monotonic()
            try:
                model = BaseModelSpec.model_validate(dict(spec))
            except ValidationError:
                stopped.wait(settings.placement_interval_seconds)
                continue
            # Snapshots: kopf's index stores change under a loop that iterates them (deletes, status writes).
            bodies = list(kwargs["adapters_by_base"].get(key, []))
            pods = list(kwargs["ready_workers"].get(key, []))
            workers = _workers(pods, kwargs["node_zones"], model, settings)
            placements = list(kwargs["worker_placements"].get(key, []))
            worker_sets = list(kwargs["worker_sets"].get(key, []))
            pending = sync.rebalancing or scaler.waiting
            if not gate.due((bodies, placements, worker_sets), (workers, dict(spec)), pending, started):
                metrics.PLACEMENT_PASSES.labels("idle").inc()  # nothing changed: no pass over the adapters
                stopped.wait(settings.placement_interval_seconds)
                continue
            metrics.PLACEMENT_PASSES.labels("ran").inc()
            reports = _reports(placements)
            active = active_adapters(reports)
            adapters, parsed = _valid_adapters(bodies, model, parsed, active)
            target = scaler.scale(
                model, body, [a for a, _, _ in adapters.values()], kwargs["worker_sets"], logger
            )
            planning = time.monotonic()
            result = sync.sync(
                FleetSnapshot(workers, {k: a for k, (a, _, _) in adapters.items()}), _recorded(placements)
            )
            specs = {k: s for k, (_, s, _) in adapters.items()}
            deleting = {b["metadata"]["name"] for b in bodies if b["metadata"].get("deletionTimestamp")}
            unloads = on_demand_unloads(deleting, placements)
            planned = plan_worker_placements(ref, sorted(workers), result.placement, specs, unloads)
            metrics.PLANNER_SECONDS.observe(time.monotonic() - planning)
            writes = applier.apply_all(_changed(planned, placements))
            for gone in sorted({p["spec"]["worker"] for p in placements} - workers.keys()):
                writes += applier.delete(API_VERSION, "WorkerPlacement", gone, str(namespace))
            statuses = _write_adapter_statuses(
                custom, writers, str(namespace), adapters, result.placement, reports,
                FleetSize(len(workers), target), announced,
            )  # fmt: skip
            writes += release_unloaded(custom, bodies, placements)
            metrics.PLACEMENT_PASS_SECONDS.observe(time.monotonic() - started)
            _record(name, result.placement, len(result.missing), result.moved)
            metrics.ADAPTERS_ACTIVE.labels(name).set(len(active & adapters.keys()))
            if result.moved or writes or statuses:
                logger.info(
                    f"Placed adapters of {namespace}/{name} moved={result.moved} "
                    f"placements_written={writes} statuses_written={statuses} missing={len(result.missing)}"
                )
            stopped.wait(settings.placement_interval_seconds)
        targets.forget(key)


class FleetScaler:
    """Grows or shrinks one BaseModel's worker StatefulSet to what its adapters need (see fleet_scale)."""

    def __init__(
        self,
        key: tuple[str, str],
        ref: BaseModelRef,
        settings: OperatorSettings,
        applier: Applier,
        targets: FleetTargets,
    ) -> None:
        self.key, self.ref, self.settings, self.applier, self.targets = key, ref, settings, applier, targets
        self.step: ScaleStep | None = None

    @property
    def waiting(self) -> bool:
        """A scale-down waits out its delay: the next passes must run though nothing else changes."""
        return self.step is not None and self.step.below_since is not None

    def scale(
        self,
        model: BaseModelSpec,
        body: kopf.Body,
        adapters: list[Adapter],
        worker_sets: kopf.Index[tuple[str, str], dict[str, Any]],
        logger: kopf.Logger,
    ) -> int:
        """Scale towards what the adapters need; return the worker count the fleet is heading for."""
        running = running_workers(list(worker_sets.get(self.key, [])))
        demand = slot_demand(adapters)
        if running is None:
            return workers_needed(model, demand)  # the fleet handler creates the StatefulSet first
        # A fresh operator starts from what runs, so a restart never shrinks the fleet at once.
        current = self.step if self.step is not None else ScaleStep(running)
        step = next_scale(model, demand, current, time.monotonic(), self.settings.scale_down_delay_seconds)
        self.step = step
        self.targets.set(self.key, step.target)
        if step.target == running:
            return step.target
        statefulset = owned_by(self.ref, worker_statefulset(self.ref, model, self.settings, step.target))
        try:
            written = self.applier.apply(statefulset)  # a no-op while the index still shows the old count
        except client.ApiException as error:
            logger.warning(f"Scaling the workers to {step.target} failed, will retry: {error.reason}")
            return step.target
        if not written:
            return step.target
        message = (
            f"Workers {running} -> {step.target}: the adapters want {demand.warm_copies} warm copies "
            f"({demand.pinned_copies} pinned in GPU slots, at most {demand.widest} of one adapter); "
            f"replicas {model.replicas.min}..{model.replicas.effective_max}"
        )
        kopf.event(body, type="Normal", reason="Scaled", message=message)  # kopf.info is filtered by level
        logger.info(message)
        metrics.FLEET_SCALINGS.labels(self.ref.name, "up" if step.target > running else "down").inc()
        return step.target


def _changed(planned: list[Manifest], placements: list[Mapping[str, Any]]) -> list[Manifest]:
    """The WorkerPlacements whose content hash differs from what the index shows; the rest are not read.

    Without this, every pass would GET each of the fleet's WorkerPlacements (1,000 reads a second
    at 1,000 workers) only to find most of them unchanged. An index that lags behind this loop's
    own last write costs one GET (the applier then skips the write by the same hash).
    """
    live = {body["metadata"]["name"]: _hash(body) for body in placements}
    return [manifest for manifest in planned if live.get(manifest["metadata"]["name"]) != _hash(manifest)]


def _hash(body: Mapping[str, Any]) -> str | None:
    return (body["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)


def _record(base_model: str, placement: Mapping[str, Mapping[str, str]], pending: int, moved: int) -> None:
    per_tier = {"GPU": 0, "CPU": 0, "Disk": 0}
    for copies in placement.values():
        for tier in copies.values():
            per_tier[tier] += 1
    for tier, count in per_tier.items():
        metrics.ADAPTER_COPIES.labels(base_model, tier).set(count)
    metrics.ADAPTERS_PENDING.labels(base_model).set(pending)
    metrics.PLACEMENT_MOVES.labels(base_model).inc(moved)


ParsedSpecs = dict[tuple[str, int], LoRAAdapterSpec | None]


def _valid_adapters(
    bodies: list[Mapping[str, Any]], model: BaseModelSpec, parsed: ParsedSpecs, active: set[str]
) -> tuple[dict[str, tuple[Adapter, LoRAAdapterSpec, Mapping[str, Any]]], ParsedSpecs]:
    """Adapters of this BaseModel that passed the check and are not being deleted.

    An adapter an agent reports active gets warmth 1 (idle ones 0): among copies of equal priority,
    used ones win the faster tiers and idle ones give way first. Two levels, switched by the agents'
    active window, so steady traffic changes no standing and moves nothing.

    Specs are parsed once per (name, generation), not on every pass: at 10,000 adapters a
    pass would otherwise spend most of its time validating specs that did not change. The
    returned cache holds only the adapters seen in this pass.
    """
    valid, kept = {}, {}
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


def _workers(
    pods: list[tuple[str, str | None, bool]], zones: kopf.Index[str, str], model: BaseModelSpec,
    settings: OperatorSettings,
) -> dict[str, Worker]:  # fmt: skip
    cpu_extra = max(model.engine.max_cpu_loras - model.engine.max_loras, 0)
    workers = {}
    for pod, node, healthy in pods:
        if healthy and node:
            zone = next(iter(zones.get(node, [])), "")
            workers[pod] = Worker(pod, node, zone, model.engine.max_loras, cpu_extra, settings.disk_slots)
    return workers


def _recorded(placements: list[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The placement the WorkerPlacement objects hold: what the operator last decided."""
    recorded: dict[str, dict[str, str]] = {}
    for body in placements:
        worker = body["spec"]["worker"]
        for entry in body["spec"].get("adapters", []):
            recorded.setdefault(entry["name"], {})[worker] = entry["tier"]
    return recorded


def _reports(placements: list[Mapping[str, Any]]) -> dict[str, WorkerReport]:
    reports = {}
    for body in placements:
        status = body.get("status") or {}
        held = {
            a["name"]: Resident(a["tier"], a.get("sha256"), a.get("loadSeconds"), bool(a.get("active")))
            for a in status.get("adapters", [])
        }
        failures = {f["name"]: (f["reason"], f.get("message", "")) for f in status.get("failures", [])}
        reports[body["spec"]["worker"]] = WorkerReport(held, failures)
    return reports


def _write_adapter_statuses(
    custom: client.CustomObjectsApi,
    writers: ThreadPoolExecutor,
    namespace: str,
    adapters: Mapping[str, tuple[Adapter, LoRAAdapterSpec, Mapping[str, Any]]],
    placement: Mapping[str, Mapping[str, str]],
    workers: Mapping[str, WorkerReport],
    fleet: FleetSize,
    announced: dict[str, str],
) -> int:
    """Write the statuses that changed, several at once: after a bulk apply that is every adapter.

    Once written, each adapter whose Ready reason turned to a failure an agent reported gets one
    Warning Event with the condition's message (posted from this thread: kopf's event queue is
    reached through the daemon's context, which the writer threads lack). `announced` (adapter ->
    the failure reason last announced, kept by the loop) stops a repeat while kopf's index still
    shows the status from before this loop's own write.
    """
    reports, now = reports_by_adapter(workers), datetime.now(UTC)
    changed, announce = [], []
    for name, (_, spec, body) in sorted(adapters.items()):
        current = dict(body.get("status") or {})
        generation = int(body["metadata"].get("generation", 0))
        planned = plan_placed_adapter_status(
            spec, generation, sorted(placement.get(name, {})), reports.get(name, NOT_REPORTED), fleet,
            current, now,
        )  # fmt: skip
        if status_changed(current, planned):
            changed.append((name, planned))
            failure = agent_failure_to_announce(current, planned)
            if failure is not None and announced.get(name) != failure.reason:
                announce.append((name, body, failure))
        if (
            name in announced
            and (condition(planned["conditions"], "Ready") or {}).get("reason") != announced[name]
        ):
            del announced[name]  # that failure is over: a later one is news again
    for gone in announced.keys() - adapters.keys():
        del announced[gone]

    def write(item: tuple[str, dict[str, Any]]) -> None:
        name, planned = item
        # The answer (the whole adapter) is drained unparsed, so its connection goes back to the pool:
        # parsing it is a third of the client's CPU per write, and a bulk apply is a write per adapter.
        response = custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "loraadapters", name, {"status": planned}, _preload_content=False
        )
        cast(BaseHTTPResponse, response).drain_conn()
        metrics.API_WRITES.labels("LoRAAdapter", "patch-status").inc()

    list(writers.map(write, changed))
    for name, body, failure in announce:
        announced[name] = failure.reason
        kopf.warn(kopf.Body(cast(kopf.RawBody, dict(body))), reason=failure.reason, message=failure.message)
    return len(changed)

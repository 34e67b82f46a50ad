"""The placement loop: one kopf daemon per BaseModel keeps its WorkerPlacements and adapter statuses right.

Each wake-up reads a snapshot of the BaseModel from kopf's indexes (its
LoRAAdapters, its WorkerPlacements with the agents' reports, its ready worker
pods and their nodes' zones, its worker StatefulSet), runs one placement pass
over it (operator/placement_pass.py, pure: a snapshot in, a plan of writes out)
and carries the plan out: the WorkerPlacements whose content changed (the
applier skips the rest), the statuses of the adapters whose placement or
residency changed (operator/adapter_writes.py), a Warning Event on an adapter
when an agent-reported failure becomes its Ready reason, the unload finalizer
of deleted adapters no worker holds, and the worker count the adapters need
(FleetTargets: the BaseModel handlers apply it to the StatefulSet).

The desired placement lives in the WorkerPlacement objects, so a restarted
operator resumes from it. The loop wakes every `LORAPLEX_PLACEMENT_INTERVAL`
seconds, but a pass over the adapters runs only when what it reads changed,
work is pending, or `RESYNC_SECONDS` went by (operator/pass_gate.py): an idle
fleet costs a comparison of index snapshots, not a pass over 10,000 adapters a
second. An API error during a pass is logged and counted, and the next wake-up
runs the pass again: the loop's memory (the pass gate, the planner's rebalance
state, the scale-down delay) survives it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import urllib3
from kubernetes import client
from pydantic import ValidationError

from loraplex.api import API_VERSION, BASE_MODELS, GROUP, VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import ConditionUpdate
from loraplex.api.tiers import TIERS
from loraplex.operator import metrics
from loraplex.operator.adapter_residency import FleetSize, WorkerReport
from loraplex.operator.adapter_writes import remove_unload_finalizer, write_statuses
from loraplex.operator.apply import Applier
from loraplex.operator.fleet import BaseModelRef
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.indexes import Indexes
from loraplex.operator.observe import running_workers
from loraplex.operator.pass_gate import PassGate
from loraplex.operator.placement import Adapter
from loraplex.operator.placement_pass import (
    PassPlan,
    PlacementSnapshot,
    PlacementState,
    WorkerPodState,
    fleet_workers,
    plan_adapter_statuses,
    run_pass,
)
from loraplex.operator.settings import OperatorSettings

RESYNC_SECONDS = 30.0  # a pass at least this often, changed inputs or not


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    api: client.ApiClient,
    applier: Applier,
    targets: FleetTargets,
) -> None:
    """Attach the placement daemon to `registry` (it reads the indexes of operator/indexes.py)."""
    custom = client.CustomObjectsApi(api)
    writers = ThreadPoolExecutor(max_workers=settings.status_writers, thread_name_prefix="status-writer")

    @kopf.daemon(GROUP, VERSION, BASE_MODELS, id="placement", cancellation_timeout=10, registry=registry)
    def place_adapters(
        stopped: kopf.DaemonStopped, name: str, namespace: str | None, uid: str, spec: kopf.Spec,
        logger: kopf.Logger, **kwargs: Any,
    ) -> None:  # fmt: skip
        ref = BaseModelRef(name, str(namespace), uid)
        loop = PlacementLoop(ref, settings, custom, writers, applier, targets, logger)
        indexes = Indexes.from_kwargs(kwargs)
        while not stopped:
            loop.wake(indexes, spec)
            stopped.wait(settings.placement_interval_seconds)
        targets.forget(loop.key)
        if kopf.DaemonStoppingReason.RESOURCE_DELETED in (stopped.reason or kopf.DaemonStoppingReason(0)):
            metrics.forget_base_model(ref.namespace, ref.name)  # a deleted BaseModel leaves no series


class PlacementLoop:
    """One BaseModel's placement loop: what it remembers between wake-ups, and one wake-up."""

    def __init__(
        self,
        ref: BaseModelRef,
        settings: OperatorSettings,
        custom: client.CustomObjectsApi,
        writers: Executor,
        applier: Applier,
        targets: FleetTargets,
        logger: kopf.Logger,
    ) -> None:
        self.ref, self.key = ref, (ref.namespace, ref.name)
        self.settings, self.custom, self.writers = settings, custom, writers
        self.applier, self.targets, self.logger = applier, targets, logger
        self.state = PlacementState(settings.max_rebalance_moves, settings.scale_down_delay_seconds)
        self.gate = PassGate(RESYNC_SECONDS)
        self.retry = False  # the last pass failed part-way: run the next one whatever the gate says

    def wake(self, indexes: Indexes, spec: Mapping[str, Any]) -> None:
        """Run a pass if one is due; an API error is logged and counted, and the next wake-up retries."""
        try:
            self._wake(indexes, spec)
        except (client.ApiException, urllib3.exceptions.HTTPError) as error:
            self.retry = True
            metrics.PLACEMENT_PASSES.labels("failed").inc()
            reason = getattr(error, "reason", None) or type(error).__name__
            self.logger.warning(
                f"A placement pass of {self.ref.namespace}/{self.ref.name} failed, will retry: {reason}"
            )

    def _wake(self, indexes: Indexes, spec: Mapping[str, Any]) -> None:
        started = time.monotonic()
        try:
            model = BaseModelSpec.model_validate(dict(spec))
        except ValidationError:
            return
        key = self.key
        # Snapshots: kopf's index stores change under a loop that iterates them (deletes, status writes).
        bodies, placements = indexes.adapters(key), indexes.placements(key)
        worker_sets = indexes.worker_statefulsets(key)
        pods = [
            WorkerPodState(p.name, p.node, p.healthy, indexes.node_zone(p.node or ""))
            for p in indexes.workers(key)
        ]
        workers = fleet_workers(pods, model, self.settings.disk_slots)
        pending = self.state.pending or self.retry
        indexed = cast(list[list[object]], [bodies, placements, worker_sets])  # compared by identity
        if not self.gate.due(indexed, (workers, dict(spec)), pending, started):
            metrics.PLACEMENT_PASSES.labels("idle").inc()  # nothing changed: no pass over the adapters
            return
        metrics.PLACEMENT_PASSES.labels("ran").inc()
        self.retry = True  # until this pass's writes are all done
        snapshot = PlacementSnapshot(
            self.ref, model, bodies, placements, workers, running_workers(worker_sets), started,
            datetime.now(UTC),
        )  # fmt: skip
        planning = time.monotonic()
        plan = run_pass(snapshot, self.state)
        metrics.PLANNER_SECONDS.observe(time.monotonic() - planning)
        if plan.decided:
            self.targets.set(key, plan.target, plan.demand)  # the BaseModel handlers apply it
        writes = self._carry_out(plan)
        self.retry = False
        metrics.PLACEMENT_PASS_SECONDS.observe(time.monotonic() - started)
        _record(self.ref, plan)
        if plan.moved or writes or plan.statuses:
            self.logger.info(
                f"Placed adapters of {key[0]}/{key[1]} moved={plan.moved} placements_written={writes} "
                f"statuses_written={len(plan.statuses)} missing={plan.missing}"
            )

    def _carry_out(self, plan: PassPlan) -> int:
        """Make the plan's writes; return the WorkerPlacement and finalizer writes made."""
        writes = self.applier.apply_all(plan.apply)
        for gone in plan.delete:
            writes += self.applier.delete(API_VERSION, "WorkerPlacement", gone, self.ref.namespace)
        write_statuses(self.custom, self.writers, self.ref.namespace, plan.statuses)
        announce(plan.events)
        self.state.announced = plan.announced
        writes += sum(remove_unload_finalizer(meta, custom=self.custom) for meta in plan.release)
        return writes


def announce(events: list[tuple[Mapping[str, Any], ConditionUpdate]]) -> None:
    """Post the Warning Events of agent failures on their adapters.

    Posted from the loop's thread: kopf's event queue is reached through the daemon's context,
    which the status writer threads lack.
    """
    for body, failure in events:
        kopf.warn(kopf.Body(cast(kopf.RawBody, dict(body))), reason=failure.reason, message=failure.message)


def write_adapter_statuses(
    custom: client.CustomObjectsApi,
    writers: Executor,
    namespace: str,
    adapters: Mapping[str, tuple[Adapter, LoRAAdapterSpec, Mapping[str, Any]]],
    placement: Mapping[str, Mapping[str, str]],
    workers: Mapping[str, WorkerReport],
    fleet: FleetSize,
    announced: dict[str, str],
) -> int:
    """The status part of a pass on its own: plan the adapters' statuses, write those that changed,
    post the Warning Events, and update `announced` (the loop's memory of failures announced)."""
    statuses, events, after = plan_adapter_statuses(
        dict(adapters), placement, workers, fleet, announced, datetime.now(UTC)
    )
    written = write_statuses(custom, writers, namespace, statuses)
    announce(events)
    announced.clear()
    announced.update(after)
    return written


def _record(ref: BaseModelRef, plan: PassPlan) -> None:
    base_model = (ref.namespace, ref.name)
    per_tier: dict[str, int] = dict.fromkeys(TIERS, 0)
    for copies in plan.placement.values():
        for tier in copies.values():
            per_tier[tier] += 1
    for tier, count in per_tier.items():
        metrics.ADAPTER_COPIES.labels(*base_model, tier).set(count)
    metrics.ADAPTERS_PENDING.labels(*base_model).set(plan.missing)
    metrics.PLACEMENT_MOVES.labels(*base_model).inc(plan.moved)
    metrics.ADAPTERS_ACTIVE.labels(*base_model).set(plan.active)

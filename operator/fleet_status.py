"""Decides a BaseModel's status from what its worker StatefulSet and pods show.

Pure: the caller passes plain observations (from kopf indexes) and `now`.
Conditions: `Ready` (all desired workers ready and running the planned
StatefulSet), `Progressing` (a roll or a scale-up in flight), `Degraded`
(workers missing), and the kstatus pair `Reconciling` / `Stalled`, so Flux,
Argo CD and `kubectl wait` read health.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraplex.api.basemodel import BaseModelSpec, BaseModelStatus, SlotUsage
from loraplex.api.conditions import ConditionUpdate, condition, merge_conditions
from loraplex.api.wire import to_wire
from loraplex.operator.fleet import FETCH_MODEL_CONTAINER


@dataclass(frozen=True)
class ContainerTrouble:
    """A worker pod's container the kubelet cannot start or keep running, as its status says."""

    container: str
    waiting_reason: str  # the kubelet's (ImagePullBackOff, ...); CrashLoopBackOff also for a failed exit
    message: str = ""  # the waiting message, or for a crash its last exit and the last line it logged
    restarts: int = 0
    init: bool = False  # an init container (fetch-model: the copy of the base model)


@dataclass(frozen=True)
class FleetPod:
    """What the status needs to know of one pod of the fleet: a worker or a router."""

    name: str
    ready: bool
    unschedulable_message: str | None = None  # PodScheduled=False, reason Unschedulable
    trouble: ContainerTrouble | None = None
    fetching_model_since: str | None = None  # the fetch-model init container is running, since then
    uid: str = ""
    setting_up_since: str | None = None  # scheduled then, and the kubelet has started no container yet
    volume_trouble: str | None = None  # why a volume will not mount, from the kubelet's Warning Events


@dataclass(frozen=True)
class FleetObservation:
    """The worker StatefulSet's status (absent: not created yet), its pods and the router's pods."""

    statefulset_found: bool = False
    replicas: int = 0  # the StatefulSet's spec.replicas: the worker count the operator decided
    observed_generation: int = 0
    generation: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    current_revision: str | None = None
    update_revision: str | None = None
    applied_hash: str | None = None  # the content hash the StatefulSet carries: what was last applied
    pods: Sequence[FleetPod] = field(default_factory=tuple)
    gpu_used: int = 0  # adapters the agents report in GPU slots, over all workers
    cpu_used: int = 0  # ... and in CPU slots (vLLM's CPU cache holds the GPU ones too)
    requests: float | None = None  # running or waiting, as the agents report it; None: none reports
    refused: str | None = None  # the API server refused an object of the fleet: which, and its answer
    router_pods: Sequence[FleetPod] = field(default_factory=tuple)


def plan_base_model_status(
    spec: BaseModelSpec,
    generation: int,
    observed: FleetObservation,
    previous: dict[str, Any],
    now: datetime,
    worker_selector: str = "",
    planned_hash: str | None = None,
) -> dict[str, Any]:
    """The whole status subresource for this generation of the BaseModel, as its BaseModelStatus
    writes it.

    `worker_selector` is the worker pods' label selector, which `kubectl scale` and HPAs read.
    `planned_hash` is the content hash of the worker StatefulSet this generation plans: until the
    observed StatefulSet carries it (the watch lags behind the write), the roll has not begun.
    """
    desired = observed.replicas if observed.statefulset_found else spec.replicas.min
    ready = min(observed.ready_replicas, desired)
    before = (condition(previous.get("conditions", []), "Ready") or {}).get("reason")
    ready_condition = _ready_condition(spec, observed, ready, desired, planned_hash, before == PULL_FAILED)
    blocked = ready_condition.reason in BLOCKED_REASONS
    in_flight = ready_condition.status != "True" and not blocked
    updates = [
        ready_condition,
        _flag("Progressing", in_flight, ready_condition),
        _flag("Degraded", blocked, ready_condition),
        _flag("Reconciling", in_flight, ready_condition),
        _flag("Stalled", blocked, ready_condition),
    ]
    gpu_total = ready * spec.engine.max_loras
    cpu_total = ready * spec.engine.max_cpu_loras
    gpu_used = min(observed.gpu_used, gpu_total)
    selector = {"worker_selector": worker_selector} if worker_selector else {}  # unset: not written
    scales_on_load = spec.replicas.target_requests_per_worker is not None
    load = {"requests": observed.requests or 0.0} if scales_on_load else {}
    status = BaseModelStatus(
        observed_generation=generation,
        conditions=merge_conditions(previous.get("conditions", []), updates, generation, now),
        desired_workers=desired,
        ready_workers=ready,
        workers=f"{ready}/{desired}",
        slots=SlotUsage(
            gpu_total=gpu_total,
            gpu_used=gpu_used,
            cpu_total=cpu_total,
            cpu_used=min(observed.gpu_used + observed.cpu_used, cpu_total),
        ),
        slots_summary=f"{gpu_used}/{gpu_total}",
        **selector,
        **load,
    )
    return to_wire(status)


PULL_FAILED = "ImagePullFailed"
# Ready=False reasons that waiting alone will not fix: the fleet is stuck, not starting.
BLOCKED_REASONS = frozenset(
    {
        "InsufficientGPU",
        "Unschedulable",
        "ObjectRefused",
        PULL_FAILED,
        "ContainerConfigError",
        "WorkerCrashLoop",
        "RouterCrashLoop",
        "ModelFetchFailed",
        "VolumeMountFailed",
    }
)
# The kubelet's waiting reasons for a container it cannot start, by the Ready reason they give.
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
PULL_ERROR = "ErrImagePull"  # a failed pull: the first may pass, so only after a back-off (_stuck)
CRASH_LOOP = "CrashLoopBackOff"
TROUBLE_REASONS = IMAGE_PULL_REASONS | CONFIG_REASONS | {CRASH_LOOP, PULL_ERROR}
# Restarts before a crash loop counts as stuck: an engine may exit once while it starts (the kubelet
# restarts it) without the fleet being Stalled, which GitOps tools read as a failed rollout.
CRASH_LOOP_RESTARTS = 3


def _ready_condition(
    spec: BaseModelSpec,
    observed: FleetObservation,
    ready: int,
    desired: int,
    planned_hash: str | None,
    pull_failed_before: bool = False,
) -> ConditionUpdate:
    if observed.refused is not None:
        return ConditionUpdate("Ready", "False", "ObjectRefused", observed.refused)
    if not observed.statefulset_found:
        return ConditionUpdate("Ready", "Unknown", "Creating", "Creating the worker StatefulSet")
    unschedulable = [p for p in (*observed.pods, *observed.router_pods) if p.unschedulable_message]
    gpu = spec.resources.gpu_resource_name
    no_gpu = [p for p in unschedulable if gpu in (p.unschedulable_message or "")]
    if no_gpu:
        first = no_gpu[0]
        message = (
            f"{len(no_gpu)} worker pod(s) cannot be scheduled: no node has {spec.resources.gpu} free {gpu} "
            f"(first: {first.name}: {first.unschedulable_message})"
        )
        return ConditionUpdate("Ready", "False", "InsufficientGPU", message)
    if unschedulable:
        first = unschedulable[0]
        return ConditionUpdate(
            "Ready", "False", "Unschedulable", f"{first.name}: {first.unschedulable_message}"
        )
    for pods, crash_loop in ((observed.pods, "WorkerCrashLoop"), (observed.router_pods, "RouterCrashLoop")):
        troubles = ((p, _stuck(p.trouble, crash_loop, pull_failed_before)) for p in pods)
        stuck = [(p, found) for p, found in troubles if found is not None]
        if stuck:
            pod, (reason, what) = stuck[0]
            return ConditionUpdate("Ready", "False", reason, _first_of(pod.name, what, len(stuck)))
    unmounted = [p for p in (*observed.pods, *observed.router_pods) if p.volume_trouble]
    if unmounted:
        first = unmounted[0]
        message = _first_of(first.name, str(first.volume_trouble), len(unmounted))
        return ConditionUpdate("Ready", "False", "VolumeMountFailed", message)
    if ready < desired:
        fetching = [p for p in observed.pods if p.fetching_model_since and not p.ready]
        if fetching:
            first = fetching[0]
            message = (
                f"{ready} of {desired} workers ready; {len(fetching)} copying the base model from "
                f"{spec.model.uri} (first: {first.name}, since {first.fetching_model_since}; "
                f"its progress: kubectl logs {first.name} -c {FETCH_MODEL_CONTAINER})"
            )
            return ConditionUpdate("Ready", "False", "FetchingBaseModel", message)
        if _spec_changed(observed, planned_hash):  # workers restarting on the new spec, not new ones
            return ConditionUpdate(
                "Ready", "False", "RollingUpdate", _rolling_message(observed, desired, ready)
            )
        return ConditionUpdate("Ready", "False", "WorkersStarting", f"{ready} of {desired} workers ready")
    if not any(p.ready for p in observed.router_pods):  # nothing answers clients yet
        message = f"{ready} of {desired} workers ready; no router pod ready yet"
        return ConditionUpdate("Ready", "False", "RouterStarting", message)
    if _rolling(observed, desired, planned_hash):
        return ConditionUpdate("Ready", "False", "RollingUpdate", _rolling_message(observed, desired, ready))
    return ConditionUpdate("Ready", "True", "WorkersReady", f"{ready} of {desired} workers ready")


def _first_of(pod: str, what: str, count: int) -> str:
    """A message naming the first pod in trouble, and how many there are when it is not alone."""
    return f"{pod}: {what}" + (f" ({count} pods in all)" if count > 1 else "")


def _stuck(
    trouble: ContainerTrouble | None, crash_loop: str, pull_failed_before: bool
) -> tuple[str, str] | None:
    """The Ready reason and message of a container that will not start or keep running without a
    change; None for one that may yet (a first pull error, a crash or two while starting). Once the
    kubelet backs off pulling an image, its next tries (`ErrImagePull` between the back-offs) keep
    the fleet stuck: one reason, not one that flips with each try."""
    if trouble is None:
        return None
    container, detail = trouble.container, trouble.message
    pulling_again = trouble.waiting_reason == PULL_ERROR and pull_failed_before
    if trouble.waiting_reason in IMAGE_PULL_REASONS or pulling_again:
        return PULL_FAILED, f"container {container} cannot pull its image: {detail}"
    if trouble.waiting_reason in CONFIG_REASONS:
        return "ContainerConfigError", f"container {container} cannot be created: {detail}"
    if trouble.waiting_reason == CRASH_LOOP and trouble.restarts >= CRASH_LOOP_RESTARTS:
        if trouble.init:
            what = f"copying the base model failed {trouble.restarts + 1} times ({container}): {detail}"
            return "ModelFetchFailed", what
        return crash_loop, f"container {container} restarted {trouble.restarts} times: {detail}"
    return None


def _rolling_message(observed: FleetObservation, desired: int, ready: int) -> str:
    updated = min(observed.updated_replicas, desired)
    return f"Rolling the workers to the new spec: {updated} of {desired} updated, {ready} of {desired} ready"


def _rolling(observed: FleetObservation, desired: int, planned_hash: str | None) -> bool:
    return (
        _spec_changed(observed, planned_hash)
        or observed.observed_generation < observed.generation
        or observed.updated_replicas < desired
    )


def _spec_changed(observed: FleetObservation, planned_hash: str | None) -> bool:
    """The workers' pod spec changed: the StatefulSet seen is not yet the one planned, or it is and
    its pods are not all on its latest revision."""
    revisions_differ = (
        observed.update_revision is not None and observed.update_revision != observed.current_revision
    )
    not_yet_seen = planned_hash is not None and observed.applied_hash != planned_hash
    return not_yet_seen or revisions_differ


def _flag(type_: str, on: bool, cause: ConditionUpdate) -> ConditionUpdate:
    """A secondary condition that is True, with Ready's reason and message, while `on`."""
    if on:
        return ConditionUpdate(type_, "True", cause.reason, cause.message)
    return ConditionUpdate(type_, "False", "AsExpected")


def newly_stalled(previous: dict[str, Any], planned: dict[str, Any]) -> tuple[str, str] | None:
    """The Ready reason and message when `planned` turns Ready to a reason waiting will not fix: a
    Warning Event's worth, once per change of reason (not on every pass, nor as a restart count grows)."""
    before = condition(previous.get("conditions", []), "Ready") or {}
    after = condition(planned.get("conditions", []), "Ready") or {}
    reason = after.get("reason")
    if reason in BLOCKED_REASONS and reason != before.get("reason"):
        return str(reason), str(after.get("message", ""))
    return None


def status_changed(current: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether writing `planned` would change anything a reader sees."""
    return any(current.get(key) != value for key, value in planned.items())

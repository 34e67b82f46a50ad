"""Turns raw StatefulSet and Pod bodies into the plain observations the status planner reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.api.labels import HASH_ANNOTATION
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import WorkerPlacementStatus, read_status
from loraplex.operator.fleet_status import (
    CRASH_LOOP,
    TROUBLE_REASONS,
    ContainerTrouble,
    FleetObservation,
    FleetPod,
)
from loraplex.operator.training_schedule import parse_time

MESSAGE_CHARS = 300  # of a crashed container's last log line, in a condition message
KEPT_METADATA = ("name", "namespace", "uid", "generation", "deletionTimestamp", "finalizers")


def index_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of an indexed object: at 10,000 adapters, whole bodies (managedFields,
    kopf's last-handled annotation) would multiply the operator's memory."""
    metadata = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: metadata[key] for key in KEPT_METADATA if key in metadata}
        | _content_hash(metadata),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _content_hash(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Only the operator's content-hash annotation (what it last applied), never the others."""
    found = (metadata.get("annotations") or {}).get(HASH_ANNOTATION)
    return {"annotations": {HASH_ANNOTATION: found}} if found else {}


def statefulset_replicas(statefulset: Mapping[str, Any]) -> int:
    """A StatefulSet's spec.replicas: the worker count the operator last decided."""
    return int((statefulset.get("spec") or {}).get("replicas", 0))


def running_workers(worker_sets: Iterable[Mapping[str, Any]]) -> int | None:
    """The worker StatefulSet's spec.replicas as its index entry shows them; None before it exists."""
    return next((statefulset_replicas(statefulset) for statefulset in worker_sets), None)


def fleet_pod(body: Mapping[str, Any]) -> FleetPod:
    """A worker or router pod as the BaseModel status reads it (a worker's copy of the base model is
    added by the caller, which knows the init container's name)."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions", []) or []}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    deleting = bool(body["metadata"].get("deletionTimestamp"))
    return FleetPod(
        name=body["metadata"]["name"],
        ready=conditions.get("Ready", {}).get("status") == "True",
        unschedulable_message=str(scheduled.get("message", "")) if unschedulable else None,
        trouble=None if deleting else container_trouble(status),  # a killed container is no crash
        uid=str(body["metadata"].get("uid", "")),
        setting_up_since=None if deleting else setting_up_since(status),
    )


# The kubelet's waiting reasons while it prepares a pod (volumes, sandbox, image pulls).
SETTING_UP = frozenset({"ContainerCreating", "PodInitializing"})


def setting_up_since(pod_status: Mapping[str, Any]) -> str | None:
    """When the pod was scheduled, while the kubelet has started none of its containers yet: the
    time a pod whose volume will not mount stays in (it shows only `ContainerCreating`)."""
    conditions = pod_status.get("conditions") or []
    scheduled: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
    if scheduled.get("status") != "True":
        return None
    containers = (
        *(pod_status.get("initContainerStatuses") or []),
        *(pod_status.get("containerStatuses") or []),
    )
    waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in containers]
    if not all(reason in SETTING_UP for reason in waiting):
        return None
    return str(scheduled.get("lastTransitionTime") or "") or None


# The kubelet's Warning Events of a volume it cannot mount or attach for a pod.
VOLUME_EVENT_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})


def volume_trouble(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The latest of a pod's Events that says a volume will not mount or attach (reason: message)."""
    found = [e for e in events if e.get("reason") in VOLUME_EVENT_REASONS]
    if not found:
        return None
    latest = max(found, key=_event_time)
    lines = [line.strip() for line in str(latest.get("message") or "").splitlines() if line.strip()]
    return f"{latest['reason']}: {lines[0] if lines else ''}"[:MESSAGE_CHARS]


def _event_time(event: Mapping[str, Any]) -> str:
    """When an Event last happened, as RFC 3339 (which sorts as text), by what its writer filled in."""
    series = event.get("series") or {}
    return str(
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def container_trouble(pod_status: Mapping[str, Any]) -> ContainerTrouble | None:
    """The first of a pod's containers (init containers first) that the kubelet holds in a state a user
    has to act on: a crash loop, an image it cannot pull, a spec it cannot create."""
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for container in pod_status.get(key) or []:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            crashing = _crashing(container, state)
            reason = CRASH_LOOP if crashing else waiting.get("reason")
            if reason == CRASH_LOOP and not crashing:
                continue  # backing off after a long run: starting again, not a loop
            if reason in TROUBLE_REASONS:
                return ContainerTrouble(
                    container=str(container.get("name", "")),
                    waiting_reason=str(reason),
                    message=_trouble_detail(container, str(reason), waiting),
                    restarts=int(container.get("restartCount") or 0),
                    init=init,
                )
    return None


def _crashing(container: Mapping[str, Any], state: Mapping[str, Any]) -> bool:
    """Whether a container is in a crash loop whatever the kubelet's last word: one that exited with an
    error (shown terminated for most of the back-off before `CrashLoopBackOff` is written; worker pods
    restart every container), one backing off, or one trying again, not ready yet, after such an exit.
    So a fleet stuck in a loop keeps one reason through its tries (fleet_status counts the restarts)
    instead of flipping between stuck and starting. A run that lasted LOOP_RESET_SECONDS before it
    failed is no loop (the kubelet resets its back-off then): restarts add up over a pod's life, and a
    worker that fails now and then after serving for hours is starting again, not stuck."""
    terminated = state.get("terminated") or {}
    if terminated.get("exitCode", 0) != 0:
        return _brief(terminated)
    last = (container.get("lastState") or {}).get("terminated") or {}
    backing_off = (state.get("waiting") or {}).get("reason") == CRASH_LOOP
    retrying = "running" in state and not container.get("ready") and last.get("exitCode", 0) != 0
    return (backing_off or retrying) and _brief(last)


# The kubelet resets a container's restart back-off once it ran this long.
LOOP_RESET_SECONDS = 600.0


def _brief(run: Mapping[str, Any]) -> bool:
    """Whether a container's run failed within LOOP_RESET_SECONDS of its start (brief if unknown)."""
    started, finished = parse_time(run.get("startedAt")), parse_time(run.get("finishedAt"))
    return started is None or finished is None or (finished - started).total_seconds() < LOOP_RESET_SECONDS


def _trouble_detail(container: Mapping[str, Any], reason: str, waiting: Mapping[str, Any]) -> str:
    """For a crash: how the container last exited and the last line it wrote (the worker containers'
    termination message falls back to their log's tail); else the kubelet's waiting message."""
    state = container.get("state") or {}
    last = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
    if reason != CRASH_LOOP or not last:
        return str(waiting.get("message") or reason)
    exited = f"exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})"
    lines = [line.strip() for line in str(last.get("message") or "").splitlines() if line.strip()]
    return f"{exited}: {lines[-1][:MESSAGE_CHARS]}" if lines else exited


def init_running_since(pod_status: Mapping[str, Any], name: str) -> str | None:
    """When the pod's init container `name` started, while it runs; None otherwise."""
    for container in pod_status.get("initContainerStatuses") or []:
        running = (container.get("state") or {}).get("running")
        if container.get("name") == name and running is not None:
            return str(running.get("startedAt") or "")
    return None


def slots_used(statuses: Iterable[WorkerPlacementStatus]) -> tuple[int, int]:
    """(GPU, CPU) slots in use over the workers, as their agents report them in WorkerPlacement status."""
    tiers = [a.tier for status in statuses for a in status.adapters]
    return tiers.count(Tier.GPU), tiers.count(Tier.CPU)


def requests_reported(statuses: Iterable[WorkerPlacementStatus]) -> float | None:
    """The requests the workers' agents report running or waiting, summed; None when none reports."""
    loads = [status.requests for status in statuses if status.requests is not None]
    return round(sum(loads), 1) if loads else None


def fleet_observation(
    statefulset: Mapping[str, Any] | None,
    pods: Iterable[FleetPod],
    placements: Iterable[Mapping[str, Any]] = (),
    router_pods: Iterable[FleetPod] = (),
) -> FleetObservation:
    statuses = [read_status(p.get("status")) for p in placements]  # parsed once: thousands of entries each
    gpu_used, cpu_used = slots_used(statuses)
    requests = requests_reported(statuses)
    routers = tuple(sorted(router_pods, key=lambda p: p.name))
    if statefulset is None:
        return FleetObservation(
            pods=tuple(pods), router_pods=routers, gpu_used=gpu_used, cpu_used=cpu_used, requests=requests
        )
    status = statefulset.get("status", {}) or {}
    return FleetObservation(
        router_pods=routers,
        gpu_used=gpu_used,
        cpu_used=cpu_used,
        requests=requests,
        statefulset_found=True,
        replicas=statefulset_replicas(statefulset),
        observed_generation=int(status.get("observedGeneration", 0)),
        generation=int(statefulset["metadata"].get("generation", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        current_revision=status.get("currentRevision"),
        update_revision=status.get("updateRevision"),
        applied_hash=(statefulset["metadata"].get("annotations") or {}).get(HASH_ANNOTATION),
        pods=tuple(sorted(pods, key=lambda p: p.name)),
    )

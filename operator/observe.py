"""Turns raw StatefulSet and Pod bodies into the plain observations the status planner reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.api.labels import HASH_ANNOTATION
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import read_status
from loraplex.operator.fleet_status import (
    CRASH_LOOP,
    TROUBLE_REASONS,
    ContainerTrouble,
    FleetObservation,
    FleetPod,
)

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
    )


def container_trouble(pod_status: Mapping[str, Any]) -> ContainerTrouble | None:
    """The first of a pod's containers (init containers first) that the kubelet holds in a state a user
    has to act on: a crash loop, an image it cannot pull, a spec it cannot create."""
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for container in pod_status.get(key) or []:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = CRASH_LOOP if _crashing(container, state) else waiting.get("reason")
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
    restart every container), or one trying again, not ready yet, after such an exit. So a fleet stuck
    in a loop keeps one reason through its tries (fleet_status counts the restarts) instead of
    flipping between stuck and starting."""
    if (state.get("terminated") or {}).get("exitCode", 0) != 0:
        return True
    last = (container.get("lastState") or {}).get("terminated") or {}
    return "running" in state and not container.get("ready") and last.get("exitCode", 0) != 0


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


def slots_used(placements: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(GPU, CPU) slots in use over the workers, as their agents report them in WorkerPlacement status."""
    tiers = [a.tier for p in placements for a in read_status(p.get("status")).adapters]
    return tiers.count(Tier.GPU), tiers.count(Tier.CPU)


def fleet_observation(
    statefulset: Mapping[str, Any] | None,
    pods: Iterable[FleetPod],
    placements: Iterable[Mapping[str, Any]] = (),
    router_pods: Iterable[FleetPod] = (),
) -> FleetObservation:
    gpu_used, cpu_used = slots_used(placements)
    routers = tuple(sorted(router_pods, key=lambda p: p.name))
    if statefulset is None:
        return FleetObservation(pods=tuple(pods), router_pods=routers, gpu_used=gpu_used, cpu_used=cpu_used)
    status = statefulset.get("status", {}) or {}
    return FleetObservation(
        router_pods=routers,
        gpu_used=gpu_used,
        cpu_used=cpu_used,
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

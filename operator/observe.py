"""Turns raw StatefulSet and Pod bodies into the plain observations the status planner reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.api.labels import HASH_ANNOTATION
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import read_status
from loraplex.operator.fleet_status import FleetObservation, WorkerPod

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


def worker_pod(body: Mapping[str, Any]) -> WorkerPod:
    conditions = {c.get("type"): c for c in body.get("status", {}).get("conditions", []) or []}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    return WorkerPod(
        name=body["metadata"]["name"],
        ready=conditions.get("Ready", {}).get("status") == "True",
        unschedulable_message=str(scheduled.get("message", "")) if unschedulable else None,
    )


def slots_used(placements: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(GPU, CPU) slots in use over the workers, as their agents report them in WorkerPlacement status."""
    tiers = [a.tier for p in placements for a in read_status(p.get("status")).adapters]
    return tiers.count(Tier.GPU), tiers.count(Tier.CPU)


def fleet_observation(
    statefulset: Mapping[str, Any] | None,
    pods: Iterable[WorkerPod],
    placements: Iterable[Mapping[str, Any]] = (),
) -> FleetObservation:
    gpu_used, cpu_used = slots_used(placements)
    if statefulset is None:
        return FleetObservation(pods=tuple(pods), gpu_used=gpu_used, cpu_used=cpu_used)
    status = statefulset.get("status", {}) or {}
    return FleetObservation(
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

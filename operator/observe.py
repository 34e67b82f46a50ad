"""Turns raw StatefulSet and Pod bodies into the plain observations the status planner reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.operator.fleet_status import FleetObservation, WorkerPod


def worker_pod(body: Mapping[str, Any]) -> WorkerPod:
    conditions = {c.get("type"): c for c in body.get("status", {}).get("conditions", []) or []}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    return WorkerPod(
        name=body["metadata"]["name"],
        ready=conditions.get("Ready", {}).get("status") == "True",
        unschedulable_message=str(scheduled.get("message", "")) if unschedulable else None,
    )


def fleet_observation(statefulset: Mapping[str, Any] | None, pods: Iterable[WorkerPod]) -> FleetObservation:
    if statefulset is None:
        return FleetObservation(pods=tuple(pods))
    status = statefulset.get("status", {}) or {}
    return FleetObservation(
        statefulset_found=True,
        observed_generation=int(status.get("observedGeneration", 0)),
        generation=int(statefulset["metadata"].get("generation", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        current_revision=status.get("currentRevision"),
        update_revision=status.get("updateRevision"),
        pods=tuple(sorted(pods, key=lambda p: p.name)),
    )

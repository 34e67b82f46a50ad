"""Training admission: which queued TrainingJobs start now, and on which node.

Pure and deterministic (no API client, no clock): the caller hands in the
nodes, the GPUs each node's pods hold, the serving workers that are desired
but not scheduled yet, and the queue; it gets back a node per admitted job.

The rules:

- A node's free GPUs are its allocatable GPUs minus what every non-trainer pod
  on it requests (serving workers and anything else), minus what admitted
  trainers hold, minus what serving's not-yet-scheduled workers are reserved.
- Serving first: each desired-but-unscheduled worker of a BaseModel reserves
  GPUs on a node before any job is admitted. It takes the node with the most
  free GPUs that fits it (the scheduler spreads workers too); if none has room
  it is reserved where the GPUs held by trainers would make room (the
  scheduler preempts them), and where not even that fits, nothing is reserved:
  no node could host it anyway.
- Jobs go by priority (higher first), then age (creationTimestamp, then
  name). A job takes the node that fits it most tightly (best fit; ties by
  node name). A job that fits nowhere blocks every lower job from the nodes
  where it could ever run (where serving alone leaves room for it): lower jobs
  may backfill only nodes the waiting job could never use, so they never take
  capacity it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

Gpus = Mapping[str, int]  # resource name (nvidia.com/gpu) -> count


@dataclass(frozen=True)
class Node:
    """A schedulable node: its GPUs and labels."""

    name: str
    allocatable: Gpus
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingDemand:
    """A BaseModel's desired workers that no node runs yet."""

    name: str  # namespace/name
    resource: str
    gpus_per_worker: int
    unscheduled: int
    node_selector: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueuedJob:
    """A TrainingJob waiting for GPUs."""

    key: str  # namespace/name
    priority: int
    created: datetime
    resource: str
    gpus: int
    node_selector: Mapping[str, str] = field(default_factory=dict)

    def rank(self) -> tuple[int, datetime, str]:
        return (-self.priority, self.created, self.key)


@dataclass(frozen=True)
class Cluster:
    """What the planner sees: nodes, the GPUs already held on them, serving's unscheduled workers."""

    nodes: Sequence[Node]
    serving_used: Mapping[str, Gpus]  # node -> GPUs non-trainer pods request
    trainer_used: Mapping[str, Gpus]  # node -> GPUs admitted trainers hold
    serving: Sequence[ServingDemand] = ()


@dataclass(frozen=True)
class AdmissionPlan:
    admitted: Mapping[str, str]  # job key -> node
    waiting: tuple[str, ...]  # job keys, in queue order
    reserved: Mapping[str, Mapping[str, int]]  # node -> resource -> GPUs held back for serving
    free: Mapping[str, Mapping[str, int]]  # node -> resource -> GPUs free before admission


def _matches(node: Node, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def serving_free(cluster: Cluster) -> dict[str, dict[str, int]]:
    """GPUs per node that serving (and other non-trainer pods) leaves: trainers ignored."""
    return {
        node.name: {
            resource: count - cluster.serving_used.get(node.name, {}).get(resource, 0)
            for resource, count in node.allocatable.items()
        }
        for node in cluster.nodes
    }


def reserve_for_serving(
    cluster: Cluster, free: dict[str, dict[str, int]], room: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Hold back GPUs for each unscheduled serving worker; takes them out of `free` and `room`."""
    reserved: dict[str, dict[str, int]] = {}
    nodes = sorted(cluster.nodes, key=lambda n: n.name)
    for demand in sorted(cluster.serving, key=lambda d: d.name):
        size, resource = demand.gpus_per_worker, demand.resource
        if size <= 0:
            continue
        eligible = [n.name for n in nodes if resource in n.allocatable and _matches(n, demand.node_selector)]
        for _ in range(demand.unscheduled):
            fits = [n for n in eligible if free[n][resource] >= size]
            if not fits:  # the scheduler will preempt trainers where that makes room
                fits = [n for n in eligible if room[n][resource] >= size]
            if not fits:
                break  # no node can host this worker: nothing to keep free for it
            node = min(fits, key=lambda n: (-free[n][resource], -room[n][resource], n))
            free[node][resource] -= size
            room[node][resource] -= size
            held = reserved.setdefault(node, {})
            held[resource] = held.get(resource, 0) + size
    return reserved


def plan_admission(cluster: Cluster, queue: Sequence[QueuedJob]) -> AdmissionPlan:
    """Admit queued jobs into what serving leaves free (see the module docstring for the rules)."""
    room = serving_free(cluster)
    free = {
        name: {r: count - cluster.trainer_used.get(name, {}).get(r, 0) for r, count in per_node.items()}
        for name, per_node in room.items()
    }
    reserved = reserve_for_serving(cluster, free, room)
    before = {name: dict(per_node) for name, per_node in free.items()}
    blocked: set[str] = set()  # nodes a waiting higher job could use
    admitted: dict[str, str] = {}
    waiting: list[str] = []
    nodes = sorted(cluster.nodes, key=lambda n: n.name)
    for job in sorted(queue, key=QueuedJob.rank):
        eligible = [
            n
            for n in nodes
            if job.resource in n.allocatable
            and _matches(n, job.node_selector)
            and job.gpus <= _room(room, n, job)
        ]
        fits = [n for n in eligible if n.name not in blocked and free[n.name][job.resource] >= job.gpus]
        if not fits:
            waiting.append(job.key)
            blocked.update(n.name for n in eligible)
            continue
        node = min(fits, key=lambda n: (free[n.name][job.resource] - job.gpus, n.name))
        free[node.name][job.resource] -= job.gpus
        admitted[job.key] = node.name
    return AdmissionPlan(admitted, tuple(waiting), reserved, before)


def _room(room: Mapping[str, Mapping[str, int]], node: Node, job: QueuedJob) -> int:
    """GPUs of `job`'s kind this node could ever give a trainer: what serving leaves."""
    return room[node.name].get(job.resource, 0)

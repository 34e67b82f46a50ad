"""The GPU picture training admission plans over, from what the operator's indexes hold.

Nodes and their GPUs, what non-trainer pods hold on each, what running
trainers hold, and what serving still needs: each BaseModel's desired workers
that are not scheduled yet, at the worker count its placement loop decided.

Pure: the caller passes index entries (mappings and lists), never a client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet_scale import FleetTargets, workers_to_run
from loraplex.operator.observe import running_workers
from loraplex.operator.training_admission import Cluster, Node, ServingDemand


def serving_demands(
    base_models: Mapping[tuple[str, str], Iterable[tuple[str, dict[str, Any]]]],
    pods: Mapping[Any, Iterable[Any]],
    worker_sets: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    targets: FleetTargets,
) -> list[ServingDemand]:
    """The GPUs each BaseModel's desired but unscheduled workers still need, from the indexes.

    The desired count is the placement loop's decision; before its first pass (a fresh operator)
    the worker StatefulSet's replicas, as for the fleet handler, rather than replicas.min.
    """
    serving = []
    for (namespace, name), entries in sorted(base_models.items()):
        for _, base_spec in entries:
            try:
                base = BaseModelSpec.model_validate(base_spec)
            except ValidationError:
                continue
            key = (namespace, name)
            scheduled = sum(1 for held in pods.get(("workers", *key), []) if held)
            desired = workers_to_run(base, targets.get(key), running_workers(list(worker_sets.get(key, []))))
            serving.append(
                ServingDemand(
                    f"{namespace}/{name}",
                    base.resources.gpu_resource_name,
                    base.resources.gpu,
                    max(desired - scheduled, 0),
                    dict(base.node_selector),
                )
            )
    return serving


def cluster(
    nodes: Sequence[Node],
    held: Mapping[str, Iterable[Mapping[str, int]]],
    trainers: Mapping[str, Mapping[str, int]],
    serving: Sequence[ServingDemand],
) -> Cluster:
    """What admission sees. `held`: node -> the GPUs each unfinished non-trainer pod there holds;
    `trainers`: node -> the GPUs running trainers hold there."""
    serving_used: dict[str, dict[str, int]] = {}
    for node in nodes:
        total: dict[str, int] = {}
        for gpus in held.get(node.name, []):
            for resource, count in gpus.items():
                total[resource] = total.get(resource, 0) + count
        serving_used[node.name] = total
    return Cluster(nodes, serving_used, trainers, serving)

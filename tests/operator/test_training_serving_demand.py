"""What serving still needs, as the training pass reads it from the operator's indexes."""

from __future__ import annotations

from typing import Any

from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.training_capacity import serving_demands

BASE = {"model": {"uri": "/m"}, "replicas": {"min": 1, "max": 4}, "resources": {"gpu": 2}}
KEY = ("team", "llama")


def statefulset(replicas: int) -> dict[Any, list[dict[str, Any]]]:
    return {KEY: [{"spec": {"replicas": replicas}}]}


def demand(
    pods: dict[Any, list[bool]], targets: FleetTargets, worker_sets: dict[Any, list[dict[str, Any]]]
) -> int:
    (only,) = serving_demands({KEY: [("uid", BASE)]}, pods, worker_sets, targets)
    assert only.name == "team/llama"
    assert only.gpus_per_worker == 2
    return only.unscheduled


def test_the_placement_loops_decision_sets_the_workers_serving_needs() -> None:
    targets = FleetTargets()
    targets.set(KEY, 4)
    assert demand({("workers", *KEY): [True, True, False]}, targets, statefulset(3)) == 2


def test_before_the_first_placement_pass_the_statefulset_counts_not_replicas_min() -> None:
    # The StatefulSet runs 3 workers, one not yet scheduled: that worker's GPUs stay reserved
    # although replicas.min is 1.
    assert demand({("workers", *KEY): [True, True, False]}, FleetTargets(), statefulset(3)) == 1
    assert demand({}, FleetTargets(), {}) == 1  # no StatefulSet yet: replicas.min


def test_a_base_model_that_does_not_validate_is_left_out() -> None:
    assert serving_demands({KEY: [("uid", {"model": {}})]}, {}, {}, FleetTargets()) == []

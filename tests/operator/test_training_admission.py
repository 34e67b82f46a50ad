"""The training admission planner: examples, then properties on random small clusters with hypothesis.

Invariants: (1) no node is given more GPUs than it has free; (2) serving's unscheduled workers keep
the GPUs reserved for them, and every such worker that fits somewhere is reserved; (3) a waiting job
is never passed over by a lower-ranked job on a node it could use; (4) the plan does not depend on
the order of the inputs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from loraplex.operator.training_admission import (
    Cluster,
    Node,
    QueuedJob,
    ServingDemand,
    plan_admission,
    serving_free,
)

GPU = "nvidia.com/gpu"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(key: str, gpus: int = 1, priority: int = 0, age: int = 0) -> QueuedJob:
    return QueuedJob(key, priority, T0 + timedelta(seconds=age), GPU, gpus)


def nodes(*free: int) -> list[Node]:
    return [Node(f"n{i}", {GPU: count}) for i, count in enumerate(free)]


def test_jobs_take_only_what_serving_pods_leave() -> None:
    cluster = Cluster(nodes(8, 8), serving_used={"n0": {GPU: 7}, "n1": {GPU: 8}}, trainer_used={})
    plan = plan_admission(cluster, [job("a", 2), job("b", 1, age=1)])
    assert plan.admitted == {"b": "n0"}
    assert plan.waiting == ("a",)


def test_unscheduled_serving_workers_keep_their_gpus() -> None:
    serving = [ServingDemand("ns/llama", GPU, 4, unscheduled=1)]
    cluster = Cluster(nodes(4), serving_used={}, trainer_used={}, serving=serving)
    plan = plan_admission(cluster, [job("a", 1)])
    assert plan.admitted == {}
    assert plan.reserved == {"n0": {GPU: 4}}


def test_a_worker_that_needs_preemption_is_reserved_where_trainers_hold_the_gpus() -> None:
    serving = [ServingDemand("ns/llama", GPU, 8, unscheduled=1)]
    cluster = Cluster(nodes(8, 8), {"n1": {GPU: 4}}, trainer_used={"n0": {GPU: 8}}, serving=serving)
    plan = plan_admission(cluster, [job("a", 4)])
    assert plan.reserved == {"n0": {GPU: 8}}
    assert plan.admitted == {"a": "n1"}


def test_priority_then_age_then_name() -> None:
    cluster = Cluster(nodes(2), {}, {})
    queue = [job("old", 2, age=0), job("urgent", 2, priority=5, age=9), job("new", 2, age=5)]
    assert plan_admission(cluster, queue).admitted == {"urgent": "n0"}
    assert plan_admission(cluster, queue).waiting == ("old", "new")


def test_best_fit_leaves_the_big_holes_for_big_jobs() -> None:
    cluster = Cluster(nodes(8, 2), {}, {})
    assert plan_admission(cluster, [job("small", 2, priority=1), job("big", 8)]).admitted == {
        "small": "n1",
        "big": "n0",
    }


def test_a_waiting_job_blocks_lower_ones_from_nodes_it_could_use() -> None:
    # "big" waits for n0's trainer to finish; "small" must not take the GPUs big is waiting for.
    cluster = Cluster(nodes(8, 8), {"n1": {GPU: 7}}, trainer_used={"n0": {GPU: 4}})
    plan = plan_admission(cluster, [job("big", 8, priority=1), job("small", 1)])
    assert plan.waiting == ("big",)
    assert plan.admitted == {"small": "n1"}  # backfills a node big could never use


def test_a_job_too_big_for_any_node_blocks_nothing() -> None:
    cluster = Cluster(nodes(8), {}, {})
    assert plan_admission(cluster, [job("huge", 16, priority=9), job("small", 1)]).admitted == {"small": "n0"}


def test_node_selectors_are_respected() -> None:
    cluster = Cluster([Node("a", {GPU: 8}, {"pool": "x"}), Node("b", {GPU: 8}, {"pool": "y"})], {}, {})
    queued = QueuedJob("j", 0, T0, GPU, 1, {"pool": "y"})
    assert plan_admission(cluster, [queued]).admitted == {"j": "b"}


# -- properties ------------------------------------------------------------------------------

NODE_NAMES = [f"n{i}" for i in range(5)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Cluster, list[QueuedJob]]:
    names = draw(st.lists(st.sampled_from(NODE_NAMES), min_size=1, max_size=5, unique=True))
    node_list = [
        Node(name, {GPU: draw(st.integers(0, 8))}, {"pool": draw(st.sampled_from(["x", "y"]))})
        for name in names
    ]
    serving_used: dict[str, dict[str, int]] = {}
    trainer_used: dict[str, dict[str, int]] = {}
    for node in node_list:
        total = node.allocatable[GPU]
        serving = draw(st.integers(0, total))
        serving_used[node.name] = {GPU: serving}
        trainer_used[node.name] = {GPU: draw(st.integers(0, total - serving))}
    demands = [
        ServingDemand(
            f"ns/bm{i}",
            GPU,
            draw(st.integers(1, 4)),
            draw(st.integers(0, 3)),
            draw(st.sampled_from([{}, {"pool": "x"}])),
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    queue = [
        QueuedJob(
            f"ns/j{i}",
            draw(st.integers(-2, 2)),
            T0 + timedelta(seconds=draw(st.integers(0, 5))),
            GPU,
            draw(st.integers(0, 9)),
            draw(st.sampled_from([{}, {"pool": "y"}])),
        )
        for i in range(draw(st.integers(0, 8)))
    ]
    return Cluster(node_list, serving_used, trainer_used, demands), queue


def _used_by_admitted(plan_admitted: dict[str, str], queue: list[QueuedJob]) -> dict[str, int]:
    by_key = {j.key: j for j in queue}
    used: dict[str, int] = {}
    for key, node in plan_admitted.items():
        used[node] = used.get(node, 0) + by_key[key].gpus
    return used


@given(clusters())
def test_no_node_is_given_more_than_it_has_free(case: tuple[Cluster, list[QueuedJob]]) -> None:
    cluster, queue = case
    plan = plan_admission(cluster, queue)
    used = _used_by_admitted(dict(plan.admitted), queue)
    for node in cluster.nodes:
        taken = (
            cluster.serving_used[node.name][GPU]
            + cluster.trainer_used[node.name][GPU]
            + plan.reserved.get(node.name, {}).get(GPU, 0)
            + used.get(node.name, 0)
        )
        if used.get(node.name):
            assert taken <= node.allocatable[GPU]


@given(clusters())
def test_every_serving_worker_that_fits_is_reserved_and_kept(case: tuple[Cluster, list[QueuedJob]]) -> None:
    cluster, queue = case
    plan = plan_admission(cluster, queue)
    room = serving_free(cluster)
    reserved_total = sum(r.get(GPU, 0) for r in plan.reserved.values())
    # Each reservation fits in what serving leaves on its node (trainers may have to go).
    for name, held in plan.reserved.items():
        assert held[GPU] <= room[name][GPU]
    # A worker left unreserved fits on no node's leftover room.
    spare = {name: room[name][GPU] - plan.reserved.get(name, {}).get(GPU, 0) for name in room}
    by_name = {n.name: n for n in cluster.nodes}
    wanted = sum(d.gpus_per_worker * d.unscheduled for d in cluster.serving)
    if reserved_total < wanted:
        for demand in cluster.serving:
            fitting = [
                n
                for n, left in spare.items()
                if left >= demand.gpus_per_worker
                and all(by_name[n].labels.get(k) == v for k, v in demand.node_selector.items())
            ]
            reserved_for_demand = demand.gpus_per_worker * demand.unscheduled
            assert not fitting or reserved_for_demand <= reserved_total
    # Admitted jobs never sit in reserved GPUs.
    used = _used_by_admitted(dict(plan.admitted), queue)
    for name, count in used.items():
        if count:
            free_after_reserve = plan.free[name][GPU]
            assert count <= free_after_reserve


@given(clusters())
def test_a_waiting_job_is_never_passed_over_on_a_node_it_could_use(
    case: tuple[Cluster, list[QueuedJob]],
) -> None:
    cluster, queue = case
    plan = plan_admission(cluster, queue)
    by_key = {j.key: j for j in queue}
    room = serving_free(cluster)
    by_name = {n.name: n for n in cluster.nodes}
    for waiting_key in plan.waiting:
        waiting = by_key[waiting_key]
        for admitted_key, node in plan.admitted.items():
            admitted = by_key[admitted_key]
            if admitted.rank() < waiting.rank():
                continue
            usable = (
                all(by_name[node].labels.get(k) == v for k, v in waiting.node_selector.items())
                and room[node][GPU] - plan.reserved.get(node, {}).get(GPU, 0) >= waiting.gpus
            )
            assert not usable, f"{admitted_key} took {node}, which waiting {waiting_key} could use"


@given(clusters(), st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_input_order(case: tuple[Cluster, list[QueuedJob]], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    cluster, queue = case
    shuffled_nodes, shuffled_queue = list(cluster.nodes), list(queue)
    rnd.shuffle(shuffled_nodes)
    rnd.shuffle(shuffled_queue)
    other = Cluster(
        shuffled_nodes, cluster.serving_used, cluster.trainer_used, list(reversed(cluster.serving))
    )
    assert plan_admission(cluster, queue) == plan_admission(other, shuffled_queue)

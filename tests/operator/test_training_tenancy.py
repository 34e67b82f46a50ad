"""Which warm trainer a shared TrainingJob joins, and when a new one starts: properties over random fleets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.operator.training_tenancy import (
    Capacity,
    RunningTrainer,
    TenancyPlan,
    TrainerGroup,
    WaitingTenant,
    plan_tenancy,
    rank_class,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GROUPS = [TrainerGroup("team", "llama", 1), TrainerGroup("team", "llama", 2), TrainerGroup("team", "qwen", 1)]

groups = st.sampled_from(GROUPS)
capacities = st.builds(Capacity, st.integers(1, 8), st.integers(8, 128))
trainers = st.lists(
    st.builds(
        RunningTrainer,
        st.text("abcdef", min_size=1, max_size=4),
        groups,
        st.integers(0, 8),
        st.integers(0, 128),
        st.booleans(),
    ),
    max_size=6,
    unique_by=lambda t: t.name,
)
queues = st.lists(
    st.builds(
        WaitingTenant,
        st.text("ghijkl", min_size=1, max_size=4),
        groups,
        st.sampled_from([4, 8, 16, 32, 64, 200]),
        st.integers(-2, 2),
        st.integers(0, 50).map(lambda m: T0 + timedelta(minutes=m)),
    ),
    max_size=20,
    unique_by=lambda j: j.key,
)


def _placed(plan: TenancyPlan) -> list[str]:
    return [*plan.joins, *(key for trainer in plan.new for key in trainer.tenants)]


@settings(max_examples=300, deadline=None)
@given(trainers, queues, capacities)
def test_every_waiting_job_is_placed_exactly_once_in_its_own_group(
    running: list[RunningTrainer], queue: list[WaitingTenant], capacity: Capacity
) -> None:
    plan = plan_tenancy(running, queue, capacity)
    assert sorted(_placed(plan)) == sorted(job.key for job in queue)
    by_key = {job.key: job for job in queue}
    by_name = {t.name: t for t in running}
    for key, trainer in plan.joins.items():
        assert by_name[trainer].accepting
        assert by_name[trainer].group == by_key[key].group
    for new in plan.new:
        assert {by_key[key].group for key in new.tenants} == {new.group}


@settings(max_examples=300, deadline=None)
@given(trainers, queues, capacities)
def test_no_trainer_takes_more_than_its_capacity(
    running: list[RunningTrainer], queue: list[WaitingTenant], capacity: Capacity
) -> None:
    plan = plan_tenancy(running, queue, capacity)
    rank = {job.key: job.rank for job in queue}
    for trainer in running:
        joined = [key for key, name in plan.joins.items() if name == trainer.name]
        if joined:  # what it held may already be over (a setting lowered); joins never push it over
            assert trainer.tenants + len(joined) <= max(capacity.max_tenants, 1)
            total = trainer.ranks + sum(rank[k] for k in joined)
            assert (trainer.tenants == 0 and len(joined) == 1) or total <= capacity.max_rank_sum
    for new in plan.new:
        assert len(new.tenants) <= capacity.max_tenants
        ranks = sum(rank[k] for k in new.tenants)
        assert len(new.tenants) == 1 or ranks <= capacity.max_rank_sum  # an over-sized job alone


@settings(max_examples=300, deadline=None)
@given(trainers, queues, capacities)
def test_a_new_trainer_starts_only_for_jobs_no_running_trainer_has_room_for(
    running: list[RunningTrainer], queue: list[WaitingTenant], capacity: Capacity
) -> None:
    plan = plan_tenancy(running, queue, capacity)
    rank = {job.key: job.rank for job in queue}
    load = {t.name: [t.tenants, t.ranks] for t in running}
    for key, name in plan.joins.items():
        load[name][0] += 1
        load[name][1] += rank[key]
    for new in plan.new:
        for key in new.tenants:
            room = [
                t.name
                for t in running
                if t.accepting and t.group == new.group and capacity.fits(*load[t.name], rank[key])
            ]
            assert room == []  # loads only grow: room now would have been room then


@settings(max_examples=300, deadline=None)
@given(trainers, queues, capacities)
def test_higher_priority_then_older_jobs_go_first(
    running: list[RunningTrainer], queue: list[WaitingTenant], capacity: Capacity
) -> None:
    plan = plan_tenancy(running, queue, capacity)
    waiting = {key for new in plan.new for key in new.tenants}
    ordered = sorted(queue, key=WaitingTenant.order)
    for i, first in enumerate(ordered):
        for later in ordered[i + 1 :]:
            # A later job of the group joined a running trainer while an earlier one waits for a new
            # trainer only if the later one is smaller (it fit where the earlier one did not).
            if first.key in waiting and later.key in plan.joins and later.group == first.group:
                assert later.rank < first.rank
    firsts = [(-new.priority, new.created) for new in plan.new]
    assert firsts == sorted(firsts)  # admission sees new trainers in queue order


def test_jobs_pack_into_the_fullest_trainer_and_overflow_into_new_ones() -> None:
    group = GROUPS[0]
    running = [RunningTrainer("w1", group, 6, 48), RunningTrainer("w2", group, 2, 16)]
    queue = [WaitingTenant(f"team/j{i}", group, 8, 0, T0 + timedelta(minutes=i)) for i in range(12)]
    plan = plan_tenancy(running, queue, Capacity(max_tenants=8, max_rank_sum=256))
    assert [plan.joins[f"team/j{i}"] for i in range(8)] == ["w1", "w1", *["w2"] * 6]
    assert [new.tenants for new in plan.new] == [("team/j8", "team/j9", "team/j10", "team/j11")]


def test_rank_classes_keep_small_adapters_apart_from_large_ones() -> None:
    assert [rank_class(r) for r in (1, 16, 17, 64, 65, 512)] == [16, 16, 64, 64, 0, 0]

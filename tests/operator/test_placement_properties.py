"""Properties of the adapter placement planner, checked on random small fleets with hypothesis.

Invariants stated here: (1) no worker tier is ever over capacity and unhealthy workers hold nothing;
(2) replicas are met when capacity allows; (5) re-planning a plan's own output moves nothing; (6) losing a
worker moves only the copies that lived there (besides GPU slots they win from colder copies); (7) a changed
adapter left waiting for a slot has no copy of lower priority holding one it could take; (8) a fresh plan
leaves no copy in a slower tier while a faster slot it could take is free; (9) adopting a placement (an
operator restart) leaves no adapter short of a copy while a copy of lower standing holds a slot it could take;
(10) nor does a fresh plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.operator.placement import (
    Adapter,
    MoveKind,
    PlacementView,
    Planner,
    Tier,
    Worker,
    moved_copies,
    plan,
)

WORKER_NAMES = [f"w{i}" for i in range(7)]


@st.composite
def workers_strategy(draw: st.DrawFn, *, min_size: int = 1, all_healthy: bool = False) -> list[Worker]:
    names = draw(st.lists(st.sampled_from(WORKER_NAMES), min_size=min_size, max_size=7, unique=True))
    return [
        Worker(
            name=name,
            node=draw(st.sampled_from(["n0", "n1", "n2", "n3"])),
            zone=draw(st.sampled_from(["z0", "z1", "z2"])),
            gpu_slots=draw(st.integers(0, 3)),
            cpu_slots=draw(st.integers(0, 3)),
            disk_slots=draw(st.integers(0, 6)),
            healthy=True if all_healthy else draw(st.booleans()),
        )
        for name in names
    ]


adapter_lists = st.lists(
    st.builds(
        Adapter,
        key=st.sampled_from([f"ns/a{i}" for i in range(24)]),
        replicas=st.integers(0, 3),
        priority=st.integers(0, 2),
        pinned=st.sampled_from([False, False, False, True]),
        warmth=st.integers(0, 4).map(float),
    ),
    max_size=24,
    unique_by=lambda adapter: adapter.key,
)

placements = st.dictionaries(
    st.sampled_from([f"ns/a{i}" for i in range(24)] + ["ns/gone"]),
    st.dictionaries(st.sampled_from([*WORKER_NAMES, "ghost"]), st.sampled_from(list(Tier)), max_size=3),
    max_size=24,
)


def assert_within_capacity(placement: PlacementView, workers: list[Worker]) -> None:
    used = Counter((worker, tier) for copies in placement.values() for worker, tier in copies.items())
    slots = {(w.name, tier): w.slots()[tier] for w in workers if w.healthy for tier in Tier}
    for cell, count in used.items():
        assert count <= slots.get(cell, 0), f"{cell} holds {count} copies"
    for copies in placement.values():
        assert copies, "an adapter with no copies stays out of the placement"


def capacity_allows(workers: list[Worker], adapters: list[Adapter]) -> bool:
    """Total slots cover every copy, with one worker's worth of slack per extra replica (for spreading)."""
    live = [w for w in workers if w.healthy]
    copies = sum(min(a.replicas, len(live)) for a in adapters)
    most_replicas = max((min(a.replicas, len(live)) for a in adapters), default=0)
    biggest_worker = max((sum(w.slots()) for w in live), default=0)
    return sum(sum(w.slots()) for w in live) >= copies + max(0, most_replicas - 1) * biggest_worker


@settings(max_examples=100, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists, current=placements)
def test_no_worker_tier_is_ever_over_capacity_and_unhealthy_workers_hold_nothing(
    workers: list[Worker], adapters: list[Adapter], current: dict[str, dict[str, Tier]]
) -> None:
    result = plan(workers, adapters, current)
    assert_within_capacity(result.placement, workers)
    live = {w.name for w in workers if w.healthy}
    for copies in result.placement.values():
        assert set(copies) <= live
    for adapter in adapters:
        held = len(result.placement.get(adapter.key, {}))
        assert held + result.missing.get(adapter.key, 0) == adapter.replicas


@settings(max_examples=100, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists)
def test_replicas_are_met_whenever_capacity_allows(workers: list[Worker], adapters: list[Adapter]) -> None:
    result = plan(workers, adapters)
    live = [w for w in workers if w.healthy]
    if capacity_allows(workers, adapters):
        for adapter in adapters:
            assert len(result.placement.get(adapter.key, {})) == min(adapter.replicas, len(live))
            assert result.missing.get(adapter.key, 0) == max(0, adapter.replicas - len(live))


@settings(max_examples=100, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists, current=placements)
def test_replanning_a_plans_own_output_moves_nothing(
    workers: list[Worker], adapters: list[Adapter], current: dict[str, dict[str, Tier]]
) -> None:
    first = plan(workers, adapters, current)
    again = plan(workers, adapters, first.placement)
    assert again.moves == []
    assert again.placement == first.placement


@settings(max_examples=300, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists)
def test_a_fresh_plan_leaves_no_copy_below_a_free_faster_slot_it_could_take(
    workers: list[Worker], adapters: list[Adapter]
) -> None:
    """Spread can push a copy to a slower tier; the GPU slot it leaves must not stay idle (a pinned
    adapter on Disk beside a free GPU slot was the case found)."""
    placement = plan(workers, adapters).placement
    used = Counter((worker, tier) for copies in placement.values() for worker, tier in copies.items())
    live = [w for w in workers if w.healthy]
    for key, copies in placement.items():
        for worker, tier in copies.items():
            for faster in Tier:
                if faster >= tier:
                    break
                takeable = [w for w in live if w.name == worker or w.name not in copies]
                free = [w.name for w in takeable if used[(w.name, faster)] < w.slots()[faster]]
                assert not free, f"{key} sits in {tier.name} on {worker}; {faster.name} free on {free}"


@settings(max_examples=100, deadline=None)
@given(workers=workers_strategy(min_size=2, all_healthy=True), adapters=adapter_lists, data=st.data())
def test_losing_a_worker_moves_only_the_copies_that_lived_there(
    workers: list[Worker], adapters: list[Adapter], data: st.DataObject
) -> None:
    planner = Planner(workers)
    planner.plan_all(adapters)
    before = {key: dict(copies) for key, copies in planner.placement.items()}
    lost = data.draw(st.sampled_from([w.name for w in workers]))
    moves = planner.worker_lost(lost)
    survivors = [w for w in workers if w.name != lost]
    assert_within_capacity(planner.placement, survivors)

    lived_there = Counter(key for key, copies in before.items() if lost in copies)
    adds = Counter(move.adapter for move in moves if move.kind is MoveKind.ADD)
    assert adds <= lived_there
    retiers = [move for move in moves if move.kind is MoveKind.RETIER]
    assert not [move for move in moves if move.kind is MoveKind.REMOVE]
    assert all(move.from_tier is Tier.GPU for move in retiers), "only GPU slots won by lost copies"
    assert len(retiers) <= sum(lived_there.values()), "each re-placed copy displaces at most one other"
    for key, copies in before.items():
        stayed = {worker for worker in copies if worker != lost}
        assert stayed <= set(planner.placement.get(key, {})), f"{key} lost a copy it did not have on {lost}"
    if capacity_allows(survivors, adapters):
        replicas = {a.key: a.replicas for a in adapters}
        assert adds == Counter({key: n for key, n in lived_there.items() if replicas[key] <= len(survivors)})


operations = st.lists(
    st.one_of(
        st.tuples(st.just("lose"), st.sampled_from(WORKER_NAMES)),
        st.tuples(st.just("add"), st.sampled_from(WORKER_NAMES)),
        st.tuples(st.just("change"), adapter_lists.filter(bool).map(lambda adapters: adapters[0])),
        st.tuples(st.just("remove"), st.sampled_from([f"ns/a{i}" for i in range(24)])),
        st.tuples(st.just("rebalance"), st.integers(0, 5)),
    ),
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(workers=workers_strategy(all_healthy=True), adapters=adapter_lists, steps=operations)
def test_incremental_changes_keep_capacity_and_copy_counts_consistent(
    workers: list[Worker], adapters: list[Adapter], steps: list[tuple[str, object]]
) -> None:
    planner = Planner(workers)
    planner.plan_all(adapters)
    fleet = {w.name: w for w in workers}
    wanted = {a.key: a.replicas for a in adapters}
    for kind, argument in steps:
        if kind == "lose" and isinstance(argument, str):
            planner.worker_lost(argument)
            fleet.pop(argument, None)
        elif kind == "add" and isinstance(argument, str) and argument not in fleet:
            fleet[argument] = Worker(argument, f"n-{argument}", "z1", 1, 1, 3)
            planner.worker_added(fleet[argument])
        elif kind == "change" and isinstance(argument, Adapter):
            planner.adapter_changed(argument)
            wanted[argument.key] = argument.replicas
        elif kind == "remove" and isinstance(argument, str):
            planner.adapter_removed(argument)
            wanted.pop(argument, None)
        elif kind == "rebalance" and isinstance(argument, int):
            assert moved_copies(planner.rebalance(argument)) <= argument
        assert_within_capacity(planner.placement, list(fleet.values()))
        for key, replicas in wanted.items():
            assert len(planner.placement.get(key, {})) + planner.missing.get(key, 0) == replicas


def assert_takes_no_lower_copys_slot(
    key: str, placement: PlacementView, adapters: Mapping[str, Adapter], workers: list[Worker]
) -> None:
    """`key`, short of a copy, has no unpinned copy of lower standing on a live worker it is not on."""
    standing = adapters[key].standing()
    for worker in workers:
        if not worker.healthy or worker.name in placement.get(key, {}):
            continue
        lower = [
            other
            for other, copies in placement.items()
            if worker.name in copies and not adapters[other].pinned and adapters[other].standing() < standing
        ]
        assert not lower, f"{key} waits while {lower} hold slots on {worker.name}"


@settings(max_examples=200, deadline=None)
@given(
    workers=workers_strategy(all_healthy=True),
    adapters=adapter_lists,
    changes=st.lists(adapter_lists.filter(bool).map(lambda adapters: adapters[0]), max_size=6),
)
def test_a_changed_adapter_never_waits_for_a_slot_a_copy_of_lower_priority_holds(
    workers: list[Worker], adapters: list[Adapter], changes: list[Adapter]
) -> None:
    planner = Planner(workers)
    planner.plan_all(adapters)
    latest = {adapter.key: adapter for adapter in adapters}
    for adapter in changes:
        planner.adapter_changed(adapter)
        latest[adapter.key] = adapter
        if adapter.key in planner.missing:
            assert_takes_no_lower_copys_slot(adapter.key, planner.placement, latest, workers)


@settings(max_examples=200, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists, current=placements)
def test_adopting_a_placement_keeps_capacity_and_copy_counts_and_adopting_again_moves_nothing(
    workers: list[Worker], adapters: list[Adapter], current: dict[str, dict[str, Tier]]
) -> None:
    adopted = Planner(workers).adopt(adapters, current)
    assert_within_capacity(adopted.placement, workers)
    live = {w.name for w in workers if w.healthy}
    for adapter in adapters:
        copies = adopted.placement.get(adapter.key, {})
        assert set(copies) <= live
        assert len(copies) + adopted.missing.get(adapter.key, 0) == adapter.replicas
    assert not set(adopted.placement) - {adapter.key for adapter in adapters}
    by_key = {adapter.key: adapter for adapter in adapters}
    for key in adopted.missing:
        assert_takes_no_lower_copys_slot(key, adopted.placement, by_key, workers)
    # A plan's copies stay (it may still lift a pinned copy or place one a plan left missing), bar copies
    # that give way to an adapter of higher standing the plan left short ...
    planned = plan(workers, adapters).placement
    first = Planner(workers).adopt(adapters, planned)
    gained = [
        by_key[key] for key, copies in first.placement.items() if len(copies) > len(planned.get(key, {}))
    ]
    for move in first.moves:
        if move.kind is MoveKind.REMOVE:
            assert any(by_key[move.adapter].standing() < adapter.standing() for adapter in gained), move
    # ... and a restart right after a restart moves nothing.
    again = Planner(workers).adopt(adapters, first.placement)
    assert again.moves == []
    assert again.placement == first.placement


@settings(max_examples=300, deadline=None)
@given(workers=workers_strategy(), adapters=adapter_lists)
def test_a_fresh_plan_leaves_no_adapter_short_while_a_copy_of_lower_standing_holds_a_slot_it_could_take(
    workers: list[Worker], adapters: list[Adapter]
) -> None:
    result = plan(workers, adapters)
    by_key = {adapter.key: adapter for adapter in adapters}
    for key in result.missing:
        assert_takes_no_lower_copys_slot(key, result.placement, by_key, workers)

"""Properties of the routing decision over generated worker tables (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.api.tiers import TIERS, Tier
from loraplex.router.decision import Router, RoutingConfig
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.table import WorkerTable

ADAPTERS = [f"adapter-{i}" for i in range(12)]


@dataclass(frozen=True)
class World:
    workers: tuple[str, ...]
    healthy: tuple[bool, ...]
    loads: tuple[int, ...]
    holds: tuple[tuple[tuple[str, Tier], ...], ...]  # per worker: (adapter, tier)


@st.composite
def worlds(draw: st.DrawFn, min_workers: int = 1) -> World:
    count = draw(st.integers(min_workers, 12))
    workers = tuple(f"worker-{i}" for i in range(count))
    healthy = tuple(draw(st.booleans()) for _ in workers)
    loads = tuple(draw(st.integers(0, 20)) for _ in workers)
    holds = tuple(
        tuple(draw(st.dictionaries(st.sampled_from(ADAPTERS), st.sampled_from(TIERS), max_size=6)).items())
        for _ in workers
    )
    return World(workers, healthy, loads, holds)


def build(world: World, seed: int = 0) -> WorkerTable:
    table = WorkerTable(Rendezvous(seed=seed))
    rows = zip(world.workers, world.healthy, world.loads, world.holds, strict=True)
    for name, healthy, load, holds in rows:
        table.add_worker(name, healthy)
        table.set_reported_load(name, load)
        table.set_residency(name, dict(holds), gpu_slots=4, cpu_slots=8)
    return table


@given(worlds(), st.sampled_from(ADAPTERS))
def test_never_picks_an_unhealthy_worker(world: World, adapter: str) -> None:
    table = build(world)
    decision = Router(table).decide(adapter, now=0.0)
    if not any(world.healthy):
        assert decision is None
    else:
        assert decision is not None
        assert table.workers[decision.worker].healthy


@given(worlds(), st.sampled_from(ADAPTERS))
def test_picks_a_gpu_holder_when_one_is_within_the_load_bound(world: World, adapter: str) -> None:
    table = build(world)
    config = RoutingConfig()
    cap = table.capacity(config.epsilon)
    within = [
        name
        for name, tier in table.holders(adapter).items()
        if tier == "GPU" and table.workers[name].healthy and table.workers[name].load + 1 <= cap
    ]
    decision = Router(table, config).decide(adapter, now=0.0)
    if within:
        assert decision is not None
        assert decision.worker in within
        assert decision.hit == "gpu"
        assert table.workers[decision.worker].load == min(table.workers[w].load for w in within)


@given(worlds(), st.sampled_from(ADAPTERS), st.integers(0, 2**32))
def test_the_same_adapter_in_the_same_world_goes_to_the_same_worker(
    world: World, adapter: str, seed: int
) -> None:
    first = Router(build(world, seed)).decide(adapter, now=5.0)
    second = Router(build(world, seed)).decide(adapter, now=5.0)
    assert first == second


@settings(max_examples=50)
@given(st.integers(2, 40), st.integers(0, 39), st.integers(0, 2**32))
def test_removing_a_worker_moves_only_the_adapters_it_was_chosen_for(
    workers: int, victim_index: int, seed: int
) -> None:
    names = [f"worker-{i}" for i in range(workers)]
    victim = names[victim_index % workers]
    table = WorkerTable(Rendezvous(seed=seed))
    for name in names:
        table.add_worker(name)
    router = Router(table)
    adapters = [f"tenant/adapter-{i}" for i in range(300)]
    before = {a: router.decide(a, now=0.0) for a in adapters}
    table.remove_worker(victim)
    after = {a: router.decide(a, now=0.0) for a in adapters}
    for adapter in adapters:
        old, new = before[adapter], after[adapter]
        assert old is not None
        assert new is not None
        if old.worker != victim:
            assert new.worker == old.worker, adapter
        else:
            assert new.worker != victim


@given(worlds(min_workers=2), st.sampled_from(ADAPTERS))
def test_a_retry_never_returns_to_an_excluded_worker(world: World, adapter: str) -> None:
    table = build(world)
    router = Router(table)
    first = router.decide(adapter, now=0.0)
    if first is None:
        return
    retry = router.decide(adapter, now=0.0, exclude=[first.worker], count=False)
    assert retry is None or retry.worker != first.worker


@given(worlds(), st.sampled_from(ADAPTERS), st.data())
def test_a_named_adapter_goes_past_the_bound_only_when_its_placement_and_spill_workers_are_at_it(
    world: World, adapter: str, data: st.DataObject
) -> None:
    table = build(world)
    placed = data.draw(st.lists(st.sampled_from(world.workers), min_size=1, unique=True))
    for name in placed:
        table.set_wanted(name, [adapter])
        table.set_reported_load(name, data.draw(st.integers(0, 60)))  # often past the bound
    if not any(table.workers[name].healthy for name in placed):
        return  # then it goes to its ranked workers like any adapter
    config = RoutingConfig()
    cap = table.capacity(config.epsilon)
    spill = [
        name for name in table.rendezvous.ranking(adapter)[: config.miss_candidates] if name not in placed
    ]
    holders = [name for name, tier in table.holders(adapter).items() if tier != "Disk"]
    decision = Router(table, config).decide(adapter, now=0.0)
    assert decision is not None
    assert decision.worker in {*placed, *spill, *holders}
    candidates = [table.workers[name] for name in {*placed, *spill}]
    if decision.over_bound:
        assert all(state.load >= cap for state in candidates if state.healthy)
    else:
        assert table.workers[decision.worker].load < cap

"""The routing decision's behaviours that need a scenario: hot spread, cooling, the index, the ranking."""

from __future__ import annotations

import pytest

from loraplex.router.decision import Router, RoutingConfig
from loraplex.router.rates import AdapterRates
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.table import WorkerTable


def table_of(count: int, seed: int = 0) -> WorkerTable:
    table = WorkerTable(Rendezvous(seed=seed))
    for i in range(count):
        table.add_worker(f"worker-{i}")
        table.set_residency(f"worker-{i}", {}, gpu_slots=4, cpu_slots=8)
    return table


def test_a_steady_rate_converges_to_itself_and_decays_by_half_each_half_life() -> None:
    rates = AdapterRates(half_life=10.0)
    for tick in range(2000):
        rates.observe("a", tick * 0.1)  # 10 requests per second
    assert rates.rate("a", 199.9) == pytest.approx(10.0, rel=0.05)
    assert rates.rate("a", 209.9) == pytest.approx(5.0, rel=0.05)


def test_rates_forget_the_least_recently_seen_adapter_first() -> None:
    rates = AdapterRates(capacity=2)
    for when, adapter in enumerate(("a", "b", "a", "c")):
        rates.observe(adapter, float(when))
    assert len(rates) == 2
    assert rates.rate("b", 4.0) == 0.0
    assert rates.rate("a", 4.0) > 0.0


def test_a_hot_adapter_spreads_over_more_workers_and_shrinks_back_when_it_cools() -> None:
    table = table_of(16)
    router = Router(table, RoutingConfig(hot_rate=5.0, half_life=2.0, max_spread=8))
    now = 0.0
    spread = []
    for _ in range(400):  # 40 requests per second
        now += 0.025
        decision = router.decide("hot", now)
        assert decision is not None
        spread.append(decision.spread)
    assert spread[0] == 1
    assert spread[-1] == 8
    cooled = router.decide("hot", now + 30.0)
    assert cooled is not None
    assert cooled.spread == 1


def test_spilled_requests_of_a_hot_adapter_land_on_its_ranked_workers() -> None:
    table = table_of(16)
    router = Router(table, RoutingConfig(hot_rate=3.5, max_spread=4))  # a spread of 4
    for i in range(200):
        router.rates.observe("hot", i * 0.01)
    ranking = table.rendezvous.ranking("hot")
    for name in table.workers:
        if name not in ranking[:4]:
            table.set_reported_load(name, 6)  # busy elsewhere: the bound leaves room on the ranked four
    chosen = set()
    for _ in range(8):  # nothing resident; every choice stays in flight
        decision = router.decide("hot", 2.0)
        assert decision is not None
        table.begin(decision.worker, "hot")
        chosen.add(decision.worker)
    assert chosen == set(ranking[:4])


def test_the_holder_index_follows_residency_reports_by_their_difference() -> None:
    table = table_of(2)
    table.set_residency("worker-0", {"a": "GPU", "b": "CPU"})
    table.set_residency("worker-1", {"a": "Disk"})
    assert table.holders("a") == {"worker-0": "GPU", "worker-1": "Disk"}
    table.set_residency("worker-0", {"b": "GPU"})
    assert table.holders("a") == {"worker-1": "Disk"}
    assert table.holders("b") == {"worker-0": "GPU"}
    table.remove_worker("worker-1")
    assert table.holders("a") == {}
    assert list(table.resident_adapters()) == ["b"]


def test_the_load_bound_sends_requests_past_a_busy_gpu_holder() -> None:
    table = table_of(4)
    table.set_residency("worker-0", {"a": "GPU"})
    table.set_residency("worker-1", {"a": "CPU"})
    table.set_reported_load("worker-0", 10)  # mean 2.75, bound ceil(1.5 x 3.75) = 6
    decision = Router(table).decide("a", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == ("worker-1", "cpu")


def test_a_hot_adapter_gains_a_copy_rather_than_load_its_only_holder_past_the_mean() -> None:
    table = table_of(4)
    router = Router(table, RoutingConfig(hot_rate=5.0, max_spread=4))
    for i in range(200):  # 100 requests per second: a spread of 4
        router.rates.observe("hot", i * 0.01)
    holder = table.rendezvous.ranking("hot")[0]
    table.set_residency(holder, {"hot": "GPU"})
    table.set_reported_load(holder, 3)
    for name in table.workers:
        if name != holder:
            table.set_reported_load(name, 2)  # mean 2.5 counting this request; the bound is 4
    spread = router.decide("hot", 2.0)
    assert spread is not None
    assert spread.worker != holder
    assert spread.hit == "miss"
    table.set_reported_load(holder, 2)  # below the mean: the holder serves it again
    held = router.decide("hot", 2.0)
    assert held is not None
    assert (held.worker, held.hit) == (holder, "gpu")


def test_an_adapter_in_flight_on_all_gpu_slots_makes_a_miss_go_elsewhere() -> None:
    table = table_of(4)
    router = Router(table, RoutingConfig(miss_candidates=4))
    router.rates.observe("new", 0.0)
    router.rates.observe("new", 0.1)  # seen before: may use several ranked workers
    first = table.rendezvous.ranking("new")[0]
    for adapter in ("w", "x", "y", "z"):  # four distinct adapters in flight = its 4 GPU slots
        table.begin(first, adapter)
    decision = router.decide("new", 0.2)
    assert decision is not None
    assert decision.worker != first


def test_incremental_ranking_updates_equal_a_fresh_ranking() -> None:
    grown = Rendezvous(seed=3, buckets=64)
    grown.set_workers([f"w{i}" for i in range(10)])
    grown.warm()
    grown.add("w10")
    grown.remove("w4")
    fresh = Rendezvous(seed=3, buckets=64)
    fresh.set_workers([*(f"w{i}" for i in range(11) if i != 4)])
    for i in range(500):
        assert grown.ranking(f"a{i}") == fresh.ranking(f"a{i}")


def test_a_first_time_adapter_takes_its_second_ranked_worker_when_the_first_has_no_free_slot() -> None:
    table = table_of(8)
    router = Router(table, RoutingConfig(first_candidates=2))
    first, second = table.rendezvous.ranking("new")[:2]
    for adapter in ("w", "x", "y", "z"):  # its 4 GPU slots all in flight
        table.begin(first, adapter)
    for name in table.workers:
        if name != first:
            table.set_reported_load(name, 4)  # as loaded as the first: only its slots differ
    decision = router.decide("new", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == (second, "miss")


def test_a_named_adapter_spills_to_its_ranked_workers_only_once_its_placement_is_at_the_bound() -> None:
    table = table_of(16)
    router = Router(table, RoutingConfig(hot_rate=100.0))  # it stays cold: spilling, not spreading
    for name in ("worker-5", "worker-6"):  # the operator placed it there, on disk
        table.set_residency(name, {"sql-gen": "Disk"})
        table.set_wanted(name, ["sql-gen"])
    decision = router.decide("sql-gen", 0.0)
    assert decision is not None
    assert decision.worker in ("worker-5", "worker-6")
    assert decision.hit == "disk"
    assert not decision.over_bound
    # Both are busy past the bound, and so is a worker holding it in GPU outside the placement.
    table.set_residency("worker-2", {"sql-gen": "GPU"})
    for name, load in (("worker-5", 10), ("worker-6", 12), ("worker-2", 11)):
        table.set_reported_load(name, load)
    assert table.workers["worker-5"].load >= table.capacity(router.config.epsilon)
    spilled = router.decide("sql-gen", 0.1)
    assert spilled is not None
    ranked = table.rendezvous.ranking("sql-gen")[: router.config.miss_candidates]
    assert spilled.worker in set(ranked) - {"worker-5", "worker-6", "worker-2"}
    assert (spilled.hit, spilled.over_bound) == ("miss", False)  # its agent reads the LoRAAdapter
    # A retry (no spill), or every ranked worker at the bound too: the least loaded that can serve it.
    kept = router.decide("sql-gen", 0.2, spill=False)
    assert kept is not None
    assert (kept.worker, kept.hit, kept.over_bound) == ("worker-5", "disk", True)
    for name in ranked:
        table.set_reported_load(name, 20)
    assert all(table.workers[name].load >= table.capacity(router.config.epsilon) for name in ranked)
    crowded = router.decide("sql-gen", 0.3)
    assert crowded is not None
    serving = ("worker-5", "worker-6", "worker-2")  # its placement and its GPU holder
    assert crowded.worker == min(serving, key=lambda name: (table.workers[name].load, name))
    assert crowded.over_bound


def test_a_named_adapter_with_no_healthy_placement_tries_its_ranked_workers() -> None:
    table = table_of(8)
    router = Router(table)
    table.set_wanted("worker-5", ["sql-gen"])
    table.set_healthy("worker-5", False)
    decision = router.decide("sql-gen", 0.0)
    assert decision is not None
    assert decision.worker != "worker-5"  # its agent may find it in the catalog
    assert decision.hit == "miss"

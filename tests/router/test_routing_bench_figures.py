"""The routing benchmark's reference figures: what they count is what bench/README.md says."""

from __future__ import annotations

import math
from types import ModuleType

import pytest


def test_running_adapters_counts_distinct_adapters_busy_at_once_and_time_above_the_slots(
    routing_bench: ModuleType,
) -> None:
    bench = routing_bench
    prefill = bench.PREFILL
    trace = [
        bench.Request("a", 0.0, 1.0 - prefill),  # a busy from 0 to 1 ...
        bench.Request("b", 0.0, 2.0 - prefill),  # b from 0 to 2
        bench.Request("a", 0.5, 1.0 - prefill),  # ... and on to 1.5: one busy period, not two
        bench.Request("c", 3.0, 1.0 - prefill),  # c from 3 to 4; nothing runs from 2 to 3
    ]
    mean, over = bench.running_adapters(trace, slots=1)
    assert mean == pytest.approx((1.5 + 2.0 + 1.0) / 4.0)  # adapter-seconds over the 4 s
    assert over == pytest.approx(1.5 / 4.0)  # two adapters busy from 0 to 1.5, one slot


def test_the_pooled_references_never_evict_a_running_adapter(routing_bench: ModuleType) -> None:
    bench = routing_bench
    prefill = bench.PREFILL
    trace = [
        bench.Request("a", 0.0, 1.0 - prefill),  # a runs from 0 to 1
        bench.Request("b", 0.5, 1.0 - prefill),  # one slot, a running: b is loaded beyond it
        bench.Request("a", 0.7, 1.0 - prefill),  # a was kept: no load
        bench.Request("c", 3.0, 1.0 - prefill),  # a and b idle: both go for c (least recent first)
        bench.Request("b", 3.5, 1.0 - prefill),  # evicted for c: loaded again beyond the slot
    ]
    assert bench.pooled_running_loads(trace, slots=1) == 4
    assert bench.lru_loads([r.adapter for r in trace], slots=1) == 5  # without running requests
    assert bench.pooled_running_loads(trace, slots=3) == 3


def test_the_pooled_belady_reference_evicts_the_adapter_wanted_last(routing_bench: ModuleType) -> None:
    bench = routing_bench
    short = 0.1 - bench.PREFILL
    trace = [bench.Request(name, float(at), short) for at, name in enumerate("abcacbab")]
    # Two slots, nothing running at each arrival: LRU evicts what comes back next, Belady keeps it.
    assert bench.pooled_running_loads(trace, slots=2, evict="lru") == 6
    assert bench.pooled_running_loads(trace, slots=2, evict="belady") == 4
    assert bench.belady_loads([r.adapter for r in trace], slots=2) == 4


def test_the_affinity_oracle_spreads_each_adapter_over_its_share_of_the_workers_only(
    routing_bench: ModuleType,
) -> None:
    bench = routing_bench
    workload = next(w for w in bench.workloads(quick=True) if w.name == "gie_10")
    sim, choose = bench.affinity_oracle(workload, seed=1)
    trace = bench.make_trace(workload, seed=1)
    workers_of: dict[str, set[int]] = {}

    def recorded(request: object) -> int:
        worker: int = choose(request)
        workers_of.setdefault(request.adapter, set()).add(worker)  # type: ignore[attr-defined]
        return worker

    sim.run(trace, recorded)
    for adapter, used in workers_of.items():
        share = sum(r.adapter == adapter for r in trace) / len(trace)
        assert len(used) == math.ceil(share * workload.workers)  # 15 adapters: 4-12% each, 1 or 2

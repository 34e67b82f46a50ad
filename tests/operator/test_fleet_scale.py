"""How many workers a BaseModel runs: enough to hold its adapters warm and serve its requests, within
replicas.min..max."""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet_scale import (
    FleetDemand,
    ScaleStep,
    next_scale,
    slot_demand,
    workers_needed,
    workers_to_run,
)
from loraplex.operator.placement import Adapter

DELAY = 300.0


def spec(
    low: int = 1,
    high: int | None = 4,
    max_loras: int = 2,
    max_cpu_loras: int = 4,
    per_worker: int | None = None,
) -> BaseModelSpec:
    replicas: dict[str, Any] = {"min": low} if high is None else {"min": low, "max": high}
    if per_worker is not None:
        replicas["targetRequestsPerWorker"] = per_worker
    return BaseModelSpec.model_validate(
        {
            "model": {"uri": "/m"},
            "replicas": replicas,
            "engine": {"maxLoras": max_loras, "maxCpuLoras": max_cpu_loras},
        }
    )


def adapters(count: int, replicas: int = 1, pinned: bool = False) -> list[Adapter]:
    return [Adapter(f"a{i}", replicas=replicas, pinned=pinned) for i in range(count)]


def test_demand_counts_warm_copies_pinned_copies_and_the_widest_adapter() -> None:
    demand = slot_demand([*adapters(3), *adapters(2, replicas=3, pinned=True)])
    assert demand == FleetDemand(warm_copies=9, pinned_copies=6, widest=3)


def test_workers_needed_is_the_tightest_of_warm_slots_gpu_slots_for_pinned_and_spread() -> None:
    model = spec(low=1, high=10, max_loras=2, max_cpu_loras=4)
    assert workers_needed(model, FleetDemand(0, 0, 0)) == 1  # replicas.min
    assert workers_needed(model, FleetDemand(warm_copies=9)) == 3  # 4 warm slots per worker
    assert workers_needed(model, FleetDemand(warm_copies=9, pinned_copies=7)) == 4  # 2 GPU slots each
    assert workers_needed(model, FleetDemand(warm_copies=5, widest=5)) == 5  # one copy per worker
    assert workers_needed(model, FleetDemand(warm_copies=400)) == 10  # replicas.max


def test_with_a_target_per_worker_the_requests_want_workers_too() -> None:
    model = spec(low=1, high=10, per_worker=8)
    assert workers_needed(model, FleetDemand(requests=0.0)) == 1
    assert workers_needed(model, FleetDemand(requests=16.0)) == 2
    assert workers_needed(model, FleetDemand(requests=16.1)) == 3
    assert workers_needed(model, FleetDemand(warm_copies=20, requests=16.0)) == 5  # the adapters want more
    assert workers_needed(model, FleetDemand(requests=1000.0)) == 10  # replicas.max
    assert workers_needed(spec(low=1, high=10), FleetDemand(requests=1000.0)) == 1  # no target: not load


def test_a_load_that_drops_shrinks_the_fleet_only_after_the_delay() -> None:
    model = spec(low=1, high=10, per_worker=8)
    busy = next_scale(model, FleetDemand(requests=30.0), ScaleStep(1), now=0.0, scale_down_delay=DELAY)
    assert busy == ScaleStep(4)
    quiet = next_scale(model, FleetDemand(requests=3.0), busy, now=60.0, scale_down_delay=DELAY)
    assert quiet == ScaleStep(4, below_since=60.0)
    assert next_scale(model, FleetDemand(requests=3.0), quiet, 360.0, DELAY) == ScaleStep(1)


def test_without_a_max_the_fleet_stays_at_min() -> None:
    assert workers_needed(spec(low=2, high=None), FleetDemand(warm_copies=100)) == 2


def test_the_fleet_grows_at_once_and_shrinks_only_after_the_delay() -> None:
    model = spec(low=1, high=4)
    grown = next_scale(model, slot_demand(adapters(12)), ScaleStep(1), now=0.0, scale_down_delay=DELAY)
    assert grown == ScaleStep(3)
    # Most adapters deleted: the need drops to 1, but 3 stay for the delay ...
    waiting = next_scale(model, slot_demand(adapters(2)), grown, now=10.0, scale_down_delay=DELAY)
    assert waiting == ScaleStep(3, below_since=10.0)
    still = next_scale(model, slot_demand(adapters(2)), waiting, now=10.0 + DELAY - 1, scale_down_delay=DELAY)
    assert still == ScaleStep(3, below_since=10.0)
    # ... a need back at the target in the meantime resets the clock ...
    back = next_scale(model, slot_demand(adapters(12)), still, now=20.0 + DELAY, scale_down_delay=DELAY)
    assert back == ScaleStep(3)
    # ... and a need that stays low for the whole delay shrinks the fleet.
    low = next_scale(model, slot_demand(adapters(2)), back, now=1000.0, scale_down_delay=DELAY)
    assert low.target == 3
    shrunk = next_scale(model, slot_demand(adapters(2)), low, now=1000.0 + DELAY, scale_down_delay=DELAY)
    assert shrunk == ScaleStep(1)


def test_a_narrowed_replicas_range_applies_at_once() -> None:
    assert next_scale(spec(low=1, high=2), FleetDemand(), ScaleStep(4), 0.0, DELAY) == ScaleStep(2, 0.0)
    assert next_scale(spec(low=3, high=5), FleetDemand(), ScaleStep(1), 0.0, DELAY) == ScaleStep(3)


def test_the_statefulset_runs_the_decided_count_else_what_runs_within_the_range() -> None:
    model = spec(low=1, high=4)
    assert workers_to_run(model, decided=3, observed=1) == 3
    assert workers_to_run(model, decided=None, observed=4) == 4  # a fresh operator keeps the fleet
    assert workers_to_run(model, decided=None, observed=9) == 4
    assert workers_to_run(model, decided=None, observed=None) == 1

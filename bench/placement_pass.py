"""Benchmark of one placement pass (loraplex.operator.placement_pass.run_pass) over a settled fleet.

Scenario (--quick: 10,000 adapters on 100 workers; default 50,000 on 500): every adapter placed, its
status written, every agent reporting its copies, then passes over the same snapshot, as the placement
loop runs them when a resync is due or an unrelated object changed. The pass builds each adapter's
status through the typed LoRAAdapterStatus and reads each WorkerPlacement status through its model;
with the shipped `PlacementState` it reuses the statuses whose inputs are the very objects the last pass
read. The baseline, measured in the same run on the same snapshot: the same pass with that memory
emptied before it, so every status is parsed and built again. The last line is:
``steady_pass_ms=<ms> rebuilt_pass_ms=<ms> steady_vs_rebuilt=<ratio>``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from loraplex.api import API_VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet import BaseModelRef
from loraplex.operator.placement_pass import (
    PlacementSnapshot,
    PlacementState,
    WorkerPodState,
    fleet_workers,
    run_pass,
)

REF = BaseModelRef("bench", "bench", "uid-bench")
SHA = "1" * 64
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = BaseModelSpec.model_validate({"model": {"uri": "/m"}, "engine": {"maxLoras": 8, "maxCpuLoras": 64}})


def adapter(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "LoRAAdapter",
        "metadata": {"name": name, "namespace": REF.namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "baseModel": REF.name, "source": {"uri": f"s3://adapters/{name}/", "sha256": SHA}, "rank": 8,
        },
        "status": {},
    }  # fmt: skip


def snapshot(
    adapters: list[dict[str, Any]], placements: list[dict[str, Any]], workers: int
) -> PlacementSnapshot:
    pods = [WorkerPodState(f"w-{i}", f"node-{i}", healthy=True) for i in range(workers)]
    return PlacementSnapshot(
        REF, MODEL, adapters, placements, fleet_workers(pods, MODEL, 4096), workers, 0.0, NOW
    )


def settled_fleet(count: int, workers: int) -> tuple[PlacementSnapshot, PlacementState]:
    """A fleet after its first passes: statuses written, every agent reporting what it was given."""
    state = PlacementState()
    adapters = [adapter(f"a{i}") for i in range(count)]
    first = run_pass(snapshot(adapters, [], workers), state)
    written = dict(first.statuses)
    adapters = [{**a, "status": written[a["metadata"]["name"]]} for a in adapters]
    placements = [
        {**p, "status": {"adapters": [{**e, "sha256": SHA} for e in p["spec"]["adapters"]]}}
        for p in first.apply
    ]
    settled = snapshot(adapters, placements, workers)
    run_pass(settled, state)
    return settled, state


def timed(settled: PlacementSnapshot, state: PlacementState, forget: bool) -> float:
    if forget:
        state.reports.clear()
        state.statuses.clear()
    gc.collect()
    started = time.perf_counter()
    run_pass(settled, state)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 adapters on 100 workers")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    count, workers = (10_000, 100) if args.quick else (50_000, 500)
    settled, state = settled_fleet(count, workers)
    steady, rebuilt = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise lands on both alike
        rebuilt.append(timed(settled, state, forget=True))
        steady.append(timed(settled, state, forget=False))
    steady_ms, rebuilt_ms = statistics.median(steady) * 1000, statistics.median(rebuilt) * 1000
    print(f"adapters={count} workers={workers} repeats={args.repeats}")
    print(
        f"steady_pass_ms={steady_ms:.1f} rebuilt_pass_ms={rebuilt_ms:.1f} "
        f"steady_vs_rebuilt={steady_ms / rebuilt_ms:.2f}"
    )


if __name__ == "__main__":
    main()

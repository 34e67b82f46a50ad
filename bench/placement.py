"""Benchmark of the adapter placement planner (loraplex.operator.placement) at fleet scale.

Scenario (--quick): 1,000,000 adapters on 1,000 workers (8 GPU, 64 CPU, 2048 Disk slots each; one worker per
node, 3 zones); 1% of adapters want 2-3 replicas and 300 are pinned. It measures:

- the time of a full plan from nothing (goal: <= 5 s);
- the time of the incremental re-plan after one worker is lost (goal: <= 50 ms);
- the copies that re-plan moves divided by the copies that lived on the lost worker (goal: <= 1.05).

As a baseline measured in the same run, it re-plans the whole world after the loss (a full plan with the
previous placement as current) and prints its time and moves with ratios against the incremental re-plan.
Each timing starts after a ``gc.collect()`` (as timeit does), so that a collection owed to earlier work does
not land inside it. Without --quick it repeats the incremental measurement over several lost workers. The
last line is:
``planner_1m_x_1k_seconds=<s> replan_after_loss_ms=<ms> moves_vs_minimum=<ratio>``.
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from loraplex.operator.placement import Adapter, Planner, Worker, moved_copies

ZONES = ("zone-a", "zone-b", "zone-c")


def make_workers(count: int) -> list[Worker]:
    return [
        Worker(f"worker-{i:04d}", f"node-{i:04d}", ZONES[i % len(ZONES)], 8, 64, 2048) for i in range(count)
    ]


def make_adapters(count: int, pinned: int, seed: int = 7) -> list[Adapter]:
    """Adapters with a few priority levels, random warmth, 1% with 2-3 replicas, ``pinned`` pinned ones."""
    rng = random.Random(seed)
    adapters = []
    for i in range(count):
        replicas = rng.choice((2, 3)) if rng.random() < 0.01 else 1
        adapters.append(
            Adapter(
                key=f"tenant-{i % 997}/adapter-{i}",
                replicas=replicas,
                priority=rng.choice((0, 0, 0, 1, 2)),
                pinned=i < pinned,
                warmth=rng.random(),
            )
        )
    return adapters


def timed_loss(planner: Planner, victim: str) -> tuple[float, int, int]:
    """Lose ``victim``; return (seconds, moved copies, copies that lived there)."""
    lived_there = sum(planner.load(victim))
    gc.collect()  # as timeit does: a full collection left over from earlier work is not the re-plan's cost
    start = time.perf_counter()
    moves = planner.worker_lost(victim)
    elapsed = time.perf_counter() - start
    return elapsed, moved_copies(moves), lived_there


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one loss, the run that the goals are set on")
    args = parser.parse_args()
    adapter_count, worker_count = 1_000_000, 1_000
    workers = make_workers(worker_count)
    adapters = make_adapters(adapter_count, pinned=300)
    print(f"adapters={adapter_count} workers={worker_count} copies={sum(a.replicas for a in adapters)}")

    gc.collect()
    start = time.perf_counter()
    planner = Planner(workers)
    full = planner.plan_all(adapters)
    full_seconds = time.perf_counter() - start
    counts = full.counts()
    print(f"full_plan_seconds={full_seconds:.3f} " + " ".join(f"{k}={v}" for k, v in counts.items()))
    before = {key: dict(copies) for key, copies in planner.placement.items()}

    victim = workers[len(workers) // 2].name
    loss_seconds, moved, lived_there = timed_loss(planner, victim)
    ratio = moved / lived_there
    print(f"replan_after_loss_ms={loss_seconds * 1000:.2f} moved_copies={moved} copies_on_lost={lived_there}")

    survivors = [worker for worker in workers if worker.name != victim]
    gc.collect()
    start = time.perf_counter()
    baseline = Planner(survivors).plan_all(adapters, before)
    baseline_seconds = time.perf_counter() - start
    baseline_moved = moved_copies(baseline.moves)
    print(
        f"baseline_full_replan_seconds={baseline_seconds:.3f} baseline_moved_copies={baseline_moved} "
        f"baseline_moves_vs_minimum={baseline_moved / lived_there:.4f}"
    )
    print(
        f"replan_speedup_vs_baseline={baseline_seconds / loss_seconds:.0f}x "
        f"moves_vs_baseline={moved / baseline_moved:.4f} moves_saved_vs_baseline={baseline_moved - moved}"
    )

    if not args.quick:
        for victim_worker in workers[1:6]:
            seconds, extra_moved, extra_lived = timed_loss(planner, victim_worker.name)
            print(
                f"extra_loss worker={victim_worker.name} ms={seconds * 1000:.2f} "
                f"moves_vs_minimum={extra_moved / extra_lived:.4f}"
            )

    print(
        f"planner_1m_x_1k_seconds={full_seconds:.2f} replan_after_loss_ms={loss_seconds * 1000:.1f} "
        f"moves_vs_minimum={ratio:.3f}"
    )


if __name__ == "__main__":
    main()

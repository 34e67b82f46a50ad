"""Queueing as a cost the routing decision sees, and what it learns of it from vLLM's metrics.

A worker at its engine's concurrency makes one more request wait; the decision
sends the request there only when every alternative costs a load slower than
that wait (the measured time of a load from the tier the alternative holds the
adapter in), or when no worker has a free seat at all.
"""

from __future__ import annotations

import math

from loraplex.router.decision import Router, RoutingConfig
from loraplex.router.load import EngineSample, learn_concurrency, parse_engine
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.table import WorkerTable

CONCURRENCY = 4


def fleet(count: int = 8) -> WorkerTable:
    table = WorkerTable(Rendezvous(seed=3))
    for i in range(count):
        name = f"worker-{i}"
        table.add_worker(name)
        table.set_residency(name, {}, gpu_slots=4, cpu_slots=8)
        table.set_concurrency(name, CONCURRENCY)
        table.set_reported_load(name, 2)
    table.times.record_request(1.0)  # a request runs 1 s
    table.times.record_load("miss", 0.6)  # a load from the store takes 0.6 s
    return table


def holder_at(table: WorkerTable, load: int) -> str:
    holder = "worker-2"
    table.set_residency(holder, {"hot": "GPU"})
    table.set_reported_load(holder, load)
    return holder


def test_a_request_waits_on_its_gpu_holder_when_the_wait_is_shorter_than_a_load_elsewhere() -> None:
    table = fleet()
    holder = holder_at(table, CONCURRENCY)  # one in the queue: ~1 s x 1 / 4 = 0.25 s < 0.6 s
    decision = Router(table, RoutingConfig(epsilon=2.0)).decide("hot", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == (holder, "gpu")


def test_a_request_goes_to_a_worker_with_a_free_seat_when_the_wait_is_longer_than_the_load() -> None:
    table = fleet()
    holder = holder_at(table, CONCURRENCY + 3)  # four ahead of it: ~1 s > 0.6 s
    assert table.queue_seconds(table.workers[holder]) > table.times.load_seconds("miss")
    decision = Router(table, RoutingConfig(epsilon=2.0)).decide("hot", 0.0)
    assert decision is not None
    assert decision.worker != holder
    assert decision.hit == "miss"
    assert not table.workers[decision.worker].queued


def test_without_a_measured_request_time_a_full_engine_is_never_worth_waiting_on() -> None:
    table = WorkerTable(Rendezvous(seed=3))
    for i in range(4):
        table.add_worker(f"worker-{i}")
        table.set_concurrency(f"worker-{i}", CONCURRENCY)
    table.set_residency("worker-1", {"hot": "GPU"})
    table.set_reported_load("worker-1", CONCURRENCY)
    assert table.queue_seconds(table.workers["worker-1"]) == math.inf
    decision = Router(table, RoutingConfig(epsilon=2.0)).decide("hot", 0.0)
    assert decision is not None
    assert decision.worker != "worker-1"


def test_when_no_worker_has_a_free_seat_the_holder_serves_within_the_balance_bound() -> None:
    table = fleet(4)
    for name in table.workers:
        table.set_reported_load(name, CONCURRENCY + 2)
    holder = holder_at(table, CONCURRENCY + 2)  # everyone queues: queueing costs the same everywhere
    assert table.free_seats == 0
    decision = Router(table).decide("hot", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == (holder, "gpu")


def test_a_new_adapter_is_not_loaded_where_it_would_wait_while_a_ranked_worker_has_a_seat() -> None:
    table = fleet()
    router = Router(table, RoutingConfig(epsilon=2.0))
    first, second = table.rendezvous.ranking("cold")[:2]
    for name in table.workers:
        table.set_reported_load(name, CONCURRENCY if name == first else CONCURRENCY - 1)
    decision = router.decide("cold", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == (second, "miss")  # the next ranked, with a seat


def test_free_seats_follow_loads_concurrency_and_health() -> None:
    table = fleet(3)  # each runs 2 of 4
    assert table.free_seats == 6
    for _ in range(3):  # this router's own requests count once they are more than vLLM reported
        table.begin("worker-0", "a")
    table.set_reported_load("worker-1", 9)
    assert table.free_seats == 1 + 0 + 2
    table.set_healthy("worker-2", False)
    assert table.free_seats == 1
    table.set_concurrency("worker-0", 0)  # not known: it offers no seat
    assert table.free_seats == 0


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 16.0
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 2.0
vllm:request_inference_time_seconds_sum{engine="0",model_name="m"} 42.0
vllm:request_inference_time_seconds_count{engine="0",model_name="m"} 21.0
vllm:request_inference_time_seconds_bucket{engine="0",le="1.0",model_name="m"} 20.0
"""


def test_the_engine_sample_reads_load_seats_and_request_time_from_vllm_metrics() -> None:
    sample = parse_engine(VLLM_METRICS)
    assert (sample.running, sample.waiting, sample.waiting_for_seat) == (16, 5, 3)
    assert sample.load == 21
    assert (sample.inference_seconds, sample.finished) == (42.0, 21)


def test_an_engines_concurrency_is_what_it_runs_while_requests_wait_for_a_seat() -> None:
    assert learn_concurrency(0, EngineSample(running=16, waiting=5, waiting_for_seat=3)) == 16
    # Waiting only for a LoRA slot says nothing about seats; nor does an engine that never filled.
    assert learn_concurrency(0, EngineSample(running=6, waiting=2, waiting_for_seat=0)) == 0
    assert learn_concurrency(0, EngineSample(running=3)) == 0
    # Once known, it grows with what the engine is seen running, and follows a new full engine.
    assert learn_concurrency(16, EngineSample(running=20)) == 20
    assert learn_concurrency(16, EngineSample(running=12, waiting=4, waiting_for_seat=4)) == 12


def test_a_short_queue_on_a_gpu_holder_beats_a_copy_from_cpu_memory_that_would_evict_another_adapter() -> (
    None
):
    table = fleet()
    ranked = table.rendezvous.ranking("hot")
    holder, cpu_holder = ranked[1], ranked[0]
    table.set_residency(holder, {"hot": "GPU"})
    table.set_residency(cpu_holder, {"hot": "CPU", **{f"warm-{i}": "GPU" for i in range(4)}})
    table.set_reported_load(holder, CONCURRENCY)  # one in the queue: ~0.25 s
    decision = Router(table, RoutingConfig(epsilon=2.0)).decide("hot", 0.0)
    assert decision is not None
    assert (decision.worker, decision.hit) == (holder, "gpu")


def test_when_no_worker_has_a_free_seat_a_new_adapter_goes_to_the_shorter_queue_first() -> None:
    table = fleet(4)
    for name in table.workers:
        table.set_reported_load(name, CONCURRENCY + 4)
    first, second = table.rendezvous.ranking("new")[:2]
    table.set_residency(second, dict.fromkeys(("a", "b", "c", "d"), "GPU"))  # its slots are full
    table.set_reported_load(second, CONCURRENCY + 1)  # but two wait there, five on `first`
    router = Router(table, RoutingConfig(first_candidates=3))
    for adapter in "abcd":
        router.rates.observe(adapter, 0.0)  # a load there would evict an adapter seen lately
    assert table.free_seats == 0
    assert table.queue_seconds(table.workers[second]) < table.queue_seconds(table.workers[first])
    decision = router.decide("new", 0.0)
    assert decision is not None
    # A free GPU slot on `first` would evict nothing, but the request would wait there longer.
    assert (decision.worker, decision.hit) == (second, "miss")

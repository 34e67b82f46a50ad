"""Trace-driven benchmark of routing policies for multi-LoRA workers, and of the router's decision time.

A discrete-event simulator of workers that behave like vLLM with multi-LoRA:
each runs at most ``max_batch`` requests at once, with at most ``gpu_slots``
distinct adapters among them (``--max-loras``; a request whose adapter would
exceed that waits, as vLLM's scheduler makes it); adapters live in GPU slots
(LRU among those no running request uses), a CPU cache (``--max-cpu-loras``,
LRU) and local disk (LRU, 1,024 adapters), else they come from the store.
A request whose adapter is neither in a GPU slot nor in CPU memory on its worker
is *staged* first, as the worker's agent does on the router's ensure call
(``POST /v1/adapters/ensure``: fetch to disk, register in vLLM's CPU cache)
and as vLLM's runtime LoRA resolver does for any caller: the disk or store
time passes before the request joins vLLM's queue, so it holds no GPU slot
meanwhile, and requests for an adapter already being staged there wait for
that staging. Admitting a request whose adapter is not in a GPU slot is an
adapter *load* (a GPU miss) and costs the tier's load time (CPU to GPU, unless
the adapter left the CPU cache in between) before its prefill.

The same request trace goes through seven policies: random, round-robin,
least-loaded (fewest running + waiting), the Gateway API Inference
Extension's LoRA-affinity scorer (1.0 adapter active on the worker, 0.8 free
adapter slot, 0.6 adapter waiting there, 0 full; highest score wins, ties
broken at random as GAIE's max-score picker does), bounded rendezvous
(consistent hashing with bounded loads: the adapter's best-ranked worker of all
whose load stays within ceil(1.25 x the mean)) and loraplex's, which is the
router's real decision code built as ``loraplex router`` builds it with no
settings (``make_router`` with ``RouterSettings.from_env({})``), fed with the
simulated residency, load, engine concurrency, request and load times as the
live sources would feed it; and, as a reference no router could be, an affinity oracle that
knows each adapter's share of the whole trace in advance and ignores load (what affinity alone
saves on these workers, at whatever latency).

Workloads, each at 10 and at 100 workers (``gie_10``, ``zipf_100``, ...):

(a) ``gie``: the Inference Extension's multi-LoRA regression workload: 15
    rank-8 adapters in three groups of five taking 60/30/10 percent of the
    traffic, max_loras 3 (12 CPU slots), Poisson arrivals at 70% of the fleet;
(b) ``zipf``: 10,000 adapters with Zipf(1.1) popularity that churns (eight
    times over the trace a fifth of the adapters trade ranks), bursty arrivals
    (the rate alternates between 1.4x and 0.6x of 70% of the fleet, phases of
    about 2 s), 8 GPU slots (32 CPU slots) per worker.

For each workload it prints, per policy: GPU hit rate, loads, loads as a ratio
to least-loaded's, max/mean imbalance of requests served per worker, and
modelled TTFT p50/p99; and the offline lower bound on loads: Belady's MIN on
one pooled cache with as many slots as all workers' GPU slots together (no
routing can load less), and how many distinct adapters would be running at
once were every request started on arrival (their mean, and the share of time
they exceed the fleet's GPU slots: slots running adapters take keep nothing
warm); and the loads of that pooled cache when requests start on arrival and a
running adapter is never evicted, evicting in vLLM's LRU order and by Belady's
choice (references: no split into workers, no routing). Then, on (b) at 10
workers with its 128 most requested adapters made named LoRAAdapters with
``replicas: 1`` (each placed on one worker, the rest catalog adapters), it
runs loraplex's policy twice: as the router does (a named adapter spills past
its placement when every worker it names is at the load bound) and with
spilling off, and prints both. Then it times the decision itself with
1,000,000 adapters (the head resident on 1,000 workers in GPU and CPU tiers)
and prints p50/p99 against a baseline: plain rendezvous hashing over all
workers (a weight per worker per request), measured in the same run. The last
line has each goal's figure at each fleet size (``..._10w``, ``..._100w``),
the worst of the two under the goal's name, and ``goals_met``:

``gie_hit_rate>=0.995 zipf_loads_vs_least_loaded<=0.75 zipf_ttft_p99_vs_least_loaded<=1.1
zipf_ttft_p99_vs_gaie<=0.1 zipf_imbalance<=1.25 decision_p99_vs_plain_rendezvous<=0.2``,
then ``zipf_loads_vs_bound`` and the TTFT ratios against bounded rendezvous.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import hashlib
import heapq
import itertools
import math
import random
import statistics
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loraplex.api.tiers import Tier
from loraplex.router.decision import RoutingConfig, make_router
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.settings import RouterSettings

# Modelled costs (seconds).
PREFILL = 0.030
LOAD_SECONDS = {"CPU": 0.010, "Disk": 0.120, "Store": 0.600}
DISK_SLOTS = 1024
SCAN_LIMIT = 64  # waiting requests the scheduler looks at per pass (vLLM scans the whole queue)


@dataclass(frozen=True)
class Workload:
    name: str
    workers: int
    gpu_slots: int
    cpu_slots: int
    max_batch: int
    utilisation: float
    adapters: int
    requests: int
    popularity: Callable[[random.Random, int, int], list[int]]  # (rng, adapters, requests) -> indices
    decode_scale: float = 1.0  # request lengths x this, arrivals unchanged (--decode-scale)
    bursty: bool = False  # arrival rate alternates between 1.4x and 0.6x the mean, phases of ~2 s


@dataclass
class Request:
    adapter: str
    arrival: float
    decode: float
    worker: int = -1
    ttft: float = 0.0


@dataclass
class SimWorker:
    """One simulated vLLM worker with its adapter tiers."""

    gpu_slots: int
    cpu_slots: int
    max_batch: int
    gpu: OrderedDict[str, None] = field(default_factory=OrderedDict)
    cpu: OrderedDict[str, None] = field(default_factory=OrderedDict)
    disk: OrderedDict[str, None] = field(default_factory=OrderedDict)
    active: Counter[str] = field(default_factory=Counter)  # adapter -> running requests
    waiting: deque[Request] = field(default_factory=deque)
    waiting_adapters: Counter[str] = field(default_factory=Counter)
    staging: dict[str, float] = field(default_factory=dict)  # adapter -> when it is in CPU memory
    running: int = 0
    served: int = 0
    loads: int = 0

    @property
    def inflight(self) -> int:
        return self.running + len(self.waiting)

    def tier(self, adapter: str) -> Tier | None:
        if adapter in self.gpu:
            return Tier.GPU
        if adapter in self.cpu:
            return Tier.CPU
        if adapter in self.disk:
            return Tier.DISK
        return None


_DONE, _STAGED = 0, 1  # event kinds: a request finished; an adapter reached CPU memory

TierListener = Callable[[int, str, Tier | None], None]


class Simulation:
    """Runs one trace through one policy; collects loads, per-worker counts and TTFTs."""

    def __init__(self, workload: Workload, on_tier: TierListener | None = None) -> None:
        self.workload = workload
        self.workers = [
            SimWorker(workload.gpu_slots, workload.cpu_slots, workload.max_batch)
            for _ in range(workload.workers)
        ]
        self.on_tier = on_tier or (lambda _w, _a, _t: None)
        self.events: list[tuple[float, int, int, int, Request]] = []  # (when, seq, kind, worker, request)
        self.seq = itertools.count()
        self.ttfts: list[float] = []
        self.slot_waits = 0  # requests the router sent where every GPU slot was busy with others
        self.on_done: Callable[[int, Request], None] = lambda _w, _r: None
        # (worker, the tier an adapter was staged from, seconds): what the router's ensure call times
        self.on_staged: Callable[[int, str, float], None] = lambda _w, _t, _s: None

    def _touch(self, lru: OrderedDict[str, None], adapter: str, size: int) -> str | None:
        """Put `adapter` at the front of an LRU of `size`; return what fell out."""
        lru[adapter] = None
        lru.move_to_end(adapter)
        if len(lru) > size:
            return lru.popitem(last=False)[0]
        return None

    def _load(self, index: int, worker: SimWorker, adapter: str) -> float:
        """Bring the adapter into a GPU slot; return the load time."""
        tier = worker.tier(adapter)
        seconds = LOAD_SECONDS["Store" if tier is None else tier]
        worker.loads += 1
        if len(worker.gpu) >= worker.gpu_slots:
            victim = next(a for a in worker.gpu if a not in worker.active)
            del worker.gpu[victim]
            self.on_tier(index, victim, worker.tier(victim))
        worker.gpu[adapter] = None
        self._register(index, worker, adapter)
        self.on_tier(index, adapter, Tier.GPU)
        return seconds

    def _register(self, index: int, worker: SimWorker, adapter: str) -> None:
        """Put the adapter at the front of the worker's CPU and disk LRUs, reporting what fell out."""
        dropped = self._touch(worker.cpu, adapter, worker.cpu_slots)
        if dropped is not None and dropped not in worker.gpu:
            self.on_tier(index, dropped, worker.tier(dropped))
        fell = self._touch(worker.disk, adapter, DISK_SLOTS)
        if fell is not None and worker.tier(fell) is None:
            self.on_tier(index, fell, None)

    def _schedule(self, index: int, now: float) -> None:
        worker = self.workers[index]
        if worker.running >= worker.max_batch or not worker.waiting:
            return
        admitted: list[Request] = []
        kept: list[Request] = []
        for _ in range(min(SCAN_LIMIT, len(worker.waiting))):
            request = worker.waiting.popleft()
            if worker.running < worker.max_batch and (
                request.adapter in worker.active or len(worker.active) < worker.gpu_slots
            ):
                worker.running += 1
                worker.active[request.adapter] += 1
                admitted.append(request)
            else:
                kept.append(request)
        worker.waiting.extendleft(reversed(kept))
        for request in admitted:
            worker.waiting_adapters[request.adapter] -= 1
            if not worker.waiting_adapters[request.adapter]:
                del worker.waiting_adapters[request.adapter]
            start = now
            if request.adapter in worker.gpu:
                worker.gpu.move_to_end(request.adapter)
                worker.cpu[request.adapter] = None
                worker.cpu.move_to_end(request.adapter)
            else:
                start += self._load(index, worker, request.adapter)
            request.ttft = start + PREFILL - request.arrival
            self.ttfts.append(request.ttft)
            self._push(start + PREFILL + request.decode, _DONE, index, request)

    def _push(self, when: float, kind: int, index: int, request: Request) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, index, request))

    def _arrive(self, index: int, request: Request, now: float) -> None:
        """Queue the request on its worker, staging its adapter into CPU memory first where needed."""
        worker = self.workers[index]
        adapter = request.adapter
        ready = worker.staging.get(adapter)
        tier = worker.tier(adapter)
        if ready is None and tier in (None, "Disk"):
            seconds = LOAD_SECONDS["Store" if tier is None else "Disk"]
            ready = now + seconds
            worker.staging[adapter] = ready
            self.on_staged(index, "miss" if tier is None else "disk", seconds)
        if ready is None:
            self._enqueue(index, request, now)
        else:
            self._push(ready, _STAGED, index, request)

    def _staged(self, index: int, request: Request, now: float) -> None:
        worker = self.workers[index]
        adapter = request.adapter
        if worker.staging.get(adapter) == now:
            del worker.staging[adapter]
            if adapter not in worker.gpu:
                self._register(index, worker, adapter)
                self.on_tier(index, adapter, Tier.CPU)
        self._enqueue(index, request, now)

    def _enqueue(self, index: int, request: Request, now: float) -> None:
        worker = self.workers[index]
        worker.waiting.append(request)
        worker.waiting_adapters[request.adapter] += 1
        self._schedule(index, now)

    def _advance(self, until: float) -> None:
        while self.events and self.events[0][0] <= until:
            when, _, kind, index, request = heapq.heappop(self.events)
            if kind == _STAGED:
                self._staged(index, request, when)
                continue
            worker = self.workers[index]
            worker.running -= 1
            worker.served += 1
            worker.active[request.adapter] -= 1
            if not worker.active[request.adapter]:
                del worker.active[request.adapter]
            self.on_done(index, request)
            self._schedule(index, when)

    def run(self, trace: Sequence[Request], choose: Callable[[Request], int]) -> None:
        for request in trace:
            self._advance(request.arrival)
            index = choose(request)
            request.worker = index
            self._arrive(index, request, request.arrival)
        self._advance(float("inf"))


# -- policies ---------------------------------------------------------------------------------------

Policy = Callable[[Workload, int], tuple[Simulation, Callable[[Request], int]]]


def random_policy(workload: Workload, seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    sim = Simulation(workload)
    rng = random.Random(seed)
    return sim, lambda _r: rng.randrange(workload.workers)


def round_robin(workload: Workload, _seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    sim = Simulation(workload)
    turn = itertools.cycle(range(workload.workers))
    return sim, lambda _r: next(turn)


def least_loaded(workload: Workload, _seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    sim = Simulation(workload)
    workers = sim.workers
    return sim, lambda _r: min(range(len(workers)), key=lambda i: workers[i].inflight)


def gaie_lora_affinity(workload: Workload, seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    sim = Simulation(workload)
    rng = random.Random(seed)

    def score(worker: SimWorker, adapter: str) -> float:
        if adapter in worker.active:
            return 1.0
        if len(worker.active) < worker.gpu_slots:
            return 0.8
        if adapter in worker.waiting_adapters:
            return 0.6
        return 0.0

    def choose(request: Request) -> int:
        scores = [score(w, request.adapter) for w in sim.workers]
        top = max(scores)
        return rng.choice([i for i, s in enumerate(scores) if s == top])

    return sim, choose


def shipped_routing() -> RoutingConfig:
    """The routing settings `loraplex router` runs with when no LORAPLEX_ROUTER_* variable is set."""
    return RouterSettings.from_env({}, base_model="bench").routing


def loraplex_policy(
    workload: Workload,
    seed: int,
    config: RoutingConfig | None = None,
    named: Sequence[str] = (),
    spill: bool = True,
) -> tuple[Simulation, Callable[[Request], int]]:
    """The router's decision, built as `loraplex router` builds it (`make_router`, the shipped settings
    unless `config`), fed what its live sources would report: residency from the agents, each engine's
    concurrency and the requests' running time from vLLM's metrics, load times from ensure calls.
    `named` adapters are LoRAAdapters placed on their first ranked worker."""
    names = [f"worker-{i}" for i in range(workload.workers)]
    router = make_router(config or shipped_routing(), seed=seed)
    table = router.table
    for name in names:
        table.add_worker(name)
        table.set_residency(name, {}, gpu_slots=workload.gpu_slots, cpu_slots=workload.cpu_slots)
        table.set_concurrency(name, workload.max_batch)
    placements: dict[str, list[str]] = {}
    for adapter in named:
        placements.setdefault(table.rendezvous.ranking(adapter)[0], []).append(adapter)
    for worker, adapters in placements.items():
        table.set_wanted(worker, adapters)
    sim = Simulation(workload, on_tier=lambda i, adapter, tier: table.set_tier(names[i], adapter, tier))
    index = {name: i for i, name in enumerate(names)}

    def done(i: int, request: Request) -> None:
        table.end(names[i], request.adapter)
        table.times.record_request(PREFILL + request.decode)

    sim.on_done = done
    sim.on_staged = lambda _i, tier, seconds: table.times.record_load(tier, seconds)

    def choose(request: Request) -> int:
        decision = router.decide(request.adapter, request.arrival, spill=spill)
        assert decision is not None
        if table.waits_for_slot(decision.worker, request.adapter):  # the router's slot-wait counter
            sim.slot_waits += 1
        table.begin(decision.worker, request.adapter)
        return index[decision.worker]

    return sim, choose


BOUNDED_RENDEZVOUS_C = 1.25  # consistent hashing with bounded loads: no worker above 1.25 x the mean


def bounded_rendezvous(workload: Workload, seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    """Rendezvous hashing with bounded loads: the adapter's best-ranked worker (of all) whose running +
    waiting requests stay within ceil(c x the mean) with the request placed, else the least loaded."""
    sim = Simulation(workload)
    workers = sim.workers
    ranking = Rendezvous(seed=seed, depth=workload.workers)
    ranking.set_workers(str(i) for i in range(workload.workers))

    def choose(request: Request) -> int:
        total = sum(w.inflight for w in workers) + 1
        cap = math.ceil(BOUNDED_RENDEZVOUS_C * total / len(workers))
        for name in ranking.ranking(request.adapter):
            if workers[int(name)].inflight + 1 <= cap:
                return int(name)
        return min(range(len(workers)), key=lambda i: workers[i].inflight)

    return sim, choose


def affinity_oracle(workload: Workload, seed: int) -> tuple[Simulation, Callable[[Request], int]]:
    """A reference, not a router: it knows each adapter's share of the whole trace in advance and
    sends a request to the least loaded of the adapter's first ceil(share x workers) ranked workers,
    with no load bound and no regard for queueing. What affinity alone saves on these workers, at
    whatever latency it costs."""
    sim = Simulation(workload)
    trace = make_trace(workload, seed)  # the trace `simulate` runs: the same workload and seed
    share = {adapter: count / len(trace) for adapter, count in Counter(r.adapter for r in trace).items()}
    ranking = Rendezvous(seed=seed, depth=workload.workers)
    ranking.set_workers(str(i) for i in range(workload.workers))
    workers = sim.workers

    def choose(request: Request) -> int:
        spread = max(1, min(workload.workers, math.ceil(share[request.adapter] * workload.workers)))
        return min(
            (int(name) for name in ranking.ranking(request.adapter)[:spread]),
            key=lambda i: workers[i].inflight,
        )

    return sim, choose


POLICIES: dict[str, Policy] = {
    "random": random_policy,
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "gaie": gaie_lora_affinity,
    "bounded_rendezvous": bounded_rendezvous,
    "affinity_oracle": affinity_oracle,
    "loraplex": loraplex_policy,
}


# -- workloads and traces ---------------------------------------------------------------------------

MEAN_DECODE = 1.0


def zipf_cumulative(count: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


def zipf_popularity(rng: random.Random, adapters: int, requests: int) -> list[int]:
    """Zipf(1.1) over the adapters, popularity ranks shuffled over adapter numbers."""
    return shifting_popularity(rng, adapters, requests, phases=1)


def gie_popularity(rng: random.Random, _adapters: int, requests: int) -> list[int]:
    groups = rng.choices(range(3), weights=(60, 30, 10), k=requests)
    return [group * 5 + rng.randrange(5) for group in groups]


def shifting_popularity(rng: random.Random, adapters: int, requests: int, phases: int = 4) -> list[int]:
    """Zipf(1.1) whose ranking of adapters is reshuffled `phases` times over the trace."""
    cum = zipf_cumulative(adapters, 1.1)
    out: list[int] = []
    per_phase = requests // phases
    for _ in range(phases):
        order = list(range(adapters))
        rng.shuffle(order)
        out += [order[r] for r in rng.choices(range(adapters), cum_weights=cum, k=per_phase)]
    return out


def churning_popularity(rng: random.Random, adapters: int, requests: int, phases: int = 8) -> list[int]:
    """Zipf(1.1) whose popularity churns: at each of `phases` steps a fifth of the adapters, drawn at
    random, trade their ranks among themselves (new favourites rise, old ones fade)."""
    cum = zipf_cumulative(adapters, 1.1)
    order = list(range(adapters))
    rng.shuffle(order)
    out: list[int] = []
    per_phase = requests // phases
    for _ in range(phases):
        out += [order[r] for r in rng.choices(range(adapters), cum_weights=cum, k=per_phase)]
        moved = rng.sample(range(adapters), adapters // 5)
        taken = [order[r] for r in moved]
        rng.shuffle(taken)
        for rank, adapter in zip(moved, taken, strict=True):
            order[rank] = adapter
    return out


def make_trace(workload: Workload, seed: int) -> list[Request]:
    rng = random.Random(seed)
    indices = workload.popularity(rng, workload.adapters, workload.requests)
    capacity = workload.workers * workload.max_batch / MEAN_DECODE  # requests per second
    rate = workload.utilisation * capacity
    now = 0.0
    burst_ends, factor = 0.0, 1.0
    trace = []
    for index in indices:
        if workload.bursty and now >= burst_ends:  # on-off modulated Poisson arrivals, mean unchanged
            factor = 1.4 if factor != 1.4 else 0.6
            burst_ends = now + rng.expovariate(1 / 2.0)
        now += rng.expovariate(rate * factor)
        decode = rng.uniform(0.5, 1.5) * MEAN_DECODE * workload.decode_scale
        trace.append(Request(f"adapter-{index}", now, decode))
    return trace


FLEET_SIZES = (10, 100)


def workloads(quick: bool) -> list[Workload]:
    """(a) GAIE's regression workload and (b) the churning, bursty 10k Zipf catalog, at each fleet size."""
    scale = 1 if quick else 4
    out = []
    for workers in FLEET_SIZES:
        per_worker = 1_200 if workers <= 10 else 600  # GAIE's requests per worker: over ~50 s of traffic
        out.append(
            Workload(
                f"gie_{workers}", workers, 3, 12, 16, 0.7, 15, per_worker * workers * scale, gie_popularity
            )
        )
        out.append(
            Workload(
                f"zipf_{workers}",
                workers,
                8,
                32,
                16,
                0.7,
                10_000,
                (3_600 if workers <= 10 else 600) * workers * scale,
                churning_popularity,
                bursty=True,
            )
        )
    return out


# -- the offline lower bound ------------------------------------------------------------------------


def next_uses(adapters: Sequence[str]) -> list[int]:
    """For each position, where its adapter is asked for next (len(adapters): never again)."""
    never = len(adapters)
    next_use = [never] * len(adapters)
    seen: dict[str, int] = {}
    for i in range(len(adapters) - 1, -1, -1):
        next_use[i] = seen.get(adapters[i], never)
        seen[adapters[i]] = i
    return next_use


def belady_loads(adapters: Sequence[str], slots: int) -> int:
    """Misses of Belady's MIN (evict the adapter used farthest in the future) on one cache of `slots`."""
    next_use = next_uses(adapters)
    cached: dict[str, int] = {}  # adapter -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, adapter), stale entries skipped
    misses = 0
    for i, adapter in enumerate(adapters):
        if adapter not in cached:
            misses += 1
            while len(cached) >= slots:
                negative, victim = heapq.heappop(heap)
                if cached.get(victim) == -negative:
                    del cached[victim]
        cached[adapter] = next_use[i]
        heapq.heappush(heap, (-next_use[i], adapter))
    return misses


def lru_loads(adapters: Sequence[str], slots: int) -> int:
    """Misses of one pooled LRU cache of `slots`: what routing over LRU workers could at best approach."""
    cache: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for adapter in adapters:
        if adapter in cache:
            cache.move_to_end(adapter)
            continue
        misses += 1
        cache[adapter] = None
        if len(cache) > slots:
            cache.popitem(last=False)
    return misses


def pooled_running_loads(trace: Sequence[Request], slots: int, evict: str = "lru") -> int:
    """Loads of the whole fleet as one cache of `slots` in which an adapter with a request running
    (every request started on arrival) is never evicted: no split into workers, no routing at all.
    `evict` picks the idle victim: "lru" (vLLM's order) or "belady" (the adapter next requested
    farthest in the future: perfect knowledge). A reference, not a bound: a router picks among
    the workers' victims, and queueing changes what runs at once. When every cached adapter is
    running, the new one is loaded beyond the slots (as `running_adapters` counts the time above)."""
    next_use = next_uses([request.adapter for request in trace]) if evict == "belady" else [0] * len(trace)
    cache: OrderedDict[str, int] = OrderedDict()  # adapter -> its next request, least recent first
    busy_until: dict[str, float] = {}
    loads = 0
    for i, request in enumerate(trace):
        adapter, now = request.adapter, request.arrival
        if adapter not in cache:
            loads += 1
            while len(cache) >= slots:
                idle = (name for name in cache if busy_until[name] <= now)
                if evict == "belady":
                    victim = max(idle, key=cache.__getitem__, default=None)
                else:
                    victim = next(idle, None)
                if victim is None:
                    break
                del cache[victim]
        cache[adapter] = next_use[i]
        cache.move_to_end(adapter)
        busy_until[adapter] = max(busy_until.get(adapter, 0.0), now + PREFILL + request.decode)
    return loads


def running_adapters(trace: Sequence[Request], slots: int) -> tuple[float, float]:
    """Distinct adapters with a request running, were every request started on arrival on one pooled
    fleet (no queueing, no idle copy kept): their mean over the trace's time, and the fraction of that
    time they exceed `slots`. A fleet whose GPU slots are nearly all taken by running adapters has
    next to none left to keep idle adapters warm in, however requests are routed."""
    spans: list[tuple[float, float]] = []
    open_spans: dict[str, list[float]] = {}  # adapter -> [start, end] of its current busy period
    for request in trace:
        start, end = request.arrival, request.arrival + PREFILL + request.decode
        span = open_spans.get(request.adapter)
        if span is not None and span[1] >= start:
            span[1] = max(span[1], end)
            continue
        if span is not None:
            spans.append((span[0], span[1]))
        open_spans[request.adapter] = [start, end]
    spans += [(start, end) for start, end in open_spans.values()]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    duration = edges[-1][0] - edges[0][0]
    running, over, previous = 0, 0.0, edges[0][0]
    for when, change in edges:
        if running > slots:
            over += when - previous
        previous, running = when, running + change
    return sum(end - start for start, end in spans) / duration, over / duration


# -- reporting --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Result:
    hit_rate: float
    loads: int
    imbalance: float
    ttft_p50: float
    ttft_p99: float
    slot_wait_share: float = 0.0  # loraplex only: what loraplex_router_gpu_slot_waits_total would count


def simulate(workload: Workload, policy: Policy, seed: int) -> Result:
    trace = make_trace(workload, seed)
    sim, choose = policy(workload, seed)
    sim.run(trace, choose)
    loads = sum(w.loads for w in sim.workers)
    served = [w.served for w in sim.workers]
    return Result(
        hit_rate=1 - loads / len(trace),
        loads=loads,
        imbalance=max(served) / statistics.fmean(served),
        ttft_p50=percentile(sim.ttfts, 0.50),
        ttft_p99=percentile(sim.ttfts, 0.99),
        slot_wait_share=sim.slot_waits / len(trace),
    )


def run_workloads(
    quick: bool, seed: int, decode_scale: float = 1.0, only: Sequence[str] = ()
) -> dict[str, dict[str, Result]]:
    results: dict[str, dict[str, Result]] = {}
    chosen = [w for w in workloads(quick) if not only or w.name in only]
    for workload in (dataclasses.replace(w, decode_scale=decode_scale) for w in chosen):
        started = time.perf_counter()
        per_policy = {name: simulate(workload, policy, seed) for name, policy in POLICIES.items()}
        trace = make_trace(workload, seed)
        slots = workload.workers * workload.gpu_slots
        bound = belady_loads([r.adapter for r in trace], slots)
        pooled_lru = lru_loads([r.adapter for r in trace], slots)
        pooled_running = pooled_running_loads(trace, slots, "lru")
        pooled_running_belady = pooled_running_loads(trace, slots, "belady")
        running_mean, over_slots = running_adapters(trace, slots)
        baseline = per_policy["least_loaded"].loads
        for name, result in per_policy.items():
            print(
                f"workload={workload.name} policy={name} hit_rate={result.hit_rate:.4f} "
                f"loads={result.loads} loads_vs_least_loaded={result.loads / baseline:.3f} "
                f"loads_vs_bound={result.loads / bound:.3f} imbalance={result.imbalance:.3f} "
                f"ttft_p50_ms={result.ttft_p50 * 1e3:.1f} ttft_p99_ms={result.ttft_p99 * 1e3:.1f}"
            )
        print(
            f"workload={workload.name} belady_bound_loads={bound} pooled_lru_loads={pooled_lru} "
            f"pooled_lru_vs_bound={pooled_lru / bound:.3f} pooled_lru_running_loads={pooled_running} "
            f"pooled_lru_running_vs_least_loaded={pooled_running / baseline:.3f} "
            f"pooled_belady_running_loads={pooled_running_belady} "
            f"pooled_belady_running_vs_least_loaded={pooled_running_belady / baseline:.3f} "
            f"running_adapters_mean={running_mean:.1f} "
            f"running_adapters_over_slots_time={over_slots:.3f} requests={workload.requests} "
            f"adapters={workload.adapters} workers={workload.workers} gpu_slots={workload.gpu_slots} "
            f"seconds={time.perf_counter() - started:.1f}"
        )
        sys.stdout.flush()
        per_policy["bound"] = Result(1 - bound / workload.requests, bound, 1.0, 0.0, 0.0)
        references = {"pooled_lru_running": pooled_running, "pooled_belady_running": pooled_running_belady}
        for name, loads in references.items():
            per_policy[name] = Result(1 - loads / workload.requests, loads, 1.0, 0.0, 0.0)
        results[workload.name] = per_policy
    return results


def named_head(quick: bool, seed: int, head: int = 128) -> dict[str, Result]:
    """(b) with its `head` most requested adapters named (replicas 1): loraplex with and without spilling."""
    workload = next(w for w in workloads(quick) if w.name == f"zipf_{FLEET_SIZES[0]}")
    counts = Counter(request.adapter for request in make_trace(workload, seed))
    named = [adapter for adapter, _ in counts.most_common(head)]
    results = {}
    for label, spill in (("spill", True), ("no_spill", False)):
        policy = functools.partial(loraplex_policy, named=named, spill=spill)
        result = results[label] = simulate(workload, policy, seed)
        print(
            f"named_head workload=zipf named_adapters={head} replicas=1 policy={label} "
            f"hit_rate={result.hit_rate:.4f} loads={result.loads} imbalance={result.imbalance:.3f} "
            f"ttft_p50_ms={result.ttft_p50 * 1e3:.1f} ttft_p99_ms={result.ttft_p99 * 1e3:.1f}"
        )
    spilled, kept = results["spill"], results["no_spill"]
    print(
        f"named_head spill_imbalance_vs_no_spill={spilled.imbalance / kept.imbalance:.3f} "
        f"spill_ttft_p99_vs_no_spill={spilled.ttft_p99 / kept.ttft_p99:.3f} "
        f"spill_loads_vs_no_spill={spilled.loads / kept.loads:.3f}"
    )
    sys.stdout.flush()
    return results


GOALS = (
    ("gie_hit_rate", ">=", 0.995),
    ("zipf_loads_vs_least_loaded", "<=", 0.75),
    ("zipf_ttft_p99_vs_least_loaded", "<=", 1.1),
    ("zipf_ttft_p99_vs_gaie", "<=", 0.1),
    ("zipf_imbalance", "<=", 1.25),
    ("decision_p99_vs_plain_rendezvous", "<=", 0.2),
)


def summary(results: dict[str, dict[str, Result]], decision_ratio: float) -> str:
    """The last line: each goal's figure at each fleet size (`_10w`, `_100w`), the worst of them under
    the goal's own name, and whether it is met; then the figures kept for comparison."""
    figures: dict[str, dict[int, float]] = {}
    for workers in FLEET_SIZES:
        gie, zipf = results[f"gie_{workers}"], results[f"zipf_{workers}"]
        mine = zipf["loraplex"]
        for key, value in (
            ("gie_hit_rate", gie["loraplex"].hit_rate),
            ("zipf_loads_vs_least_loaded", mine.loads / zipf["least_loaded"].loads),
            ("zipf_ttft_p99_vs_least_loaded", mine.ttft_p99 / zipf["least_loaded"].ttft_p99),
            ("zipf_ttft_p99_vs_gaie", mine.ttft_p99 / zipf["gaie"].ttft_p99),
            ("zipf_imbalance", mine.imbalance),
            ("zipf_slot_wait_share", mine.slot_wait_share),
            ("gie_slot_wait_share", gie["loraplex"].slot_wait_share),
            ("decision_p99_vs_plain_rendezvous", decision_ratio),
            ("zipf_loads_vs_bound", mine.loads / zipf["bound"].loads),
            (
                "zipf_affinity_oracle_loads_vs_least_loaded",
                zipf["affinity_oracle"].loads / zipf["least_loaded"].loads,
            ),
            (
                "zipf_pooled_lru_running_loads_vs_least_loaded",
                zipf["pooled_lru_running"].loads / zipf["least_loaded"].loads,
            ),
            (
                "zipf_pooled_belady_running_loads_vs_least_loaded",
                zipf["pooled_belady_running"].loads / zipf["least_loaded"].loads,
            ),
            ("zipf_ttft_p99_vs_bounded_rendezvous", mine.ttft_p99 / zipf["bounded_rendezvous"].ttft_p99),
            ("zipf_ttft_p50_vs_least_loaded", mine.ttft_p50 / zipf["least_loaded"].ttft_p50),
            ("zipf_ttft_p50_vs_bounded_rendezvous", mine.ttft_p50 / zipf["bounded_rendezvous"].ttft_p50),
            ("gie_hit_rate_gaie", gie["gaie"].hit_rate),
        ):
            figures.setdefault(key, {})[workers] = value
    parts = []
    met = []
    for key, sense, goal in GOALS:
        values = figures[key].values()
        worst = min(values) if sense == ">=" else max(values)
        met.append(worst >= goal if sense == ">=" else worst <= goal)
        parts.append(f"{key}={worst:.4f}")
    for key, per_size in figures.items():
        parts += [f"{key}_{workers}w={value:.4f}" for workers, value in per_size.items()]
    parts.append(f"goals_met={sum(met)}/{len(met)}")
    return " ".join(parts)


# -- decision timing at scale -----------------------------------------------------------------------


def decision_timing(adapters: int, workers: int, samples: int, seed: int) -> tuple[float, float, float]:
    """(p50 us, p99 us, baseline p99 us) of one decision with `adapters` x `workers`."""
    rng = random.Random(seed)
    names = [f"worker-{i:04d}" for i in range(workers)]
    router = make_router(shipped_routing(), seed=seed)
    table = router.table
    for name in names:
        table.add_worker(name)
        table.set_concurrency(name, 16)
    # The head is resident: each worker holds 8 adapters in GPU and 24 in CPU, 2 copies of the hottest.
    head = workers * 32 // 2
    for rank in range(head):
        for copy in range(2):
            worker = names[(rank * 2 + copy) % workers]
            tier = Tier.GPU if (rank * 2 + copy) // workers < 8 else Tier.CPU
            table.set_tier(worker, f"adapter-{rank}", tier)
    for i, name in enumerate(names):
        table.set_reported_load(name, rng.randrange(8) + (i % 3))
    started = time.perf_counter()
    table.rendezvous.warm()
    print(f"decision_setup adapters={adapters} workers={workers} resident_copies={head * 2} "
          f"rendezvous_warm_seconds={time.perf_counter() - started:.2f}")  # fmt: skip
    requests = [
        f"adapter-{r}"
        for r in rng.choices(range(adapters), cum_weights=zipf_cumulative(adapters, 1.1), k=samples)
    ]
    timings = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i, adapter in enumerate(requests):
            start = clock()
            router.decide(adapter, i * 1e-4)
            timings.append(clock() - start)
        baseline = []
        keys = [int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "big") for n in names]
        for adapter in requests[: samples // 20]:
            start = clock()
            plain_rendezvous(adapter, names, keys)
            baseline.append(clock() - start)
    finally:
        gc.enable()
    return (percentile(timings, 0.5) / 1e3, percentile(timings, 0.99) / 1e3, percentile(baseline, 0.99) / 1e3)


def plain_rendezvous(adapter: str, names: Sequence[str], keys: Sequence[int]) -> str:
    """Textbook highest-random-weight: one weight per worker per request."""
    a = int.from_bytes(hashlib.blake2b(adapter.encode(), digest_size=8).digest(), "big")
    mask = (1 << 64) - 1
    best = max(range(len(names)), key=lambda i: ((a ^ keys[i]) * 0x9E3779B97F4A7C15) & mask)
    return names[best]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="The under-a-minute run.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--decode-scale",
        type=float,
        default=1.0,
        help="Multiply every request's length, arrivals unchanged: below 1, fewer requests run at once.",
    )
    parser.add_argument(
        "--only", nargs="+", default=(), metavar="WORKLOAD", help="Run only these workloads (no summary)."
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run_workloads(args.quick, args.seed, args.decode_scale, args.only)
    if args.only:
        return 0
    named_head(args.quick, args.seed)
    samples = 50_000 if args.quick else 200_000
    p50, p99, baseline_p99 = decision_timing(1_000_000, 1_000, samples, args.seed)
    print(
        f"decision adapters=1000000 workers=1000 p50_us={p50:.1f} p99_us={p99:.1f} "
        f"plain_rendezvous_p99_us={baseline_p99:.1f} speedup_p99={baseline_p99 / p99:.1f}x"
    )
    print(f"total_seconds={time.perf_counter() - started:.1f}")
    print(summary(results, p99 / baseline_p99))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

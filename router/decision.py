"""The routing decision: which worker serves a request for an adapter.

In order, among healthy workers whose load stays within the bound (no worker
above ceil((1 + epsilon) x the mean load) once the request is placed) and that
have a free seat (below):

1. a worker holding the adapter in a GPU slot, the least loaded of them (hit "gpu");
2. else one holding it in CPU memory, the least loaded (hit "cpu");
   a hot adapter held in GPU slots on fewer workers than its spread (below)
   takes a holder in 1 or 2 only while that holder stays within the mean
   load, so it gains a copy on a further ranked worker instead of piling onto
   its holders up to the bound;
3. else one of the adapter's first ranked workers by rendezvous hashing: hit
   "disk" if it has the adapter on local disk, else "miss" (the caller has the
   worker's agent load it first). How many of the ranking it may use, k, is 1
   for a cold adapter and grows with its decayed request rate, one worker per
   `hot_rate` requests per second up to `max_spread`, so a hot adapter spreads
   over more workers and shrinks back as it cools. An adapter seen more than
   once lately may use at least `miss_candidates` ranked workers; one seen for
   the first time its first `first_candidates` (affinity, and an even spread
   of the tail, steered off workers whose slots are all busy or loaded).
   Among those: one with fewer than `gpu_slots` adapters in flight first
   (vLLM would make a new adapter wait), then, when no worker has a free seat
   (below), the shortest wait in its engine's queue, then the one whose load
   pushes the coldest adapter out of a GPU slot (a free slot is coldest), then
   the least loaded, then the better ranked;
4. else the next of its ranked workers within the bound, in rank order;
5. else the least-loaded healthy worker (every worker is at the bound).

Derived from the fleet unless set: `hot_rate` is one worker's fair share of the
traffic (the fleet's decayed request rate over its healthy workers, at least
two requests' worth), `max_spread` the ranking depth, at most the healthy
workers. Queueing is a cost: a worker whose load has reached its engine's
concurrency (learned from vLLM's metrics) makes one more request wait, so while
any worker has a free seat it is no candidate for a new copy (3, 4), and a
holder there (1) takes the request only when the wait (its place in the queue
x the mean request time / the concurrency) is shorter than the measured load
time the alternative costs; a copy from CPU memory into a GPU slot (2) evicts
an adapter whose cost the router cannot see, so a holder's queue is preferred
to it. When no worker has a free seat, the balance bound alone decides.

A named adapter (a LoRAAdapter object) takes steps 1 and 2 as above, but its
candidates in step 3 are the workers its placement names (WorkerPlacement
`spec.adapters`), not its ranking: they hold it or have it on disk. When all of
them are at the bound, it spills over: its first ranked workers (as many as a
recurring adapter's step 3 uses) are candidates the same way, and their agents
read its source from the LoRAAdapter; its copies there then serve it through
steps 1 and 2 while they stay in vLLM. Only when those are at the bound too (or
`spill` is off: a retry) does the least loaded of its placement and of its GPU
and CPU holders take the request anyway (`over_bound`: it wants more
`replicas`). When none of its placement is healthy it goes to its ranked
workers as any adapter does.

Steps 1-4 cost O(1) in the number of adapters (index reads) and O(holders +
max(max_spread, miss_candidates, first_candidates) x gpu_slots) in workers; only step 5 and requests
for the base model scan the workers. Pure: no I/O, no clock (`now` is passed in), no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from loraplex.api.tiers import Tier
from loraplex.router.rates import AdapterRates
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.table import WorkerState, WorkerTable

Hit = Literal["gpu", "cpu", "disk", "miss", "base"]  # base: a request for the base model
_HIT: dict[Tier | None, Hit] = {Tier.GPU: "gpu", Tier.CPU: "cpu", Tier.DISK: "disk", None: "miss"}
IN_MEMORY = (Tier.GPU, Tier.CPU)  # the tiers vLLM serves from, fastest first


@dataclass(frozen=True)
class RoutingConfig:
    """Knobs of the routing policy (LORAPLEX_ROUTER_* settings); None / 0: derived from the fleet."""

    epsilon: float = 0.5
    max_spread: int | None = None  # None: the rendezvous depth, at most the healthy workers
    hot_rate: float | None = None  # None: the fleet's request rate per healthy worker (its fair share)
    half_life: float = 10.0
    miss_candidates: int = 3
    first_candidates: int = 1
    max_num_seqs: int = 0  # each engine's concurrency; 0: learned from its vLLM's metrics
    policy: Literal["affinity", "round_robin"] = "affinity"  # round_robin: the benchmarks' baseline only


@dataclass(frozen=True)
class Decision:
    worker: str
    hit: Hit
    spread: int = 1
    over_bound: bool = False  # every worker that could serve it was at the load bound (steps 5, named)


class Router:
    """Decides per request; keeps the per-adapter rates that make hot adapters spread."""

    def __init__(self, table: WorkerTable, config: RoutingConfig | None = None) -> None:
        self.table = table
        self.config = config if config is not None else RoutingConfig()
        if self.config.max_spread is not None and self.config.max_spread > table.rendezvous.depth:
            raise ValueError("max_spread must not exceed the rendezvous depth")
        self.rates = AdapterRates(half_life=self.config.half_life)
        self._turn = 0  # round_robin: requests decided so far
        self._coldest_gpu: dict[str, tuple[int, str, float]] = {}  # worker -> (gpu_changes, adapter, heat)

    def hot_rate(self, now: float) -> float:
        """Requests per second per worker an adapter's spread grows by: the setting, else the fleet's
        decayed request rate over its healthy workers (an adapter above one worker's fair share
        would push its holders above the mean load), and no less than two requests' worth of rate
        (an adapter seen once or twice lately does not spread, however quiet the fleet)."""
        if self.config.hot_rate is not None:
            return self.config.hot_rate
        fair_share = self.rates.total(now) / max(1, self.table.healthy_count)
        return max(fair_share, 2 * self.rates.per_request)  # and seen more than twice lately

    def max_spread(self) -> int:
        """Most workers an adapter spreads over: the setting, else the rendezvous depth, at most the
        healthy workers."""
        if self.config.max_spread is not None:
            return self.config.max_spread
        return max(1, min(self.table.rendezvous.depth, self.table.healthy_count))

    def spread(self, rate: float, now: float) -> int:
        """How many ranked workers an adapter with this request rate may use."""
        hot = self.hot_rate(now)
        if hot <= 0.0:
            return 1
        return max(1, min(self.max_spread(), math.ceil(rate / hot - 1e-9)))

    def decide(
        self,
        adapter: str,
        now: float,
        exclude: Collection[str] = (),
        count: bool = True,
        spill: bool = True,
    ) -> Decision | None:
        """The worker for one request for `adapter` (None when no healthy worker is left).

        `exclude` names workers not to use (a retry after a failure there); `count=False` does not
        count the request towards the adapter's rate (a retry of one already counted); `spill=False`
        keeps a named adapter on its placement and holders even past the bound.
        """
        table = self.table
        if self.config.policy == "round_robin":
            return self._round_robin(adapter, exclude)
        rate = self.rates.observe(adapter, now) if count else self.rates.rate(adapter, now)
        spread = self.spread(rate, now)
        cap = table.capacity(self.config.epsilon)
        queueing = table.free_seats > 0  # a request could start at once somewhere: waiting costs
        workers = table.workers
        holders = table.holders(adapter)
        waiting: tuple[float, str, Tier] | None = None  # the holder a request would wait on the least
        if holders:
            # A hot adapter held on fewer workers than its spread takes a holder only while that
            # holder is at most at the mean load; else it gains a copy on a further ranked worker.
            spreading = spread > 1 and sum(1 for held in holders.values() if held == Tier.GPU) < spread
            holder_cap = min(cap, table.capacity(0.0)) if spreading else cap
            for tier in IN_MEMORY:
                best: str | None = None
                best_load = holder_cap  # within the bound: load + 1 <= cap
                for name, held in holders.items():
                    if held != tier or name in exclude:
                        continue
                    state = workers[name]
                    if state.healthy and state.load < best_load:
                        best, best_load = name, state.load
                if best is None:
                    continue
                if not (queueing and workers[best].queued):
                    return Decision(best, _HIT[tier], spread)
                # At its engine's concurrency the request would wait there: worth it unless a load
                # elsewhere is faster (a CPU holder's copy into a GPU slot counts as no load here).
                waiting = (table.queue_seconds(workers[best]), best, tier)
                break
        placed = table.placed_on(adapter)
        if placed:
            named = self._decide_named(adapter, holders, placed, cap, exclude, now, spread, spill)
            if named is not None:
                return self._or_wait(named, waiting, holders, spread)
        ranking = table.rendezvous.ranking(adapter)
        recurring = rate > 1.5 * self.rates.per_request  # seen before, recently
        width = max(spread, self.config.miss_candidates if recurring else self.config.first_candidates)
        best = self._coldest(ranking[:width], cap, exclude, now)
        if best is None:
            for name in ranking:
                state = workers[name]
                if (
                    state.healthy
                    and state.load < cap
                    and name not in exclude
                    and not (queueing and state.queued)
                ):
                    best = name
                    break
        if best is None and waiting is not None:
            return Decision(waiting[1], _HIT[waiting[2]], spread)
        over_bound = best is None
        if best is None:
            best = least_loaded(table, exclude)
            if best is None:
                return None
        return self._or_wait(
            Decision(best, _HIT[holders.get(best)], spread, over_bound), waiting, holders, spread
        )

    def _round_robin(self, adapter: str, exclude: Collection[str]) -> Decision | None:
        """The benchmarks' baseline: the healthy workers in turn, whatever they hold. O(workers)."""
        names = sorted(
            name for name, state in self.table.workers.items() if state.healthy and name not in exclude
        )
        if not names:
            return None
        self._turn += 1
        name = names[self._turn % len(names)]
        return Decision(name, _HIT[self.table.holders(adapter).get(name)])

    def _or_wait(
        self,
        decision: Decision,
        waiting: tuple[float, str, Tier] | None,
        holders: Mapping[str, Tier],
        spread: int,
    ) -> Decision:
        """A holder where the request would wait, when that wait is shorter than the load the
        decision costs (the measured time from the tier its worker holds the adapter in)."""
        if waiting is None or decision.hit in ("gpu", "base"):
            return decision
        if decision.hit == "cpu" or waiting[0] < self.table.times.load_seconds(decision.hit):
            return Decision(waiting[1], _HIT[waiting[2]], spread)
        return decision

    def _decide_named(
        self,
        adapter: str,
        holders: Mapping[str, Tier],
        placed: Collection[str],
        cap: int,
        exclude: Collection[str],
        now: float,
        spread: int,
        spill: bool,
    ) -> Decision | None:
        """Steps 3-5 for a named adapter: the workers its placement names are the candidates; when all
        of them are at the bound, its first ranked workers beyond them (`spill`); when those are too,
        the least loaded of its placement and holders still serves it (`over_bound`: the adapter wants
        more `replicas`). None when none of its placement is healthy (and not excluded): then the
        adapter's ranked workers are tried."""
        best = self._coldest(sorted(placed), cap, exclude, now)
        if best is None and spill:
            width = max(spread, self.config.miss_candidates)
            ranked = self.table.rendezvous.ranking(adapter)[:width]
            best = self._coldest([name for name in ranked if name not in placed], cap, exclude, now)
        over_bound = best is None
        if best is None:
            serving = {*placed, *(name for name, tier in holders.items() if tier != Tier.DISK)}
            best = least_loaded(self.table, exclude, among=serving)
            if best is None:
                return None
        return Decision(best, _HIT[holders.get(best)], spread, over_bound)

    def _coldest(
        self, candidates: Sequence[str], cap: int, exclude: Collection[str], now: float
    ) -> str | None:
        """Among healthy candidates within the bound (in preference order): one with a free batch
        slot for a new adapter first, then (when no worker has a free seat) the shortest wait in its
        engine's queue, then the one whose load evicts the coldest GPU adapter, then the least
        loaded, then the earlier."""
        table = self.table
        workers = table.workers
        queueing = table.free_seats > 0
        best = None
        best_key: tuple[bool, float, float, int, int] | None = None
        for rank, name in enumerate(candidates):
            state = workers.get(name)
            if state is None or not state.healthy or state.load >= cap or name in exclude:
                continue
            if queueing:
                if state.queued:  # the request would wait there while another could start it
                    continue
                wait = 0.0
            else:  # no seat free anywhere: the shorter wait first, then the colder victim
                wait = table.queue_seconds(state)
            busy = state.slots_busy
            if best_key is not None and (busy, wait) > best_key[:2]:
                continue  # loses before its victim's heat counts (the costlier part of the key)
            key = (busy, wait, self._victim_heat(state, now), state.load, rank)
            if best_key is None or key < best_key:
                best, best_key = name, key
        return best

    def decide_base(self, exclude: Collection[str] = ()) -> Decision | None:
        """A request for the base model: every worker serves it; the least loaded does."""
        best = least_loaded(self.table, exclude)
        return None if best is None else Decision(best, "base")

    def _victim_heat(self, state: WorkerState, now: float) -> float:
        """How hot the adapter a load on this worker would push out of GPU is, as `AdapterRates.heat`
        orders adapters (-inf: a slot is free). O(1) while neither the worker's GPU adapters nor its
        coldest one's rate changed since the last call: an adapter's heat only rises when it is seen,
        so the coldest stays the coldest until it is seen itself."""
        if len(state.gpu) < state.gpu_slots or not state.gpu:
            return -math.inf
        heat = self.rates.heat
        cached = self._coldest_gpu.get(state.name)
        if (
            cached is not None
            and cached[0] == state.gpu_changes
            and cached[1] in state.gpu  # (a worker of the same name added again starts at 0 changes)
            and heat(cached[1]) == cached[2]
        ):
            return cached[2]
        adapter = min(state.gpu, key=heat)
        coldest = heat(adapter)
        self._coldest_gpu[state.name] = (state.gpu_changes, adapter, coldest)
        return coldest


RANKING_DEPTH = 16  # ranked workers kept per adapter: the widest derived spread


def make_router(config: RoutingConfig, seed: int = 0) -> Router:
    """An empty worker table and the router deciding on it, as `loraplex router` builds them (the
    benchmarks build theirs here too, so they measure what users run)."""
    depth = max(RANKING_DEPTH, config.max_spread or 0)
    return Router(WorkerTable(Rendezvous(seed=seed, depth=depth)), config)


def least_loaded(
    table: WorkerTable, exclude: Collection[str] = (), among: Iterable[str] | None = None
) -> str | None:
    """The healthy worker (of `among`, default all) with the lowest load (ties: the first by name).

    O(workers), or O(len(among))."""
    states = table.workers.values() if among is None else (table.workers.get(name) for name in among)
    candidates: Iterable[tuple[int, str]] = (
        (s.load, s.name) for s in states if s is not None and s.healthy and s.name not in exclude
    )
    found = min(candidates, default=None)
    return None if found is None else found[1]

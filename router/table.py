"""The router's worker table: health, load and residency of every worker, indexed per adapter.

What the live sources report (the agents' residency, vLLM's running and waiting
requests, which workers answer) lands here through a few small methods, and
every one of them costs O(what changed): the adapter -> holders index and the
fleet's total load are kept up to date incrementally, so a routing decision
reads them in O(1) in the number of adapters, whatever the catalog's size.

A worker's load is the larger of the requests this router has outstanding on
it and what its vLLM last reported (running + waiting), so other router
replicas' traffic counts too, and this router's own requests count at once.

What queueing costs is kept here too: each worker's engine concurrency (how
many requests its vLLM runs at once, `max_num_seqs` or what its KV cache
allows; a request beyond it waits), the fleet's free seats (requests that
would start at once somewhere), the mean time a request takes, and the
measured time to make an adapter servable from each tier (`LoadTimes`).

Pure data: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from loraplex.api.tiers import Tier
from loraplex.router.rendezvous import Rendezvous


@dataclass
class WorkerState:
    """One worker as the router sees it."""

    name: str
    healthy: bool = True
    inflight: int = 0
    reported: int = 0
    load: int = 0  # max(inflight, reported): set with them (`WorkerTable._set_load`), read on every decision
    gpu_slots: int = 0
    cpu_slots: int = 0
    holds: dict[str, Tier] = field(default_factory=dict)
    gpu: set[str] = field(default_factory=set)  # the adapters of `holds` in GPU slots
    active: dict[str, int] = field(default_factory=dict)  # adapter -> this router's requests in flight
    concurrency: int = 0  # requests its engine runs at once (0: not known yet); one more would wait
    gpu_changes: int = 0  # counts changes to `gpu` (what a cached coldest adapter is checked against)

    @property
    def slots_busy(self) -> bool:
        """Requests of `gpu_slots` distinct adapters are in flight: one more adapter would wait."""
        return 0 < self.gpu_slots <= len(self.active)

    @property
    def queued(self) -> bool:
        """One more request would wait in its engine's queue (its concurrency is known and reached)."""
        return 0 < self.concurrency <= self.load

    @property
    def seats(self) -> int:
        """Requests that would start at once there (0 where its concurrency is not known)."""
        return max(0, self.concurrency - self.load)


class LoadTimes:
    """Seconds to make an adapter servable, per tier it came from ("cpu", "disk", "miss"), and the
    mean seconds a request takes: exponentially weighted means of what was measured (0: none yet)."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.tiers: dict[str, float] = {}
        self.request_seconds = 0.0

    def _mean(self, old: float, sample: float) -> float:
        return sample if old == 0.0 else old + self.weight * (sample - old)

    def record_load(self, tier: str, seconds: float) -> None:
        self.tiers[tier] = self._mean(self.tiers.get(tier, 0.0), max(seconds, 1e-6))

    def record_request(self, seconds: float) -> None:
        self.request_seconds = self._mean(self.request_seconds, max(seconds, 1e-6))

    def load_seconds(self, tier: str) -> float:
        return self.tiers.get(tier, 0.0)


class WorkerTable:
    """Workers, their load and health, and the adapter -> {worker: tier} index."""

    def __init__(self, rendezvous: Rendezvous | None = None) -> None:
        self.rendezvous = rendezvous if rendezvous is not None else Rendezvous()
        self.workers: dict[str, WorkerState] = {}
        self._holders: dict[str, dict[str, Tier]] = {}
        self._named: dict[str, set[str]] = {}  # adapter -> the workers whose placement names it
        self._named_by: dict[str, frozenset[str]] = {}
        self._objects: dict[str, str] = {}  # LoRAAdapter objects of this base model -> their spec digest
        self.total_load = 0  # over healthy workers
        self.healthy_count = 0
        self.free_seats = 0  # over healthy workers: requests that would start at once somewhere
        self.times = LoadTimes()

    # -- workers -------------------------------------------------------------------------------

    def add_worker(self, name: str, healthy: bool = True) -> WorkerState:
        state = self.workers.get(name)
        if state is None:
            state = self.workers[name] = WorkerState(name, healthy=False)
            self.rendezvous.add(name)
            self.set_healthy(name, healthy)
        return state

    def remove_worker(self, name: str) -> None:
        state = self.workers.get(name)
        if state is None:
            return
        self.set_healthy(name, False)
        self.set_residency(name, {})
        self.set_wanted(name, ())
        del self.workers[name]
        self.rendezvous.remove(name)

    def set_healthy(self, name: str, healthy: bool) -> None:
        state = self.workers[name]
        if state.healthy == healthy:
            return
        sign = 1 if healthy else -1
        state.healthy = healthy
        self.healthy_count += sign
        self.total_load += sign * state.load
        self.free_seats += sign * state.seats

    def _set_load(self, state: WorkerState, inflight: int, reported: int) -> None:
        before, seats = state.load, state.seats
        state.inflight, state.reported, state.load = inflight, reported, max(inflight, reported)
        if state.healthy:
            self.total_load += state.load - before
            self.free_seats += state.seats - seats

    def set_concurrency(self, name: str, concurrency: int) -> None:
        """How many requests the worker's engine runs at once (0: not known); one more waits."""
        state = self.workers[name]
        seats = state.seats
        state.concurrency = max(0, concurrency)
        if state.healthy:
            self.free_seats += state.seats - seats

    def set_reported_load(self, name: str, running_and_waiting: int) -> None:
        state = self.workers[name]
        self._set_load(state, state.inflight, max(0, running_and_waiting))

    def begin(self, name: str, adapter: str | None = None) -> None:
        """One more request of this router (for `adapter`; None: the base model) is outstanding there."""
        state = self.workers[name]
        self._set_load(state, state.inflight + 1, state.reported)
        if adapter is not None:
            state.active[adapter] = state.active.get(adapter, 0) + 1

    def end(self, name: str, adapter: str | None = None) -> None:
        """A request `begin` counted has finished (a no-op for a worker removed since)."""
        state = self.workers.get(name)
        if state is None:
            return
        self._set_load(state, max(0, state.inflight - 1), state.reported)
        if adapter is not None and adapter in state.active:
            left = state.active[adapter] - 1
            if left:
                state.active[adapter] = left
            else:
                del state.active[adapter]

    def waits_for_slot(self, name: str, adapter: str) -> bool:
        """Whether a request for `adapter` sent to worker `name` now would wait for a GPU slot: every
        slot is taken by another adapter with requests in flight (this router's; where its slots are
        known)."""
        state = self.workers.get(name)
        return state is not None and adapter not in state.active and state.slots_busy

    def queue_seconds(self, state: WorkerState) -> float:
        """About how long one more request would wait on the worker: its place in the queue times
        the mean request time over the engine's concurrency (inf when no request time is known)."""
        if not state.queued:
            return 0.0
        per_request = self.times.request_seconds
        if per_request == 0.0:
            return math.inf
        return (state.load - state.concurrency + 1) * per_request / state.concurrency

    def capacity(self, epsilon: float) -> int:
        """The most requests a healthy worker may have with one more placed: ceil((1+eps) x mean)."""
        if self.healthy_count == 0:
            return 0
        return math.ceil((1 + epsilon) * (self.total_load + 1) / self.healthy_count)

    # -- residency -----------------------------------------------------------------------------

    def set_residency(
        self,
        name: str,
        holds: Mapping[str, Tier],
        gpu_slots: int | None = None,
        cpu_slots: int | None = None,
    ) -> None:
        """What the worker holds now, per tier (its agent's report); updates the index by the diff."""
        state = self.workers[name]
        if gpu_slots is not None:
            state.gpu_slots = gpu_slots
        if cpu_slots is not None:
            state.cpu_slots = cpu_slots
        old = state.holds
        for adapter in [a for a in old if a not in holds]:
            self.set_tier(name, adapter, None)
        for adapter, tier in holds.items():
            if old.get(adapter) != tier:
                self.set_tier(name, adapter, tier)

    def set_tier(self, name: str, adapter: str, tier: Tier | None) -> None:
        """One adapter moved on one worker (None: it no longer holds it). O(1)."""
        state = self.workers[name]
        if tier is None:
            if state.holds.pop(adapter, None) is None:
                return
            if adapter in state.gpu:
                state.gpu.discard(adapter)
                state.gpu_changes += 1
            holders = self._holders[adapter]
            del holders[name]
            if not holders:
                del self._holders[adapter]
            return
        state.holds[adapter] = tier
        if (tier == Tier.GPU) != (adapter in state.gpu):
            state.gpu_changes += 1
            if tier == Tier.GPU:
                state.gpu.add(adapter)
            else:
                state.gpu.discard(adapter)
        self._holders.setdefault(adapter, {})[name] = tier

    def holders(self, adapter: str) -> Mapping[str, Tier]:
        """Workers holding the adapter, with the tier each holds it in (empty when none)."""
        return self._holders.get(adapter, _EMPTY)

    def resident_adapters(self) -> Iterable[str]:
        return self._holders.keys()

    # -- named adapters (the head: LoRAAdapter objects) -----------------------------------------

    def set_wanted(self, name: str, adapters: Iterable[str]) -> None:
        """The named adapters the worker's placement asks for (spec.adapters of its WorkerPlacement)."""
        new = frozenset(adapters)
        old = self._named_by.get(name, frozenset())
        for adapter in old - new:
            placed = self._named[adapter]
            placed.discard(name)
            if not placed:
                del self._named[adapter]
        for adapter in new - old:
            self._named.setdefault(adapter, set()).add(name)
        if new:
            self._named_by[name] = new
        else:
            self._named_by.pop(name, None)

    def set_adapter_object(self, adapter: str, sha256: str | None) -> None:
        """A LoRAAdapter object of this base model exists with this digest (None: it is gone)."""
        if sha256 is None:
            self._objects.pop(adapter, None)
        else:
            self._objects[adapter] = sha256

    def adapter_objects(self) -> Collection[str]:
        return self._objects.keys()

    def object_revision(self, adapter: str) -> str | None:
        """The digest the adapter's LoRAAdapter asks for (None: no object seen)."""
        return self._objects.get(adapter)

    def is_named(self, adapter: str) -> bool:
        """A LoRAAdapter object: placed somewhere, or seen by the LoRAAdapter watch (replicas 0 too)."""
        return adapter in self._named or adapter in self._objects

    def placed_on(self, adapter: str) -> Collection[str]:
        """The workers whose placement names the adapter (empty for catalog adapters): only their
        agents know a named adapter's source, so only they can load it."""
        return self._named.get(adapter, _NOWHERE)

    def named_adapters(self) -> Iterable[str]:
        return self._named.keys() | self._objects.keys()


_EMPTY: Mapping[str, Tier] = {}
_NOWHERE: frozenset[str] = frozenset()

"""Adapter placement planner: decides which worker holds each copy of each LoRA adapter, and in which tier.

A worker pod has three tiers of slots: GPU (vLLM ``max_loras``), CPU (``max_cpu_loras``) and Disk. Every copy
of an adapter sits on one worker in one tier. This module is pure: frozen dataclasses in, plain data out, no
Kubernetes client, no I/O, no clock and no unseeded randomness, so the same input always gives the same
placement. Workers are laid on a consistent-hash ring (stable blake2b/crc32 hashes, never Python's salted
``hash()``); a copy goes to the first worker clockwise from its adapter's point that has a free slot in
the wanted tier (bounded load), preferring a new zone, then a new node, for each further replica. A full
plan ranks adapters (pinned, then priority, then warmth) and hands the fastest tiers to the best-ranked
copies while keeping every current copy that is still valid; the incremental ``Planner`` methods touch only
the copies that an event concerns, and ``rebalance`` evens load in bounded steps. Incrementally, a change of
an adapter's standing (pinned, priority, warmth) moves its own copies across tiers on their workers, and a
new copy that finds every tier full takes the slot of a copy of lower standing, which is re-placed in turn.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import heapq
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from operator import attrgetter
from types import MappingProxyType
from typing import NamedTuple

from loraplex.api.tiers import TierRank

# Where a copy lives on its worker, as a position in speed order (a lower value is a faster tier):
# the planner indexes per-tier arrays with it. Its wire form is ``Tier.tier`` (loraplex.api.tiers).
Tier = TierRank
TIERS = tuple(TierRank)

# Ring steps tried before falling back to rendezvous hashing over the workers that still have a free slot.
WALK_LIMIT = 64
DEFAULT_VNODES = 64
DEFAULT_MAX_REBALANCE_MOVES = 256
# Full-plan passes at most while a plan is not yet a fixed point of re-planning (see Planner.plan_all).
MAX_SETTLE_PASSES = 4


@dataclass(frozen=True, slots=True)
class Worker:
    """A GPU worker pod. An unhealthy worker is treated as absent: it holds nothing."""

    name: str
    node: str
    zone: str
    gpu_slots: int
    cpu_slots: int
    disk_slots: int
    healthy: bool = True

    def slots(self) -> tuple[int, int, int]:
        """Slots per tier, indexed by ``Tier``."""
        return (self.gpu_slots, self.cpu_slots, self.disk_slots)


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter and how many copies it needs.

    ``replicas`` is the exact number of copies wanted (0 means none: existing copies are removed).
    ``warmth`` is higher for more recently used adapters and breaks priority ties; ``pinned`` adapters must
    hold GPU slots.
    """

    key: str
    replicas: int = 1
    priority: int = 0
    pinned: bool = False
    warmth: float = 0.0

    def rank(self) -> tuple[bool, int, float, str]:
        """Ordering used for tiers and eviction: bigger ranks win faster tiers and are evicted last."""
        return (self.pinned, self.priority, self.warmth, self.key)

    def standing(self) -> tuple[bool, int, float]:
        """The rank without its name: a copy gives way to another only if that one stands higher."""
        return (self.pinned, self.priority, self.warmth)


class MoveKind(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    RETIER = "retier"


class Move(NamedTuple):
    """One action on one copy. A relocation is a REMOVE on the old worker plus an ADD on the new one.

    Copies on a worker that is gone or unhealthy vanish without a REMOVE: there is nothing left to act on.
    """

    kind: MoveKind
    adapter: str
    worker: str
    tier: Tier | None
    from_tier: Tier | None


PlacementView = Mapping[str, Mapping[str, Tier]]


def moved_copies(moves: Sequence[Move]) -> int:
    """Copies touched by ``moves``: a relocation (REMOVE plus ADD of one adapter) counts once."""
    adds: dict[str, int] = {}
    removes: dict[str, int] = {}
    retiers = 0
    for move in moves:
        if move.kind is MoveKind.RETIER:
            retiers += 1
        elif move.kind is MoveKind.ADD:
            adds[move.adapter] = adds.get(move.adapter, 0) + 1
        else:
            removes[move.adapter] = removes.get(move.adapter, 0) + 1
    keys = adds.keys() | removes.keys()
    return retiers + sum(max(adds.get(key, 0), removes.get(key, 0)) for key in keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """The target placement (adapter key -> worker name -> tier), the moves to reach it, and what is missing.

    ``missing`` maps adapter keys to the number of copies that capacity could not hold.
    """

    placement: PlacementView
    moves: Sequence[Move]
    missing: Mapping[str, int]

    def counts(self) -> dict[str, int]:
        """Move and copy counts, for logs and metrics."""
        kinds = dict.fromkeys(MoveKind, 0)
        for move in self.moves:
            kinds[move.kind] += 1
        per_tier = [0, 0, 0]
        for copies in self.placement.values():
            for tier in copies.values():
                per_tier[tier] += 1
        return {
            "adds": kinds[MoveKind.ADD],
            "removes": kinds[MoveKind.REMOVE],
            "retiers": kinds[MoveKind.RETIER],
            "moved_copies": moved_copies(self.moves),
            "gpu_copies": per_tier[Tier.GPU],
            "cpu_copies": per_tier[Tier.CPU],
            "disk_copies": per_tier[Tier.DISK],
            "missing_copies": sum(self.missing.values()),
        }


def plan(
    workers: Iterable[Worker],
    adapters: Iterable[Adapter],
    current: PlacementView | None = None,
    *,
    vnodes: int = DEFAULT_VNODES,
) -> Plan:
    """Plan the whole fleet from scratch (or from ``current``, keeping what is still valid)."""
    return Planner(workers, vnodes=vnodes).plan_all(adapters, current)


def ring_point(text: str) -> int:
    """A stable 32-bit point on the ring for a worker's virtual node."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def adapter_point(key: str) -> int:
    """A stable 32-bit point on the ring for an adapter: crc32, which is fast and spreads keys evenly."""
    return zlib.crc32(key.encode())


class Planner:
    """Holds the fleet's placement and the indexes that make each change cost what it touches.

    Indexes: the copies per worker per tier, the workers with a free slot per tier, free slots per tier, and
    the ring. ``plan_all`` gives the fleet's fastest tiers to its best-ranked copies (a copy falls to another
    tier only when spread or capacity leave no room). The incremental methods repair first and reorder
    later: a re-placed copy takes the fastest free slot, or the GPU slot of a colder copy on the worker the
    ring picks (that copy drops to the worker's fastest free slower tier); any tier order left imperfect is
    restored per worker by ``rebalance`` and fleet-wide by the next ``plan_all``.

    Cost (N adapters, W workers, V ring points per worker, c copies concerned): ``plan_all`` is O(N) to
    group adapters plus a sort of those that compete for GPU/CPU slots, and O(1) expected per copy (a
    bounded ring walk; an O(W) rendezvous scan only when a tier is nearly full); ``worker_lost`` is
    O(c log c) for the copies that lived there; ``adapter_changed``/``adapter_removed`` are O(replicas)
    plus retrying missing copies; with every tier full, a copy that takes the slot of a lower one looks at
    up to WALK_LIMIT workers, each a scan of its copies cached until that worker changes;
    ``worker_added`` rebuilds the ring in O(W V log WV); ``rebalance(m)`` is O(W log W) plus O(m) copy
    moves, each scanning one donor worker's copies.
    """

    def __init__(
        self,
        workers: Iterable[Worker],
        *,
        vnodes: int = DEFAULT_VNODES,
        max_rebalance_moves: int = DEFAULT_MAX_REBALANCE_MOVES,
    ) -> None:
        self._vnodes = vnodes
        self.max_rebalance_moves = max_rebalance_moves
        self._workers: dict[str, Worker] = {}
        self._capacity: dict[str, tuple[int, int, int]] = {}
        self._resident: dict[str, tuple[dict[str, None], dict[str, None], dict[str, None]]] = {}
        self._free_workers: tuple[dict[str, None], dict[str, None], dict[str, None]] = ({}, {}, {})
        self._tier_free = [0, 0, 0]
        self._zone_workers: dict[str, int] = {}
        self._placement: dict[str, dict[str, Tier]] = {}
        self._adapters: dict[str, Adapter] = {}
        self._missing: dict[str, int] = {}
        self._dirty: dict[str, None] = {}
        # worker -> its copy to give way first (see _lowest_standing); dropped when the worker changes
        self._lowest: dict[str, tuple[str, Tier] | None] = {}
        self._settled = True  # the last full-plan pass put every copy in the tier its rank was due
        self._ring_points: list[int] = []
        self._points_of: dict[str, list[tuple[int, str]]] = {}
        self._ring_owners: list[str] = []
        for worker in sorted(workers, key=lambda w: w.name):
            if worker.healthy and worker.name not in self._workers:
                self._admit(worker)
        self._rebuild_ring()

    # ----------------------------------------------------------------- views

    @property
    def placement(self) -> PlacementView:
        """A live, read-only view of the placement; copy it to keep a snapshot across later changes."""
        return MappingProxyType(self._placement)

    @property
    def missing(self) -> Mapping[str, int]:
        return MappingProxyType(self._missing)

    def load(self, worker: str) -> tuple[int, int, int]:
        """Copies per tier on ``worker``."""
        gpu, cpu, disk = self._resident[worker]
        return (len(gpu), len(cpu), len(disk))

    # ------------------------------------------------------------ full plan

    def plan_all(self, adapters: Iterable[Adapter], current: PlacementView | None = None) -> Plan:
        """Replace all adapter state with a plan for ``adapters``, keeping valid copies of ``current``.

        The result is a fixed point: planning again from it moves nothing. One pass usually is one;
        when a copy had to take a tier other than the one its rank was due (spread or capacity left
        no slot there), keeping it can shift what a re-plan keeps, so the plan is re-planned from its
        own output until nothing moves (a few passes at most), and the moves are those from
        ``current`` to that final placement. A copy still missing then takes the slot of a copy of
        lower standing, as after an ``adapter_changed`` (the ranked passes hand out each tier's budget by
        position, so a copy that missed its slot could leave a lower-standing copy holding one).
        """
        listed = adapters if isinstance(adapters, list) else list(adapters)
        current = current or {}
        with _collector_paused():
            moves = self._plan_pass(listed, current)
            lifted = self._lift_into_free_faster_slots()
            passes, diff = 1, lifted
            while (lifted or not self._settled) and passes < MAX_SETTLE_PASSES:
                first = {key: dict(copies) for key, copies in self._placement.items()}
                self._plan_pass(listed, first)
                lifted = self._lift_into_free_faster_slots()
                passes, diff = passes + 1, True
                if self._placement == first:
                    break
            while self._retry_missing():  # each round places copies of strictly higher standing
                diff = True
            if diff:
                moves = placement_moves(current, self._placement, self._workers)
        return Plan(self.placement, moves, self.missing)

    def _lift_into_free_faster_slots(self) -> bool:
        """Move copies left in a slower tier into GPU/CPU slots the ranked passes left free, best rank first.

        Those passes hand each tier's budget out by rank position, so a copy that spread pushed to a
        slower tier (its free GPU slots were on workers holding its siblings) leaves a GPU slot that no
        later copy was due: without this a pinned adapter could sit on Disk beside a free GPU slot. A
        copy goes up on its own worker, else to the worker ``_find_worker`` picks (a fresh plan has
        loaded nothing yet). Costs nothing when the fast tiers are full (the fleets of the benchmark);
        else O(adapters) plus a sort of the adapters that compete for them.
        """
        moved = False
        fast = (Tier.GPU, Tier.CPU)
        if not any(self._tier_free[tier] for tier in fast):
            return False
        for adapter in self._placement_order():
            copies = self._placement.get(adapter.key)
            if not copies:
                continue
            for worker, tier in sorted(copies.items(), key=lambda item: (-item[1], item[0])):
                for faster in TIERS[:tier]:
                    if self._tier_free[faster] <= 0:
                        continue
                    target = worker if self._has_free(worker, faster) else None
                    if target is None:
                        siblings = {w: t for w, t in copies.items() if w != worker}
                        target = self._find_worker(adapter_point(adapter.key), faster, siblings)
                    if target is None:
                        continue
                    self._vacate(adapter.key, worker, tier)
                    self._occupy(adapter.key, target, faster)
                    moved = True
                    break
            if not any(self._tier_free[tier] for tier in fast):
                break
        self._dirty = {}
        return moved

    def adopt(self, adapters: Iterable[Adapter], current: PlacementView) -> Plan:
        """Take ``current`` over as it stands (an operator restart resuming what the cluster records).

        Every copy on a live worker keeps its worker and its tier where the tier has room (else the
        fastest slower tier there with room); then only what no longer fits the adapters is repaired:
        copies of unknown adapters and surplus copies (the slowest) go, missing copies take free slots
        first, pinned ones are lifted to GPU, and a copy still missing then takes the slot of a copy of
        lower standing, as it would have with an operator running (an adapter created or raised while
        none ran does not wait for the next change to the fleet). Nothing is
        re-ranked, so copies of equal standing stay in the tiers the incremental changes gave them
        (``plan_all`` would hand the tiers out afresh by rank and input order and could demote warm
        copies), and a restart moves nothing the cluster did not change. Only a copy standing strictly
        higher than one in a faster tier on its worker swaps with it (a priority changed meanwhile).
        Adapters of higher standing keep their copies first when capacity shrank. O(copies) plus a
        sort of the adapters by rank.
        """
        listed = sorted(adapters, key=Adapter.rank, reverse=True)
        self._clear_copies()
        self._adapters = {adapter.key: adapter for adapter in listed}
        moves: list[Move] = []
        for adapter in listed:
            self._adopt_copies(adapter, current.get(adapter.key) or {}, moves)
        for key, copies in current.items():
            moves.extend(self._removals(key, copies, self._placement.get(key, {})))
        for adapter in listed:
            for _ in range(self._wanted(adapter) - len(self._placement.get(adapter.key, {}))):
                self._place_copy(adapter, moves, take_from_lower=False)
            for _ in range(adapter.replicas - self._wanted(adapter)):
                self._record_missing(adapter.key)
            if adapter.pinned and adapter.key in self._placement:
                moves.extend(self._promote_pinned(adapter))
        while retried := self._retry_missing():  # each round places copies of strictly higher standing
            moves.extend(retried)
        for worker in sorted(self._workers):
            self._order_by_standing(worker, moves)
        self._dirty = {}
        return Plan(self.placement, moves, self.missing)

    def _order_by_standing(self, worker: str, moves: list[Move]) -> None:
        """Swap copies on ``worker`` while one in a slower tier stands strictly higher than one in a
        faster tier (a priority changed while no operator ran); equal standing never swaps."""
        swapped = True
        while swapped:  # each swap lifts a higher standing: it ends
            swapped = False
            for faster, slower in ((Tier.GPU, Tier.CPU), (Tier.CPU, Tier.DISK), (Tier.GPU, Tier.DISK)):
                best = self._hottest(worker, slower)
                victim = self._coldest_unpinned(worker, faster)
                if best is None or victim is None:
                    continue
                if self._adapters[victim].standing() < self._adapters[best].standing():
                    self._swap(best, victim, worker, faster, slower, moves)
                    swapped = True

    def _adopt_copies(self, adapter: Adapter, copies: Mapping[str, Tier], moves: list[Move]) -> None:
        """Keep up to the wanted number of ``copies`` (fastest first) where their worker has room."""
        kept, wanted = 0, self._wanted(adapter)
        for worker, tier in sorted(copies.items(), key=lambda item: (item[1], item[0])):
            if kept >= wanted:
                break
            if worker not in self._workers:
                continue
            fits = self._fastest_free_tier(worker, tier)
            if fits is None:
                continue
            self._occupy(adapter.key, worker, fits)
            if fits != tier:
                moves.append(Move(MoveKind.RETIER, adapter.key, worker, fits, tier))
            kept += 1

    def _plan_pass(self, listed: list[Adapter], current: PlacementView) -> list[Move]:
        """One planning pass from ``current``; sets ``_settled`` False when a copy fell to an undue tier."""
        self._clear_copies()
        self._settled = True
        self._adapters = dict(zip(map(attrgetter("key"), listed), listed, strict=True))
        order = self._placement_order()
        bounds = self._tier_bounds()
        moves: list[Move] = []
        if current:
            self._keep_valid_copies(order, bounds, current)
        self._place_ranked(order, bounds, current, moves)
        for key, copies in current.items():
            adapter = self._adapters.get(key)
            if adapter is None or not self._wanted(adapter):
                moves.extend(self._removals(key, copies, {}))
        self._dirty = {}
        return moves

    def _clear_copies(self) -> None:
        self._placement = {}
        self._missing = {}
        self._dirty = {}
        self._lowest = {}
        self._free_workers = ({}, {}, {})
        for name, capacity in self._capacity.items():
            self._resident[name] = ({}, {}, {})
            for tier in TIERS:
                if capacity[tier] > 0:
                    self._free_workers[tier][name] = None
        self._tier_free = [sum(capacity[tier] for capacity in self._capacity.values()) for tier in TIERS]

    def _tier_bounds(self) -> tuple[int, int, int]:
        """Cumulative copy counts at which the GPU, CPU and Disk budgets of the fleet run out."""
        gpu, cpu, disk = self._tier_free
        return (gpu, gpu + cpu, gpu + cpu + disk)

    def _wanted(self, adapter: Adapter) -> int:
        return max(0, min(adapter.replicas, len(self._workers)))

    def _placement_order(self) -> list[Adapter]:
        """Adapters in placement order: ranked where ranking decides a tier, input order below that.

        Only copies that compete for GPU/CPU slots (or for any slot, when the fleet is too small) need an
        exact order; the rest all land on Disk, so sorting them would be wasted time.
        """
        groups: dict[tuple[bool, int], list[Adapter]] = {}
        total = 0
        live = len(self._workers)
        for adapter in self._adapters.values():
            wanted = adapter.replicas if adapter.replicas < live else live
            if wanted > 0:
                total += wanted
                groups.setdefault((adapter.pinned, adapter.priority), []).append(adapter)
            elif adapter.replicas > 0:
                self._missing[adapter.key] = adapter.replicas
        gpu_and_cpu, _, all_slots = self._tier_bounds()
        must_rank = all_slots if total > all_slots else gpu_and_cpu
        order: list[Adapter] = []
        ranked_copies = 0
        for group_key in sorted(groups, reverse=True):
            group = groups[group_key]
            if ranked_copies < must_rank:
                # Stable sort: equal warmth keeps input order, so the same input gives the same plan.
                group.sort(key=attrgetter("warmth"), reverse=True)
                ranked_copies += sum(self._wanted(adapter) for adapter in group)
            order.extend(group)
        return order

    def _keep_valid_copies(
        self, order: list[Adapter], bounds: tuple[int, int, int], current: PlacementView
    ) -> None:
        """First pass: each current copy on a live worker, in its rightful tier and within capacity, stays."""
        index = 0
        for adapter in order:
            wanted = self._wanted(adapter)
            desired = desired_tiers(index, wanted, bounds)
            index += wanted
            copies = current.get(adapter.key)
            if not copies:
                continue
            # The i-th fastest live copy is right if it sits in the i-th fastest tier the adapter is due. A
            # copy faster than the tier due next is one an earlier plan put there for want of a slower slot:
            # it must not take a due tier from its siblings, or re-planning that plan's own output would hand
            # their slots to other adapters. It stays out of the matching (pass two may still reuse it).
            live = sorted((tier, worker) for worker, tier in copies.items() if worker in self._workers)
            due = iter(desired)
            tier_due = next(due, None)
            for tier, worker in live:
                if tier_due is None:
                    break
                if tier < tier_due:
                    self._settled = False
                    continue
                if tier == tier_due and self._has_free(worker, tier):
                    self._occupy(adapter.key, worker, tier)
                tier_due = next(due, None)

    def _place_ranked(
        self, order: list[Adapter], bounds: tuple[int, int, int], current: PlacementView, moves: list[Move]
    ) -> None:
        """Second pass, in rank order: reuse leftover current copies, then place the rest on the ring.

        New single-copy adapters (nearly all of a fleet) take an inlined fast path: the first ring point's
        worker usually has a free slot in the wanted tier. Anything else goes through the general path.
        """
        live = len(self._workers)
        points, size = self._ring_points, len(self._ring_owners)
        owners = self._ring_owners + self._ring_owners[:1]  # index ``size`` wraps round to the first point
        placement, tier_free = self._placement, self._tier_free
        slots_in = [{name: resident[tier] for name, resident in self._resident.items()} for tier in TIERS]
        capacity_in = [{name: capacity[tier] for name, capacity in self._capacity.items()} for tier in TIERS]
        add, append = MoveKind.ADD, moves.append
        # Ring positions for every adapter, computed by C-level maps rather than per-adapter bytecode.
        keys = map(attrgetter("key"), order)
        positions = map(partial(bisect.bisect_left, points), map(zlib.crc32, map(str.encode, keys)))
        new_move = tuple.__new__  # Move(...) without the Python-level __new__ of NamedTuple
        fresh = not current  # then nothing was kept, and every key is seen once
        index = 0
        tier, bound = Tier.DISK, -1.0  # the tier due at ``index``, valid while index < bound
        for adapter, position in zip(order, positions, strict=True):
            key = adapter.key
            if adapter.replicas == 1 and (fresh or (key not in current and key not in placement)):
                if index >= bound:
                    tier = desired_tiers(index, 1, bounds)[0]
                    bound = bounds[tier] if tier is not Tier.DISK else math.inf
                    free, slots_of, capacity_of = self._free_workers[tier], slots_in[tier], capacity_in[tier]
                index += 1
                if size and tier_free[tier] > 0:
                    owner = owners[position]
                    if owner in free:
                        placement[key] = {owner: tier}
                        slots = slots_of[owner]
                        slots[key] = None
                        tier_free[tier] -= 1
                        if len(slots) >= capacity_of[owner]:
                            del free[owner]
                        append(new_move(Move, (add, key, owner, tier, None)))
                        continue
                self._place_first_copy(key, [tier], moves)
                continue
            wanted = adapter.replicas if adapter.replicas < live else live
            self._place_adapter(adapter, desired_tiers(index, wanted, bounds), current, moves)
            index += wanted

    def _place_adapter(
        self, adapter: Adapter, desired: list[Tier], current: PlacementView, moves: list[Move]
    ) -> None:
        key = adapter.key
        copies = current.get(key) or {}
        placed = self._placement.get(key, {})
        for tier in placed.values():
            desired.remove(tier)
        leftovers = {w: t for w, t in copies.items() if w in self._workers and w not in placed}
        shortfall = adapter.replicas - len(placed) - len(desired)
        for tier in desired:
            self._place_copy_from(key, tier, leftovers, moves)
        for _ in range(shortfall):
            self._record_missing(key)
        moves.extend(self._removals(key, leftovers, self._placement.get(key, {})))

    def _place_first_copy(self, key: str, desired: list[Tier], moves: list[Move]) -> None:
        """The copy of a new single-copy adapter whose first ring point had no room."""
        if not desired:
            self._record_missing(key)
            return
        point = adapter_point(key)
        for candidate in fallback_tiers(desired[0]):
            worker = self._find_worker(point, candidate, {})
            if worker is not None:
                self._settled &= candidate == desired[0]
                self._occupy(key, worker, candidate)
                moves.append(Move(MoveKind.ADD, key, worker, candidate, None))
                return
        self._record_missing(key)

    def _place_copy_from(self, key: str, tier: Tier, leftovers: dict[str, Tier], moves: list[Move]) -> None:
        """Place one copy in ``tier`` or the next tier that fits, reusing a leftover current copy first."""
        point = adapter_point(key)
        for candidate in fallback_tiers(tier):
            # Leftovers already in the candidate tier first: reusing them moves nothing.
            for reused, old_tier in sorted(leftovers.items(), key=lambda item: (item[1] != candidate, item)):
                if self._has_free(reused, candidate):
                    self._settled &= candidate == tier
                    del leftovers[reused]
                    self._occupy(key, reused, candidate)
                    if old_tier != candidate:
                        moves.append(Move(MoveKind.RETIER, key, reused, candidate, old_tier))
                    return
            worker = self._find_worker(point, candidate, self._placement.get(key, {}))
            if worker is not None:
                self._settled &= candidate == tier
                self._occupy(key, worker, candidate)
                moves.append(Move(MoveKind.ADD, key, worker, candidate, None))
                return
        self._record_missing(key)

    def _removals(self, key: str, copies: Mapping[str, Tier], kept: Mapping[str, Tier]) -> list[Move]:
        return [
            Move(MoveKind.REMOVE, key, worker, None, tier)
            for worker, tier in sorted(copies.items())
            if worker in self._workers and worker not in kept
        ]

    # ----------------------------------------------------- incremental API

    def worker_lost(self, name: str) -> list[Move]:
        """Re-place the copies that lived on ``name``; nothing else moves bar GPU slots they displace."""
        if name not in self._workers:
            return []
        lost = [(key, tier) for tier in TIERS for key in self._resident[name][tier]]
        self._evict_worker(name)
        for key, _ in lost:
            del self._placement[key][name]
        lost.sort(key=lambda item: (self._adapters[item[0]].rank(), -item[1]), reverse=True)
        moves: list[Move] = []
        for key, _ in lost:
            adapter = self._adapters[key]
            if len(self._placement.get(key, {})) < self._wanted(adapter):
                self._place_copy(adapter, moves, take_from_lower=False)
            else:
                self._record_missing(key)
        for key, _ in lost:
            if not self._placement.get(key, True):
                del self._placement[key]
        return moves

    def worker_added(self, worker: Worker) -> list[Move]:
        """Admit ``worker``, place copies that were missing, then rebalance in bounded steps."""
        return self.workers_added([worker])

    def workers_added(self, workers: Iterable[Worker], *, rebalance_step: bool = True) -> list[Move]:
        """Admit several workers at once: one ring rebuild, one retry of missing copies, one rebalance.

        A fleet coming up adds hundreds of workers in a pass; admitting them one by one would rebuild
        the ring (and rebalance) once per worker. ``rebalance_step=False`` leaves the rebalance to the
        caller, which then bounds the pass's rebalancing by one budget, not two.
        """
        fresh = [worker for worker in workers if worker.healthy]
        for worker in fresh:
            if worker.name in self._workers:
                raise ValueError(f"worker {worker.name!r} is already in the fleet")
        if not fresh:
            return []
        for worker in fresh:
            self._admit(worker)
        self._rebuild_ring()
        moves = self._retry_missing()
        if rebalance_step:
            moves.extend(self.rebalance())
        return moves

    def adapter_changed(self, adapter: Adapter) -> list[Move]:
        """Apply a new or changed adapter: add or drop copies to match replicas, and honour pinning.

        A change of priority or warmth moves the adapter's own copies across tiers on their workers
        (above copies that now stand lower, below those that now stand higher), and copies that found
        no slot are retried, so one now standing higher than a placed copy takes its slot.
        """
        key = adapter.key
        before = self._adapters.get(key)
        self._adapters[key] = adapter
        self._missing.pop(key, None)
        if adapter.replicas > len(self._workers):
            self._missing[key] = adapter.replicas - len(self._workers)
        copies = self._placement.get(key, {})
        moves: list[Move] = []
        surplus = len(copies) - self._wanted(adapter)
        if surplus > 0:
            slowest = sorted(copies.items(), key=lambda item: (item[1], item[0]), reverse=True)[:surplus]
            for worker, tier in slowest:
                self._vacate(key, worker, tier)
                moves.append(Move(MoveKind.REMOVE, key, worker, None, tier))
            if not self._placement[key]:
                del self._placement[key]
        for _ in range(-surplus):
            self._place_copy(adapter, moves)
        if adapter.pinned and key in self._placement:
            moves.extend(self._promote_pinned(adapter))
        restanding = before is not None and before.standing() != adapter.standing()
        if before is not None and restanding:
            for worker in self._placement.get(key, {}):
                self._lowest.pop(worker, None)
            if key in self._placement:
                self._restand(adapter, before.standing(), moves)
        if surplus > 0 or (restanding and self._missing):
            moves.extend(self._retry_missing())
        return moves

    def adapter_removed(self, key: str) -> list[Move]:
        """Drop every copy of ``key`` and use the freed slots for copies that were missing."""
        self._adapters.pop(key, None)
        self._missing.pop(key, None)
        moves: list[Move] = []
        for worker, tier in sorted(self._placement.get(key, {}).items()):
            self._vacate(key, worker, tier)
            moves.append(Move(MoveKind.REMOVE, key, worker, None, tier))
        self._placement.pop(key, None)
        moves.extend(self._retry_missing())
        return moves

    def rebalance(self, max_moves: int | None = None) -> list[Move]:
        """Move at most ``max_moves`` copies towards even load, then fix tier order on touched workers."""
        budget = self.max_rebalance_moves if max_moves is None else max_moves
        moves = self._even_out_load(budget)
        budget -= moved_copies(moves)
        moves.extend(self._reorder_dirty_workers(budget))
        return moves

    # ------------------------------------------------ incremental internals

    def _place_copy(self, adapter: Adapter, moves: list[Move], *, take_from_lower: bool = True) -> None:
        """Place one more copy: a free slot in the fastest tier, or a GPU slot won from a colder copy.

        With every tier full, the slot of a copy of lower standing (``take_from_lower``), which is then
        placed the same way in turn: the copies of lowest standing are the ones left missing, each step
        down strictly lower. Re-placing a lost worker's copies takes none, so a loss moves only its copies.
        """
        displaced: Adapter | None = adapter
        while displaced is not None:
            displaced = self._place_one_copy(displaced, moves, take_from_lower)

    def _place_one_copy(self, adapter: Adapter, moves: list[Move], take_from_lower: bool) -> Adapter | None:
        """One step of ``_place_copy``; returns the adapter whose copy gave way, if one did."""
        key = adapter.key
        point = adapter_point(key)
        siblings = self._placement.setdefault(key, {})
        worker = self._find_worker(point, Tier.GPU, siblings)
        if worker is None:
            worker = self._displace_from_gpu(adapter, point, siblings, moves)
        if worker is not None:
            self._occupy(key, worker, Tier.GPU)
            moves.append(Move(MoveKind.ADD, key, worker, Tier.GPU, None))
            return None
        for tier in (Tier.CPU, Tier.DISK):
            worker = self._find_worker(point, tier, siblings)
            if worker is not None:
                self._occupy(key, worker, tier)
                moves.append(Move(MoveKind.ADD, key, worker, tier, None))
                return None
        taken = self._take_slot_of_lower(adapter, point, siblings, moves) if take_from_lower else None
        if taken is not None:
            worker, tier, victim = taken
            self._occupy(key, worker, tier)
            moves.append(Move(MoveKind.ADD, key, worker, tier, None))
            self._restand(adapter, (False, -(2**62), 0.0), moves)
            return self._adapters[victim]
        if not siblings:
            del self._placement[key]
        self._record_missing(key)
        return None

    def _take_slot_of_lower(
        self, adapter: Adapter, point: int, siblings: Mapping[str, Tier], moves: list[Move]
    ) -> tuple[str, Tier, str] | None:
        """Every tier is full: on the first workers the ring gives, remove the copy of lowest standing
        (slowest tier first) if it stands below ``adapter``. Pinned copies stay."""
        standing = adapter.standing()
        tries = WALK_LIMIT
        for worker in self._ring_walk(point):
            if worker not in siblings:
                found = self._lowest_standing(worker)
                if found is not None and self._adapters[found[0]].standing() < standing:
                    victim, tier = found
                    self._vacate(victim, worker, tier)
                    if not self._placement[victim]:
                        del self._placement[victim]
                    moves.append(Move(MoveKind.REMOVE, victim, worker, None, tier))
                    return worker, tier, victim
            tries -= 1
            if tries == 0:
                return None
        return None

    def _lowest_standing(self, worker: str) -> tuple[str, Tier] | None:
        """The unpinned copy on ``worker`` to give way first: lowest standing, then slowest tier.

        Cached per worker until a copy arrives there or leaves (or one of its adapters changes
        standing), so a backlog of copies that find no slot costs O(1) per worker looked at.
        """
        if worker in self._lowest:
            return self._lowest[worker]
        found = self._lowest[worker] = self._scan_lowest_standing(worker)
        return found

    def _scan_lowest_standing(self, worker: str) -> tuple[str, Tier] | None:
        best: tuple[tuple[bool, int, float], int, str] | None = None
        found: tuple[str, Tier] | None = None
        for tier in reversed(TIERS):
            for key in self._resident[worker][tier]:
                adapter = self._adapters[key]
                if adapter.pinned:
                    continue
                candidate = (adapter.standing(), -tier, key)
                if best is None or candidate < best:
                    best, found = candidate, (key, tier)
        return found

    def _restand(self, adapter: Adapter, before: tuple[bool, int, float], moves: list[Move]) -> None:
        """Its standing changed: on each of its workers, move its copy up past copies that now stand
        lower (into a free faster slot, or swapping), or down past copies that now stand higher."""
        key, standing = adapter.key, adapter.standing()
        for worker, tier in sorted(self._placement[key].items()):
            if standing > before:
                for faster in reversed(TIERS[:tier]):
                    if self._capacity[worker][faster] == 0:
                        continue
                    if self._has_free(worker, faster):
                        self._retier(key, worker, tier, faster, moves)
                    else:
                        victim = self._coldest_unpinned(worker, faster)
                        if victim is None or self._adapters[victim].standing() >= standing:
                            break
                        self._swap(key, victim, worker, faster, tier, moves)
                    tier = faster
            else:
                for slower in TIERS[tier + 1 :]:
                    hot = self._hottest(worker, slower)
                    if hot is None or self._adapters[hot].standing() <= standing:
                        break
                    self._swap(hot, key, worker, tier, slower, moves)
                    tier = slower

    def _displace_from_gpu(
        self,
        adapter: Adapter,
        point: int,
        siblings: Mapping[str, Tier],
        moves: list[Move],
    ) -> str | None:
        """Free a GPU slot for ``adapter`` by demoting a colder copy on the same worker to a slower free tier.

        Unpinned adapters only look at their first eligible worker, so the cost stays O(1); pinned ones walk
        the ring. Pinned copies are never displaced, nor copies of equal standing (a name is no reason).
        """
        standing = adapter.standing()
        tries = WALK_LIMIT if adapter.pinned else 1
        for worker in self._ring_walk(point):
            if worker in siblings:
                continue
            victim = self._coldest_unpinned(worker, Tier.GPU)
            if victim is not None and self._adapters[victim].standing() < standing:
                slower = self._fastest_free_tier(worker, Tier.CPU)
                if slower is not None:
                    self._retier(victim, worker, Tier.GPU, slower, moves)
                    return worker
            tries -= 1
            if tries == 0:
                return None
        return None

    def _promote_pinned(self, adapter: Adapter) -> list[Move]:
        """Lift a pinned adapter's copies into GPU where they sit, demoting colder unpinned copies."""
        moves: list[Move] = []
        for worker, tier in sorted(self._placement[adapter.key].items()):
            if tier is Tier.GPU:
                continue
            if not self._has_free(worker, Tier.GPU):
                victim = self._coldest_unpinned(worker, Tier.GPU)
                if victim is None:
                    continue
                self._swap(adapter.key, victim, worker, Tier.GPU, tier, moves)
            else:
                self._retier(adapter.key, worker, tier, Tier.GPU, moves)
        return moves

    def _retry_missing(self) -> list[Move]:
        moves: list[Move] = []
        waiting = sorted(self._missing.items(), key=lambda item: self._adapters[item[0]].rank(), reverse=True)
        self._missing = {}
        for key, count in waiting:
            for _ in range(count):
                self._place_copy(self._adapters[key], moves)
        return moves

    def _even_out_load(self, budget: int) -> list[Move]:
        """Move copies from the most to the least loaded workers (relative to their slots), within budget."""
        if budget <= 0 or len(self._workers) < 2:
            return []
        total_slots = sum(sum(capacity) for capacity in self._capacity.values())
        total_copies = sum(sum(self.load(name)) for name in self._workers)
        if not total_slots:
            return []
        targets = {name: total_copies * sum(self._capacity[name]) / total_slots for name in self._workers}
        donors: list[tuple[float, str]] = []
        receivers: list[tuple[float, str]] = []
        for name in sorted(self._workers):
            self._queue_if_unbalanced(name, targets[name], donors, receivers)
        heapq.heapify(donors)
        heapq.heapify(receivers)
        moves: list[Move] = []
        while budget > 0 and donors and receivers:
            _, donor = heapq.heappop(donors)
            _, receiver = heapq.heappop(receivers)
            if not self._move_one_copy(donor, receiver, moves):
                continue
            budget -= 1
            for name in (donor, receiver):
                self._queue_if_unbalanced(name, targets[name], donors, receivers, push=True)
        return moves

    def _queue_if_unbalanced(
        self,
        name: str,
        target: float,
        donors: list[tuple[float, str]],
        receivers: list[tuple[float, str]],
        *,
        push: bool = False,
    ) -> None:
        """Queue ``name`` as a donor (above the ceiling of its fair share) or a receiver (room below it).

        Receivers are all workers below the ceiling, not only those below the floor: with 5 copies on
        3 workers, {3, 1, 1} has a donor (3 > 2) and must still move one to reach {2, 2, 1}. Moves
        happen only while a donor exists, so a fleet within [floor, ceiling] everywhere stays put.
        """
        copies = sum(self.load(name))
        if copies > math.ceil(target):
            entry, queue = (target - copies, name), donors
        elif copies < math.ceil(target):
            entry, queue = (copies - target, name), receivers
        else:
            return
        if push:
            heapq.heappush(queue, entry)
        else:
            queue.append(entry)

    def _move_one_copy(self, donor: str, receiver: str, moves: list[Move]) -> bool:
        """Relocate the donor's first movable copy (Disk first: cheapest to move) into the receiver's tier."""
        receiver_node = self._workers[receiver].node
        for tier in reversed(TIERS):
            target_tier = self._fastest_free_tier(receiver, tier)
            if target_tier is None:
                continue
            for key in self._resident[donor][tier]:
                siblings = self._placement[key]
                if any(self._workers[w].node == receiver_node for w in siblings if w != donor):
                    continue
                self._vacate(key, donor, tier)
                self._occupy(key, receiver, target_tier)
                moves.append(Move(MoveKind.REMOVE, key, donor, None, tier))
                moves.append(Move(MoveKind.ADD, key, receiver, target_tier, None))
                return True
        return False

    def _reorder_dirty_workers(self, budget: int) -> list[Move]:
        """On workers touched since the last rebalance, lift the best copies into faster slots.

        Works per worker, so it costs what the last changes touched.
        """
        moves: list[Move] = []
        for worker in sorted(self._dirty):
            if worker not in self._workers:
                continue
            for faster, slower in ((Tier.GPU, Tier.CPU), (Tier.CPU, Tier.DISK), (Tier.GPU, Tier.DISK)):
                while budget > 0:
                    before = len(moves)
                    if not self._promote_one(worker, faster, slower, moves, swap_allowed=budget >= 2):
                        break
                    budget -= len(moves) - before
            if budget <= 0:
                break
        self._dirty = {}
        return moves

    def _promote_one(
        self, worker: str, faster: Tier, slower: Tier, moves: list[Move], *, swap_allowed: bool
    ) -> bool:
        best = self._hottest(worker, slower)
        if best is None:
            return False
        if self._has_free(worker, faster):
            self._retier(best, worker, slower, faster, moves)
            return True
        victim = self._coldest_unpinned(worker, faster)
        if not swap_allowed or victim is None or self._adapters[victim].rank() >= self._adapters[best].rank():
            return False
        self._swap(best, victim, worker, faster, slower, moves)
        return True

    # --------------------------------------------------------- primitives

    def _admit(self, worker: Worker) -> None:
        name = worker.name
        capacity = worker.slots()
        self._workers[name] = worker
        self._capacity[name] = capacity
        self._resident[name] = ({}, {}, {})
        self._zone_workers[worker.zone] = self._zone_workers.get(worker.zone, 0) + 1
        for tier in TIERS:
            self._tier_free[tier] += capacity[tier]
            if capacity[tier] > 0:
                self._free_workers[tier][name] = None

    def _evict_worker(self, name: str) -> None:
        worker = self._workers.pop(name)
        capacity = self._capacity.pop(name)
        resident = self._resident.pop(name)
        self._zone_workers[worker.zone] -= 1
        if not self._zone_workers[worker.zone]:
            del self._zone_workers[worker.zone]
        for tier in TIERS:
            self._tier_free[tier] -= capacity[tier] - len(resident[tier])
            self._free_workers[tier].pop(name, None)
        self._dirty.pop(name, None)
        # The ring keeps the dead worker's points until the next rebuild; _find_worker skips them.

    def _rebuild_ring(self) -> None:
        points = sorted(point for name in self._workers for point in self._worker_points(name))
        self._ring_points = [point for point, _ in points]
        self._ring_owners = [name for _, name in points]

    def _worker_points(self, name: str) -> list[tuple[int, str]]:
        """A worker's virtual nodes on the ring; hashed once per worker name, not once per rebuild."""
        points = self._points_of.get(name)
        if points is None:
            points = self._points_of[name] = [
                (ring_point(f"{name}#{vnode}"), name) for vnode in range(self._vnodes)
            ]
        return points

    def _ring_walk(self, point: int) -> Iterable[str]:
        """Live workers clockwise from ``point``, each once."""
        owners = self._ring_owners
        start = bisect.bisect_left(self._ring_points, point)
        seen: set[str] = set()
        for step in range(len(owners)):
            owner = owners[(start + step) % len(owners)]
            if owner in self._workers and owner not in seen:
                seen.add(owner)
                yield owner

    def _find_worker(self, point: int, tier: Tier, siblings: Mapping[str, Tier]) -> str | None:
        """The worker for a copy in ``tier``: first on the ring with a free slot, spread over zones and nodes.

        Each further replica wants a zone its siblings do not use (while any is left), else a node they do
        not use; failing that, the best spread on offer. The ring walk is bounded; past it, rendezvous hashing
        over the workers with a free slot in the tier decides, so the search is exhaustive and deterministic.
        The tier comes first: spread is chosen among the workers with room in the tier.
        """
        if self._tier_free[tier] <= 0:
            return None
        free = self._free_workers[tier]
        owners = self._ring_owners
        size = len(owners)
        start = bisect.bisect_left(self._ring_points, point)
        spread = self._spread(siblings)
        for step in range(min(size, WALK_LIMIT)):
            owner = owners[(start + step) % size]
            if owner in free and owner not in siblings and spread.is_ideal(self._workers[owner]):
                return owner
        best: tuple[int, int, str] | None = None
        for name in free:
            if name in siblings:
                continue
            candidate = (spread.score(self._workers[name]), zlib.crc32(name.encode(), point), name)
            if best is None or candidate > best:
                best = candidate
        return None if best is None else best[2]

    def _spread(self, siblings: Mapping[str, Tier]) -> _Spread:
        live = [self._workers[name] for name in siblings if name in self._workers]
        used_zones = {worker.zone for worker in live}
        ideal = 3 if len(used_zones) < len(self._zone_workers) else 1
        return _Spread({worker.node for worker in live}, used_zones, ideal if live else 0)

    def _has_free(self, worker: str, tier: Tier) -> bool:
        resident = self._resident.get(worker)
        return resident is not None and len(resident[tier]) < self._capacity[worker][tier]

    def _fastest_free_tier(self, worker: str, start: Tier) -> Tier | None:
        for tier in TIERS[start:]:
            if self._has_free(worker, tier):
                return tier
        return None

    def _coldest_unpinned(self, worker: str, tier: Tier) -> str | None:
        candidates = [key for key in self._resident[worker][tier] if not self._adapters[key].pinned]
        return min(candidates, key=lambda key: self._adapters[key].rank(), default=None)

    def _hottest(self, worker: str, tier: Tier) -> str | None:
        return max(self._resident[worker][tier], key=lambda key: self._adapters[key].rank(), default=None)

    def _occupy(self, key: str, worker: str, tier: Tier) -> None:
        copies = self._placement.get(key)
        if copies is None:
            self._placement[key] = {worker: tier}
        else:
            copies[worker] = tier
        resident = self._resident[worker][tier]
        resident[key] = None
        self._tier_free[tier] -= 1
        if len(resident) >= self._capacity[worker][tier]:
            self._free_workers[tier].pop(worker, None)
        self._dirty[worker] = None
        self._lowest.pop(worker, None)

    def _vacate(self, key: str, worker: str, tier: Tier) -> None:
        del self._placement[key][worker]
        del self._resident[worker][tier][key]
        self._tier_free[tier] += 1
        self._free_workers[tier][worker] = None
        self._dirty[worker] = None
        self._lowest.pop(worker, None)

    def _retier(self, key: str, worker: str, old: Tier, new: Tier, moves: list[Move]) -> None:
        self._vacate(key, worker, old)
        self._occupy(key, worker, new)
        moves.append(Move(MoveKind.RETIER, key, worker, new, old))

    def _swap(self, hot: str, cold: str, worker: str, faster: Tier, slower: Tier, moves: list[Move]) -> None:
        """Swap tiers of two copies on one worker; both leave before either arrives, so no tier overflows."""
        self._vacate(cold, worker, faster)
        self._vacate(hot, worker, slower)
        self._occupy(hot, worker, faster)
        self._occupy(cold, worker, slower)
        moves.append(Move(MoveKind.RETIER, cold, worker, slower, faster))
        moves.append(Move(MoveKind.RETIER, hot, worker, faster, slower))

    def _record_missing(self, key: str) -> None:
        self._missing[key] = self._missing.get(key, 0) + 1


@dataclass(frozen=True, slots=True)
class _Spread:
    """Where an adapter's copies already are, and the best spread score a further copy can hope for."""

    used_nodes: set[str]
    used_zones: set[str]
    ideal: int

    def score(self, worker: Worker) -> int:
        """3: new zone (and node); 1: new node in a used zone; 0: a node that already holds a copy."""
        return 2 * (worker.zone not in self.used_zones) + (worker.node not in self.used_nodes)

    def is_ideal(self, worker: Worker) -> bool:
        return self.ideal == 0 or self.score(worker) >= self.ideal


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a bulk plan, then restore its previous state.

    A full plan allocates millions of small acyclic containers (placement dicts, moves); the collector's
    repeated passes over them cost more than the plan itself. Nothing here creates reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def placement_moves(before: PlacementView, after: PlacementView, live: Mapping[str, object]) -> list[Move]:
    """The moves that turn ``before`` into ``after``; copies on workers not in ``live`` vanish unmoved."""
    moves: list[Move] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, {}), after.get(key, {})
        for worker in sorted(old.keys() | new.keys()):
            if worker not in live:
                continue
            was, now = old.get(worker), new.get(worker)
            if was is None and now is not None:
                moves.append(Move(MoveKind.ADD, key, worker, now, None))
            elif now is None and was is not None:
                moves.append(Move(MoveKind.REMOVE, key, worker, None, was))
            elif was != now:
                moves.append(Move(MoveKind.RETIER, key, worker, now, was))
    return moves


def fallback_tiers(desired: Tier) -> tuple[Tier, ...]:
    """Tiers to try for a copy that wants ``desired``: it, then slower ones, then the nearest faster ones.

    Slower tiers come first so a copy does not take a faster slot that a better-ranked copy is due; the
    faster ones come last so that no copy goes missing while any slot is free.
    """
    return TIERS[desired:] + TIERS[:desired][::-1]


def desired_tiers(index: int, count: int, bounds: tuple[int, int, int]) -> list[Tier]:
    """Tiers for ``count`` copies from global rank position ``index`` in the fleet's ranking."""
    tiers: list[Tier] = []
    for position in range(index, index + count):
        if position < bounds[0]:
            tiers.append(Tier.GPU)
        elif position < bounds[1]:
            tiers.append(Tier.CPU)
        else:  # past every budget too: Disk, in case a slot was left free by the spread rules
            tiers.append(Tier.DISK)
    return tiers

"""Keeps one BaseModel's placement planner in step with its workers and adapters.

Each pass of the operator's placement loop takes a snapshot of the fleet
(healthy worker pods, valid LoRAAdapters) and hands it here. The first pass
(also the first after an operator restart) plans from the placement the
WorkerPlacement objects already record, so warm copies stay where they are;
later passes feed the planner only the differences since the previous pass
(worker lost or added, adapter changed or removed). After workers are added,
each pass (the first included) takes one rebalance step of at most
`max_rebalance_moves` copies until a step moves nothing; re-placing the copies
of lost workers and copies that found no slot before is not held to it.
Pure: no I/O, deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loraplex.api.tiers import Tier as TierName
from loraplex.operator.placement import Adapter, Move, PlacementView, Planner, Tier, Worker, moved_copies

# The planner's tiers and their wire names (loraplex.api.tiers), as lookups for the per-pass hot path.
TIER_NAMES: dict[Tier, TierName] = {tier: tier.tier for tier in Tier}
TIERS_BY_NAME: dict[str, Tier] = {name.value: tier for tier, name in TIER_NAMES.items()}


@dataclass(frozen=True)
class FleetSnapshot:
    """The fleet as one pass of the loop sees it."""

    workers: Mapping[str, Worker] = field(default_factory=dict)
    adapters: Mapping[str, Adapter] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncResult:
    """The target placement (adapter -> worker -> tier name) after a pass, and what the pass did."""

    placement: dict[str, dict[str, TierName]]
    moved: int
    missing: dict[str, int]


class PlacementSync:
    """One BaseModel's planner plus the snapshot it last saw."""

    def __init__(self, max_rebalance_moves: int = 64) -> None:
        self.max_rebalance_moves = max_rebalance_moves
        self._planner: Planner | None = None
        self._seen = FleetSnapshot()
        self._rebalancing = False  # workers were added and the last bounded step still moved copies

    @property
    def rebalancing(self) -> bool:
        """Workers were added and the last bounded step still moved copies: another step is due."""
        return self._rebalancing

    def sync(self, snapshot: FleetSnapshot, recorded: Mapping[str, Mapping[str, str]]) -> SyncResult:
        """Bring the plan up to `snapshot`; `recorded` is what the cluster holds (read on the first pass)."""
        if self._planner is None:
            self._planner = Planner(snapshot.workers.values(), max_rebalance_moves=self.max_rebalance_moves)
            adapters, view = snapshot.adapters.values(), _as_view(recorded)
            # A restart resumes what the cluster records as it stands; a fresh fleet gets a full plan.
            start = self._planner.adopt(adapters, view) if view else self._planner.plan_all(adapters)
            moves = list(start.moves)
        else:
            moves = self._apply_changes(self._planner, snapshot)
        self._seen = snapshot
        placement = {
            adapter: {worker: TIER_NAMES[tier] for worker, tier in copies.items()}
            for adapter, copies in self._planner.placement.items()
        }
        return SyncResult(placement, moved_copies(moves), dict(self._planner.missing))

    def _apply_changes(self, planner: Planner, snapshot: FleetSnapshot) -> list[Move]:
        seen, moves = self._seen, []
        for name in sorted(seen.workers.keys() - snapshot.workers.keys()):
            moves += planner.worker_lost(name)
        new: list[Worker] = []
        for name, worker in sorted(snapshot.workers.items()):
            before = seen.workers.get(name)
            if before == worker:
                continue
            if before is not None:  # moved node or changed size: treat as a new worker
                moves += planner.worker_lost(name)
            new.append(worker)
        added = bool(new)
        if added:
            # All at once: one ring rebuild for a fleet coming up. The pass's one rebalance step is below.
            moves += planner.workers_added(new, rebalance_step=False)
        for key in sorted(seen.adapters.keys() - snapshot.adapters.keys()):
            moves += planner.adapter_removed(key)
        for key, adapter in sorted(snapshot.adapters.items()):
            if seen.adapters.get(key) != adapter:
                moves += planner.adapter_changed(adapter)
        if added or self._rebalancing:  # even the load onto new workers: one bounded step per pass
            step = planner.rebalance(self.max_rebalance_moves) if self.max_rebalance_moves else []
            self._rebalancing = bool(step)
            moves += step
        return moves


def _as_view(recorded: Mapping[str, Mapping[str, str]]) -> PlacementView:
    return {
        adapter: {worker: TIERS_BY_NAME[tier] for worker, tier in copies.items() if tier in TIERS_BY_NAME}
        for adapter, copies in recorded.items()
    }

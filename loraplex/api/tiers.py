"""The tiers an adapter's copy can sit in on its worker, defined once for every process.

`Tier` is the wire form: its values are the spellings the WorkerPlacement and
LoRAAdapter statuses, the agent's HTTP API and the metrics labels carry. It is a
`str` enum, so a member compares and hashes equal to its wire spelling. The
members stand in speed order, fastest first.

`TierRank` is the same tiers as positions in that order (GPU 0, CPU 1, DISK 2):
what a planner indexes per-tier arrays with and compares ("a faster tier").
`Tier.rank` and `TierRank.tier` convert between the two.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Tier(StrEnum):
    GPU = "GPU"  # vLLM's GPU LoRA slots (max_loras)
    CPU = "CPU"  # vLLM's CPU LoRA cache (max_cpu_loras)
    DISK = "Disk"  # the agent's disk cache only

    @property
    def rank(self) -> TierRank:
        return TierRank[self.name]


class TierRank(IntEnum):
    """A tier's position in speed order; a lower value is a faster tier."""

    GPU = 0
    CPU = 1
    DISK = 2

    @property
    def tier(self) -> Tier:
        return Tier[self.name]


TIERS: tuple[Tier, ...] = tuple(Tier)  # fastest first
_BY_WIRE: dict[str, Tier] = {tier.value: tier for tier in Tier}


def parse_tier(value: object) -> Tier | None:
    """The tier a wire value names, or None when it names none."""
    return _BY_WIRE.get(value) if isinstance(value, str) else None

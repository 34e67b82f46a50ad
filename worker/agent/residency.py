"""What the agent should do to hold what the operator wants: a pure plan.

The agent converges, level-based, from two inputs: the adapters its
WorkerPlacement's `spec` wants (name, revision digest, tier) and what it holds
(adapters registered in vLLM, revisions in the local disk cache, recent load
failures). This module turns them into the steps to take (fetch, load,
unload) and into the residency report the operator and the router read. No
I/O, no clock (`now` is passed in).

Tiers as the agent keeps them:
- GPU and CPU: registered in vLLM through its runtime LoRA API. vLLM keeps at
  most `max_cpu_loras` in its CPU cache and activates up to `max_loras` of
  them in GPU slots by recency, so the agent registers at most `cpu_slots`
  adapters and warms the GPU ones with a one-token request after loading.
- Disk: the revision is in the local disk cache, not registered.
- Adapters loaded on demand (catalog adapters, or named ones wanted only on
  disk) share the CPU slots the operator's placement leaves free, least
  recently used first out; the newest on-demand adapter always stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from loraplex.api.tiers import Tier


@dataclass(frozen=True)
class WantedAdapter:
    """One adapter the operator wants on this worker (from WorkerPlacement spec)."""

    name: str
    uri: str
    sha256: str
    tier: Tier
    pinned: bool = False


@dataclass(frozen=True)
class RegisteredAdapter:
    """One adapter registered in vLLM, as the agent knows it."""

    name: str
    sha256: str
    on_demand: bool = False
    catalog: bool = False
    last_used: float = 0.0
    warm: bool = False  # activated in a GPU slot by a warm-up request


@dataclass(frozen=True)
class LoadFailure:
    """A revision that failed to load, and when it may be tried again."""

    name: str
    sha256: str | None
    reason: str
    message: str
    retry_at: float
    on_demand: bool = False  # an `ensure` call's load, not one the WorkerPlacement asked for


@dataclass(frozen=True)
class Slots:
    gpu: int
    cpu: int  # vLLM's max_cpu_loras: every registered adapter, GPU ones included


@dataclass(frozen=True)
class Fetch:
    name: str
    uri: str
    sha256: str


@dataclass(frozen=True)
class Load:
    name: str
    sha256: str
    inplace: bool
    warm: bool


@dataclass
class ConvergencePlan:
    unload: list[str] = field(default_factory=list)
    fetch: list[Fetch] = field(default_factory=list)
    load: list[Load] = field(default_factory=list)
    warm: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.unload or self.fetch or self.load or self.warm)


def backing_off(failures: Mapping[str, LoadFailure], name: str, sha256: str | None, now: float) -> bool:
    failure = failures.get(name)
    return failure is not None and failure.sha256 == sha256 and failure.retry_at > now


def stale_failures(
    failures: Mapping[str, LoadFailure], wanted: Iterable[WantedAdapter], ensuring: set[str], now: float
) -> list[str]:
    """Recorded failures that no longer say anything about this worker, to drop.

    A failure stays while the WorkerPlacement wants that adapter at the failed revision, while an
    on-demand load of it is in flight, and, for a failed on-demand load of an adapter not wanted
    here, until its backoff ends (the next `ensure` honours it). Any other is stale: the adapter
    left this worker, or is wanted at another revision now.
    """
    digests = {w.name: w.sha256 for w in wanted}
    return sorted(
        name
        for name, failure in failures.items()
        if digests.get(name) != failure.sha256
        and name not in ensuring
        and not (failure.on_demand and name not in digests and failure.retry_at > now)
    )


def resident_targets(wanted: Iterable[WantedAdapter], slots: Slots) -> list[WantedAdapter]:
    """The named adapters to keep registered: GPU ones first, at most `cpu_slots`."""
    loaded = [w for w in wanted if w.tier != Tier.DISK]
    loaded.sort(key=lambda w: (Tier(w.tier).rank, not w.pinned, w.name))
    return loaded[: slots.cpu]


def on_demand_kept(
    registered: Mapping[str, RegisteredAdapter], named_resident: set[str], free_slots: int
) -> set[str]:
    """On-demand adapters that stay registered: the most recently used that fit, and always the newest."""
    on_demand = sorted(
        (r for r in registered.values() if r.on_demand and r.name not in named_resident),
        key=lambda r: (-r.last_used, r.name),
    )
    return {r.name for r in on_demand[: max(free_slots, 1)]}


def plan_convergence(
    wanted: Iterable[WantedAdapter],
    registered: Mapping[str, RegisteredAdapter],
    on_disk: set[str],
    failures: Mapping[str, LoadFailure],
    slots: Slots,
    now: float,
    unload: AbstractSet[str] = frozenset(),
) -> ConvergencePlan:
    """`unload`: adapters being deleted, whose copies loaded on demand go now whatever their use."""
    wanted = list(wanted)
    targets = resident_targets(wanted, slots)
    named_resident = {w.name for w in targets}
    candidates = {name: r for name, r in registered.items() if name not in unload}
    keep = named_resident | on_demand_kept(candidates, named_resident, slots.cpu - len(targets))
    plan = ConvergencePlan(unload=sorted(set(registered) - keep))
    fetched: set[str] = set()
    for want in targets:
        if backing_off(failures, want.name, want.sha256, now):
            continue
        current = registered.get(want.name)
        if current is not None and current.sha256 == want.sha256:
            if want.tier == Tier.GPU and not current.warm:
                plan.warm.append(want.name)
            continue
        if want.sha256 not in on_disk and want.sha256 not in fetched:
            plan.fetch.append(Fetch(want.name, want.uri, want.sha256))
            fetched.add(want.sha256)
        plan.load.append(
            Load(want.name, want.sha256, inplace=current is not None, warm=want.tier == Tier.GPU)
        )
    for want in wanted:
        missing = want.sha256 not in on_disk and want.sha256 not in fetched
        if want.tier == Tier.DISK and missing and not backing_off(failures, want.name, want.sha256, now):
            plan.fetch.append(Fetch(want.name, want.uri, want.sha256))
            fetched.add(want.sha256)
    return plan


@dataclass(frozen=True)
class ReportedAdapter:
    name: str
    sha256: str
    tier: Tier
    catalog: bool
    on_demand: bool = False  # loaded for the router, not listed by the WorkerPlacement


def plan_report(
    wanted: Iterable[WantedAdapter],
    registered: Mapping[str, RegisteredAdapter],
    on_disk: set[str],
    slots: Slots,
) -> list[ReportedAdapter]:
    """What the agent holds, per tier, in a stable order (for the residency report)."""
    wanted_by_name = {w.name: w for w in wanted}
    report: list[ReportedAdapter] = []
    for reg in registered.values():
        want = wanted_by_name.get(reg.name)
        tier = Tier.GPU if reg.warm and want is not None and want.tier == Tier.GPU else Tier.CPU
        on_demand = reg.on_demand and want is None
        report.append(ReportedAdapter(reg.name, reg.sha256, tier, reg.catalog, on_demand))
    for want in wanted_by_name.values():
        if want.name not in registered and want.sha256 in on_disk:
            report.append(ReportedAdapter(want.name, want.sha256, Tier.DISK, False))
    report.sort(key=lambda r: (Tier(r.tier).rank, r.name))
    return report


def protected_revisions(
    wanted: Iterable[WantedAdapter], registered: Mapping[str, RegisteredAdapter]
) -> set[str]:
    """Revisions the disk cache must not evict: wanted by the operator or registered in vLLM."""
    return {w.sha256 for w in wanted} | {r.sha256 for r in registered.values()}

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

A new revision of an adapter vLLM serves is never loaded over the old one
(vLLM's `load_inplace` leaves the flag on the adapter, so every later request
reloads it from disk: vLLM issue 33791). It is registered beside it under an
engine name of its own (the adapter's name when free, else
`<name>@<sha256[:12]>`, loraplex.api.workerplacement), and the old copy retires:
it stays registered, unreported, until a report naming the new copy is out and
the drain after it has passed (`RetiringCopy.unload_after`), then is unloaded.
A retiring copy at the revision wanted again comes back without a load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import revision_engine_name

# Seconds a replaced revision stays registered after a report naming its successor is out: routers
# learn residency from a watch (or, static, a poll every second) and must have moved before it goes.
DEFAULT_RETIRE_AFTER = 10.0


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
    engine_name: str = ""  # the name vLLM serves it under ("": the adapter's name)

    @property
    def engine(self) -> str:
        """The name vLLM serves this copy under."""
        return self.engine_name or self.name


@dataclass(frozen=True)
class RetiringCopy:
    """A copy replaced by another revision of its adapter, still registered in vLLM while routers move
    off it: unloaded at `unload_after` (None until a report naming its successor is out)."""

    copy: RegisteredAdapter
    unload_after: float | None = None


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
    engine_name: str  # the name to register it under in vLLM
    warm: bool
    revive: bool = False  # a retiring copy at this revision, registered as `engine_name`: no load


@dataclass
class ConvergencePlan:
    unload: list[str] = field(default_factory=list)  # adapters: their registered copies
    retire: list[str] = field(default_factory=list)  # engine names of retiring copies to unload now
    fetch: list[Fetch] = field(default_factory=list)
    load: list[Load] = field(default_factory=list)
    warm: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.unload or self.retire or self.fetch or self.load or self.warm)


def engine_name_for(name: str, sha256: str, in_use: AbstractSet[str]) -> str | None:
    """The name to register a revision of `name` under: the adapter's own name when no copy uses it,
    else its revision's engine name; None when both are in use (a retiring copy holds one: wait)."""
    for candidate in (name, revision_engine_name(name, sha256)):
        if candidate not in in_use:
            return candidate
    return None


def engine_names_in_use(
    registered: Mapping[str, RegisteredAdapter], retiring: Mapping[str, RetiringCopy]
) -> set[str]:
    return {r.engine for r in registered.values()} | set(retiring)


def retiring_copy_of(retiring: Mapping[str, RetiringCopy], name: str, sha256: str) -> str | None:
    """The engine name of a retiring copy of `name` at `sha256`, if there is one."""
    for engine_name, retired in sorted(retiring.items()):
        if retired.copy.name == name and retired.copy.sha256 == sha256:
            return engine_name
    return None


def retired_now(retiring: Mapping[str, RetiringCopy], now: float, unload: AbstractSet[str]) -> list[str]:
    """Retiring copies to unload: their drain has passed, or their adapter is being deleted."""
    return sorted(
        engine_name
        for engine_name, retired in retiring.items()
        if retired.copy.name in unload or (retired.unload_after is not None and retired.unload_after <= now)
    )


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
    retiring: Mapping[str, RetiringCopy] | None = None,
) -> ConvergencePlan:
    """`unload`: adapters being deleted, whose copies loaded on demand go now whatever their use.
    `retiring`: copies replaced by a newer revision, by engine name (they count no slot: see docs/agent.md).

    A wanted adapter registered at another revision gets a load of the wanted one under a free engine
    name, never an unload: the agent retires the old copy once the new one is registered."""
    wanted = list(wanted)
    retiring = retiring or {}
    targets = resident_targets(wanted, slots)
    named_resident = {w.name for w in targets}
    candidates = {name: r for name, r in registered.items() if name not in unload}
    keep = named_resident | on_demand_kept(candidates, named_resident, slots.cpu - len(targets))
    retire = retired_now(retiring, now, unload)
    plan = ConvergencePlan(unload=sorted(set(registered) - keep), retire=retire)
    live = {name: r for name, r in retiring.items() if name not in retire}
    in_use = engine_names_in_use(registered, live)
    fetched: set[str] = set()
    for want in targets:
        if backing_off(failures, want.name, want.sha256, now):
            continue
        current = registered.get(want.name)
        warm = want.tier == Tier.GPU
        if current is not None and current.sha256 == want.sha256:
            if warm and not current.warm:
                plan.warm.append(want.name)
            continue
        revived = retiring_copy_of(live, want.name, want.sha256)
        if revived is not None:
            plan.load.append(Load(want.name, want.sha256, revived, warm=warm, revive=True))
            continue
        engine_name = engine_name_for(want.name, want.sha256, in_use)
        if engine_name is None:
            continue
        in_use.add(engine_name)
        if want.sha256 not in on_disk and want.sha256 not in fetched:
            plan.fetch.append(Fetch(want.name, want.uri, want.sha256))
            fetched.add(want.sha256)
        plan.load.append(Load(want.name, want.sha256, engine_name, warm=warm))
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
    engine_name: str | None = None  # where vLLM serves it under another name than `name`


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
        engine_name = reg.engine if reg.engine != reg.name else None
        report.append(ReportedAdapter(reg.name, reg.sha256, tier, reg.catalog, on_demand, engine_name))
    for want in wanted_by_name.values():
        if want.name not in registered and want.sha256 in on_disk:
            report.append(ReportedAdapter(want.name, want.sha256, Tier.DISK, False))
    report.sort(key=lambda r: (Tier(r.tier).rank, r.name))
    return report


def protected_revisions(
    wanted: Iterable[WantedAdapter],
    registered: Mapping[str, RegisteredAdapter],
    retiring: Mapping[str, RetiringCopy] | None = None,
) -> set[str]:
    """Revisions the disk cache must not evict: wanted by the operator or registered in vLLM (retiring
    copies too: vLLM reloads a copy from its path when its CPU cache let it go)."""
    held = {r.sha256 for r in registered.values()} | {r.copy.sha256 for r in (retiring or {}).values()}
    return {w.sha256 for w in wanted} | held

"""The live state the router routes on, and the small interface its sources feed it through.

Sources (the WorkerPlacement and pod watches, or in static mode the agents'
`/v1/residency`; the vLLM load poller) call `upsert_worker`, `remove_worker`,
`report_residency`, `report_load` and `report_unreachable`; tests call the same
methods directly. The proxy reads the worker table and the endpoints and
reports a failed call with `report_failure`.

Health, with staleness bounded: a worker is healthy when its source says it
is ready, its vLLM answered a load poll or a request within `stale_after`
seconds, and no request failed on it since that answer. So a worker that stops
answering is out after at most `stale_after` seconds, and at once when a request
fails there or a poll cannot reach it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from loraplex.api.access import AccessList
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import WorkerPlacementStatus
from loraplex.router.table import WorkerTable


@dataclass(frozen=True)
class Endpoints:
    vllm_url: str
    agent_url: str


@dataclass(frozen=True)
class _Report:
    """A worker's last residency report, kept while it has no pod (it applies when one comes)."""

    adapters: tuple[Resident, ...]
    gpu_slots: int | None = None
    cpu_slots: int | None = None
    named: tuple[str, ...] | None = None
    revisions: Mapping[str, str] | None = None  # named adapter -> the digest its placement asks for


@dataclass
class _Health:
    ready: bool = False
    last_ok: float | None = None
    failed_at: float | None = None


@dataclass(frozen=True)
class Resident:
    """One entry of a residency report."""

    name: str
    tier: Tier
    catalog: bool = False
    sha256: str | None = None  # the revision of the copy
    engine_name: str | None = None  # the name its vLLM serves it under (None: the adapter's name)


def residents(status: WorkerPlacementStatus) -> list[Resident]:
    """The adapters of a WorkerPlacement status, or of an agent's `/v1/residency` (both read with
    loraplex.api.workerplacement.read_status)."""
    return [Resident(a.name, a.tier, a.catalog, a.sha256, a.engine_name) for a in status.adapters]


class FleetState:
    """Workers, their endpoints and health, over the routing table."""

    def __init__(self, table: WorkerTable, stale_after: float = 2.0) -> None:
        self.table = table
        self.stale_after = stale_after
        self.endpoints: dict[str, Endpoints] = {}
        self._health: dict[str, _Health] = {}
        self._reports: dict[str, _Report] = {}
        self._copies: dict[str, dict[str, str]] = {}  # worker -> adapter -> the revision its copy holds
        # worker -> adapter -> the name its vLLM serves the copy under, where that is not the adapter's
        self._engine_names: dict[str, dict[str, str]] = {}
        self.synced = False  # the source has reported the whole fleet once
        self._access: dict[str, AccessList] = {}  # adapter -> its LoRAAdapter's access list

    def set_access_rule(self, adapter: str, rule: AccessList | None) -> None:
        """A LoRAAdapter's `spec.access` (None: it has none: every authenticated caller may use it)."""
        if rule is None:
            self._access.pop(adapter, None)
        else:
            self._access[adapter] = rule

    def access_rule(self, adapter: str) -> AccessList | None:
        return self._access.get(adapter)

    def upsert_worker(self, name: str, vllm_url: str, agent_url: str, ready: bool, now: float) -> None:
        self.endpoints[name] = Endpoints(vllm_url.rstrip("/"), agent_url.rstrip("/"))
        new = name not in self.table.workers
        self.table.add_worker(name, healthy=False)
        self._health.setdefault(name, _Health()).ready = ready
        report = self._reports.get(name)
        if new and report is not None:
            self._apply(name, report)
        self._refresh(name, now)

    def remove_worker(self, name: str) -> None:
        self.endpoints.pop(name, None)
        self._health.pop(name, None)
        self._copies.pop(name, None)
        self._engine_names.pop(name, None)
        self.table.remove_worker(name)

    def report_residency(
        self,
        name: str,
        adapters: Iterable[Resident],
        gpu_slots: int | None = None,
        cpu_slots: int | None = None,
        named: Iterable[str] | None = None,
        revisions: Mapping[str, str] | None = None,
    ) -> None:
        """What the worker holds; `named` are the named adapters its placement lists (None: those of
        the report that did not come through the catalog), `revisions` their digests there. A report
        for a worker without a pod (its WorkerPlacement outlives the pod, or comes first) is kept until
        the pod comes, so a gone worker never returns to the ranking and the holder index as a worker
        nobody can reach."""
        report = _Report(
            tuple(adapters), gpu_slots, cpu_slots, None if named is None else tuple(named), revisions
        )
        self._reports[name] = report
        if name in self.table.workers:
            self._apply(name, report)

    def forget_residency(self, name: str) -> None:
        """The worker's WorkerPlacement is gone: it holds and is placed nothing."""
        self._reports.pop(name, None)
        if name in self.table.workers:
            self._apply(name, _Report((), named=()))

    def _apply(self, name: str, report: _Report) -> None:
        entries = report.adapters
        self.table.set_residency(name, {a.name: a.tier for a in entries}, report.gpu_slots, report.cpu_slots)
        self._copies[name] = {a.name: a.sha256 for a in entries if a.sha256 is not None}
        self._engine_names[name] = {
            a.name: a.engine_name for a in entries if a.engine_name is not None and a.engine_name != a.name
        }
        named = report.named if report.named is not None else [a.name for a in entries if not a.catalog]
        self.table.set_wanted(name, named)

    def revision(self, adapter: str) -> str | None:
        """The digest a named adapter's LoRAAdapter asks for, else its placement (None: not known here).
        O(its placement)."""
        revision = self.table.object_revision(adapter)
        if revision is not None:
            return revision
        for worker in self.table.placed_on(adapter):
            report = self._reports.get(worker)
            if report is not None and report.revisions and adapter in report.revisions:
                return report.revisions[adapter]
        return None

    def note_copy(self, worker: str, adapter: str, sha256: str) -> None:
        """The worker's agent answered that its copy of the adapter is at this revision (an ensure)."""
        if worker in self.table.workers:
            self._copies.setdefault(worker, {})[adapter] = sha256

    def note_engine_name(self, worker: str, adapter: str, engine_name: str | None) -> None:
        """The worker's agent answered that vLLM serves its copy under this name (an ensure; None:
        the adapter's own name), until that worker's next report."""
        if worker not in self.table.workers:
            return
        names = self._engine_names.setdefault(worker, {})
        if engine_name is None or engine_name == adapter:
            names.pop(adapter, None)
        else:
            names[adapter] = engine_name

    def engine_name(self, worker: str, adapter: str) -> str:
        """The name to send a request for the adapter to the worker's vLLM under: the one its agent
        reported for its copy (a revision swapped in beside another), else the adapter's own."""
        return self._engine_names.get(worker, {}).get(adapter, adapter)

    def copy_revision(self, worker: str, adapter: str) -> str | None:
        """The revision of the worker's copy of the adapter, as its last report or ensure said."""
        return self._copies.get(worker, {}).get(adapter)

    def report_load(self, name: str, running_and_waiting: int, now: float) -> None:
        if name not in self.table.workers:
            return
        self.table.set_reported_load(name, running_and_waiting)
        health = self._health[name]
        health.last_ok = now
        health.failed_at = None
        self._refresh(name, now)

    def report_answer(self, name: str, now: float) -> None:
        """The worker's vLLM answered a request: it is alive, as after a good load poll (a vLLM too
        busy to render `/metrics` within the poll's timeout still serves)."""
        health = self._health.get(name)
        if health is not None:
            health.last_ok = now
            health.failed_at = None
            self._refresh(name, now)

    def report_unreachable(self, name: str, now: float) -> None:
        """A load poll could not reach the worker or got an error: out of rotation until it answers."""
        if name in self._health:
            self._health[name].last_ok = None
            self._refresh(name, now)

    def report_failure(self, name: str, now: float) -> None:
        """A request failed on the worker: out of rotation until its next good load poll."""
        if name in self._health:
            self._health[name].failed_at = now
            self._refresh(name, now)

    def refresh(self, now: float) -> None:
        """Take out workers whose last good poll is older than `stale_after`."""
        for name in self._health:
            self._refresh(name, now)

    def _refresh(self, name: str, now: float) -> None:
        health = self._health[name]
        healthy = (
            health.ready
            and health.failed_at is None
            and health.last_ok is not None
            and now - health.last_ok <= self.stale_after
        )
        self.table.set_healthy(name, healthy)

    def adapters_served(self) -> list[str]:
        """Named adapters and whatever any worker holds, sorted."""
        return sorted(set(self.table.named_adapters()) | set(self.table.resident_adapters()))

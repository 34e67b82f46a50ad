"""The agent: converges vLLM and the disk cache to what the operator wants, and reports it.

Level-based. The wanted set comes from the worker's WorkerPlacement spec (or a
file, for local use); each pass plans with `residency.plan_convergence` from
the wanted set and what the agent holds, then unloads, fetches and loads. What
the agent holds is re-read from vLLM's `/v1/models` every few seconds, so a
restarted vLLM (which forgets its adapters) is noticed and refilled, and a
restarted agent adopts the adapters vLLM still has (their paths name their
revision in the content-addressed disk cache). Nothing is unloaded before the
wanted set is known, so an agent restart never empties a warm worker.

On-demand loads (`ensure`, used by the router for catalog adapters and for
named adapters held only on disk) share one load per adapter among concurrent
callers; a failed revision is not retried before its backoff ends. Copies loaded
on demand use the CPU slots the WorkerPlacement leaves free, most recently used
first: used by an ensure, or by a request vLLM ran (read with its activity).

A recorded failure is reported until that revision is fetched (a fetch failure)
or loaded (any failure), or until it goes stale: each pass drops the failures
of adapters the WorkerPlacement no longer wants at that revision, unless an
on-demand load of the adapter is in flight or still backing off.

A new revision of an adapter vLLM serves (a placement's, or an ensure's) is
registered beside the old one under its own engine name (residency.py; never
vLLM's `load_inplace`, vLLM issue 33791), and the old copy retires: unreported,
still registered, until a report naming the new copy is out (`reported`: the
WorkerPlacement status written, or without one the agent's own report, which
static routers poll) and `retire_after` seconds have passed since, so every
router has moved to the new name; then it is unloaded. Requests vLLM already
took for the old name finish: unloading only stops new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loraplex.api.agent import LOAD_REASONS, REFUSED_REASONS, AgentResidency, EnsureCode, EnsureStatus
from loraplex.api.engine_metrics import requests_in_engine
from loraplex.api.tiers import TIERS, Tier
from loraplex.api.wire import to_wire
from loraplex.api.workerplacement import AdapterFailure, ResidentAdapter, adapter_of_engine_name
from loraplex.singleflight import SingleFlight
from loraplex.worker.agent.activity import (
    DEFAULT_ACTIVE_WINDOW,
    DEFAULT_ACTIVITY_INTERVAL,
    Activity,
    by_adapter,
    last_use,
)
from loraplex.worker.agent.adapter_lookup import AdapterLookup, LookupFailed
from loraplex.worker.agent.base_modules import adapter_targets_problem
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.engine_load import LoadMean, to_report
from loraplex.worker.agent.fetch import Fetcher, FetchError
from loraplex.worker.agent.metrics import AgentMetrics
from loraplex.worker.agent.residency import (
    DEFAULT_RETIRE_AFTER,
    LoadFailure,
    RegisteredAdapter,
    RetiringCopy,
    Slots,
    WantedAdapter,
    backing_off,
    engine_name_for,
    engine_names_in_use,
    plan_convergence,
    plan_report,
    protected_revisions,
    retiring_copy_of,
    stale_failures,
)
from loraplex.worker.agent.sources import InvalidSource, catalog_uri
from loraplex.worker.agent.vllm_client import VllmClient, VllmError

log = logging.getLogger("loraplex.agent")
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0
MAX_ATTEMPT_RECORDS = 4096  # failed revisions whose backoff is remembered; the oldest are forgotten first


class EnsureError(Exception):
    """An on-demand load that cannot be served: what kind of refusal (`status`, as the agent's API
    answers it) and why (`reason`: an EnsureCode, or the reason the adapter's fetch or load failed)."""

    def __init__(
        self, status: EnsureStatus, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Ensured:
    name: str
    tier: Tier
    load_seconds: float
    sha256: str  # the revision registered
    engine_name: str | None = None  # the name vLLM serves it under, where not `name`


class Agent:
    def __init__(
        self,
        *,
        worker: str,
        vllm: VllmClient,
        fetcher: Fetcher,
        cache: DiskCache,
        slots: Slots,
        catalog_template: str | None = None,
        adapter_lookup: AdapterLookup | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_report: Callable[[AgentResidency], Awaitable[None]] | None = None,
        active_window: float = DEFAULT_ACTIVE_WINDOW,
        activity_interval: float = DEFAULT_ACTIVITY_INTERVAL,
        wall_clock: Callable[[], float] = time.time,
        base_modules: frozenset[str] | None = None,
        retire_after: float = DEFAULT_RETIRE_AFTER,
    ) -> None:
        self.worker = worker
        # The base model's module names (base_modules.py); None: unknown, adapters' targets unchecked.
        self.base_modules = base_modules
        self.vllm = vllm
        self.fetcher = fetcher
        self.cache = cache
        self.slots = slots
        self.catalog_template = catalog_template
        self.adapter_lookup = adapter_lookup  # named adapters this worker was not placed with
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.on_report = on_report
        self.wanted: list[WantedAdapter] | None = None  # None until the first wanted set arrives
        self.unload: frozenset[str] = frozenset()  # LoRAAdapters being deleted: none held on demand
        self.generation: int | None = None
        self.registered: dict[str, RegisteredAdapter] = {}  # by adapter name: the copy serving it
        self.retiring: dict[str, RetiringCopy] = {}  # by engine name: replaced copies, until routers moved
        self.retire_after = retire_after
        self.failures: dict[str, LoadFailure] = {}
        self._attempts: dict[tuple[str, str | None], int] = {}
        self.load_seconds: dict[str, float] = {}
        self.engine_ready = False
        self._engine_lock = asyncio.Lock()
        self._ensuring: SingleFlight[str, Ensured] = SingleFlight()  # on-demand loads under way
        self._wake = asyncio.Event()
        self._last_report: AgentResidency | None = None
        self.activity = Activity(active_window)
        self.activity_interval = activity_interval
        self.wall_clock = wall_clock  # vLLM stamps activity with the epoch time, not a monotonic clock
        self._activity_read_at: float | None = None
        self.load = LoadMean()  # vLLM's requests running and waiting, read with the activity
        self.requests: float | None = None  # their mean as reported (see engine_load.py)
        self.report_requests = False  # the WorkerPlacement asks for it (its BaseModel scales on load)
        self.metrics.disk_budget.set(cache.budget_bytes)

    # -- inputs -------------------------------------------------------------------------------

    def set_wanted(
        self,
        wanted: list[WantedAdapter],
        generation: int | None = None,
        unload: Iterable[str] = (),
        report_requests: bool = False,
    ) -> None:
        """The WorkerPlacement's spec: what to hold, which adapters being deleted to drop, and whether
        to report the worker's request load."""
        self.wanted = wanted
        self.generation = generation
        self.unload = frozenset(unload)
        self.report_requests = report_requests
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, resync_interval: float = 2.0) -> None:
        """Resync with vLLM and converge whenever woken, and at least every `resync_interval`."""
        while True:
            try:
                await self.resync()
                if self.engine_ready:
                    await self.read_activity()
                if self.engine_ready and self.wanted is not None:
                    await self.converge()
                await self.publish()
            except Exception:
                log.exception("Failed a convergence pass of worker %s", self.worker)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=resync_interval)

    async def resync(self) -> None:
        """Check the residency record against vLLM's own list of adapters.

        The list is read under the engine lock: a load that lands while it is read (an ensure for a
        catalog adapter) would otherwise look gone from vLLM and be dropped from the record.
        """
        async with self._engine_lock:
            try:
                engine = {a.name: a.path for a in await self.vllm.adapters()}
            except (aiohttp.ClientError, TimeoutError, VllmError):
                if self.engine_ready:
                    log.warning("Lost vLLM of worker %s", self.worker)
                self.engine_ready = False
                return
            if not self.engine_ready:
                log.info("Reached vLLM of worker %s adapters=%d", self.worker, len(engine))
            self.engine_ready = True
            for name in list(self.registered):
                if self.registered[name].engine not in engine:
                    log.warning("Found adapter %s gone from vLLM on worker %s; reloading", name, self.worker)
                    self.registered.pop(name)
            for engine_name in [e for e in self.retiring if e not in engine]:
                self.retiring.pop(engine_name)  # vLLM forgot it: nothing left to drain
            known = engine_names_in_use(self.registered, self.retiring)
            for engine_name, path in engine.items():
                if engine_name in known:
                    continue
                revision = self.cache.revision_of(path)
                if revision is None:
                    log.warning(
                        "Unloaded adapter %s of unknown origin from worker %s", engine_name, self.worker
                    )
                    await self.vllm.unload(engine_name)
                    continue
                self._adopt(engine_name, revision)

    def _adopt(self, engine_name: str, revision: str) -> None:
        """A copy vLLM has that the agent's record lacks (the agent restarted): kept as it is. Two
        revisions of one adapter (a swap was under way): the one the WorkerPlacement wants serves, the
        other retires (a plan revives it if it is the one wanted after all)."""
        name = adapter_of_engine_name(engine_name)
        wanted = {w.name: w.sha256 for w in self.wanted or []}
        copy = RegisteredAdapter(
            name,
            revision,
            on_demand=name not in wanted,
            last_used=self.clock(),
            engine_name=engine_name if engine_name != name else "",
        )
        current = self.registered.get(name)
        if current is None:
            self.registered[name] = copy
        elif wanted.get(name) == revision and current.sha256 != revision:
            self.retiring[current.engine] = RetiringCopy(current)
            self.registered[name] = copy
        else:
            self.retiring[engine_name] = RetiringCopy(copy)

    async def read_activity(self) -> None:
        """Every `activity_interval`, take in which held adapters vLLM ran (see activity.py)."""
        now = self.clock()
        if self._activity_read_at is not None and now - self._activity_read_at < self.activity_interval:
            return
        self._activity_read_at = now
        try:
            text = await self.vllm.metrics_text()
            uses, requests = await asyncio.to_thread(_read_metrics, text)  # a big one must not stall ensures
        except (aiohttp.ClientError, TimeoutError, VllmError, ValueError) as error:
            log.warning("Could not read adapter activity from vLLM of worker %s: %s", self.worker, error)
            return
        seen = by_adapter(uses)
        self.activity.merge(seen, self.registered)
        self._take_in_uses(seen)
        self.load.add(now, requests)
        mean = self.load.mean()
        if mean is not None:
            self.requests = to_report(self.requests, mean)

    def _take_in_uses(self, seen: Mapping[str, float]) -> None:
        """vLLM's uses of a copy count for keeping it: copies loaded on demand stay most recently used
        first, and the router sends the requests for a copy vLLM holds straight to vLLM, without an
        ensure, so without these a busy copy would go in the order it was loaded."""
        now, wall_now = self.clock(), self.wall_clock()
        for name, when in seen.items():
            current = self.registered.get(name)
            used_at = now - max(0.0, wall_now - when)  # vLLM stamps epoch seconds; last_used is monotonic
            if current is not None and used_at > current.last_used:
                self.registered[name] = dataclasses.replace(current, last_used=used_at)

    async def converge(self) -> None:
        assert self.wanted is not None
        wanted = self.wanted
        now = self.clock()
        for name in stale_failures(self.failures, wanted, set(self._ensuring), now):
            reason = self.failures.pop(name).reason
            log.info("Dropped stale failure of adapter %s on worker %s reason=%s", name, self.worker, reason)
        plan = plan_convergence(
            wanted,
            self.registered,
            self.cache.revisions(),
            self.failures,
            self.slots,
            now,
            self.unload,
            self.retiring,
        )
        if plan.empty:
            self._evict_disk()
            return
        async with self._engine_lock:
            for engine_name in plan.retire:
                await self._unload_retired(engine_name)
            for name in plan.unload:
                await self._unload(name)
        results = await asyncio.gather(*(self._fetch(f.name, f.uri, f.sha256) for f in plan.fetch))
        fetch_seconds = {
            f.sha256: took for f, took in zip(plan.fetch, results, strict=True) if took is not None
        }
        loading = {load.sha256 for load in plan.load}
        self.metrics.loads.labels(Tier.DISK).inc(len(fetch_seconds.keys() - loading))  # fetched for disk only
        tiers = {w.name: w.tier for w in wanted}
        async with self._engine_lock:
            for name in plan.warm:
                await self._warm(name)
            for load in plan.load:
                if load.revive:
                    await self._revive(load.name, load.engine_name, warm=load.warm)
                    continue
                if not self.cache.has(load.sha256):
                    continue
                started = self.clock()
                if await self._load(load.name, load.sha256, load.engine_name, warm=load.warm):
                    seconds = self.clock() - started + fetch_seconds.get(load.sha256, 0.0)
                    self._record_load(load.name, tiers.get(load.name, Tier.CPU), seconds)
        self._evict_disk()

    # -- on demand ----------------------------------------------------------------------------

    async def ensure(self, name: str, named: bool = False, sha256: str | None = None) -> Ensured:
        """Make `name` servable on this worker now: a named one it holds on disk, a catalog adapter, or
        (`named`: the router knows a LoRAAdapter of that name) a named one placed elsewhere. `sha256`
        is the revision the router's view of the adapter's placement asks for: a copy loaded on demand
        at another revision (the adapter was retrained since) is looked up again and reloaded."""
        current = self.registered.get(name)
        if current is not None and not self._outdated(current, named, sha256):
            return self._already_held(current)
        return await self._ensuring.run(name, lambda: self._ensure_once(name, named))

    def _already_held(self, current: RegisteredAdapter) -> Ensured:
        """An ensure that finds the revision registered: a use of it, no load."""
        self.registered[current.name] = dataclasses.replace(current, last_used=self.clock())
        self.activity.used(current.name, self.wall_clock())
        tier = Tier.GPU if current.warm else Tier.CPU
        return Ensured(current.name, tier, 0.0, current.sha256, _other_than(current.engine, current.name))

    def _outdated(self, current: RegisteredAdapter, named: bool, sha256: str | None) -> bool:
        """A named adapter's copy loaded on demand, not at the revision the router expects."""
        if not named or sha256 is None or current.sha256 == sha256:
            return False
        return not any(want.name == current.name for want in self.wanted or [])

    async def _ensure_once(self, name: str, named: bool) -> Ensured:
        if not self.engine_ready:
            raise EnsureError(
                EnsureStatus.UNAVAILABLE,
                EnsureCode.ENGINE_NOT_READY,
                f"vLLM on worker {self.worker} is not ready",
                1.0,
            )
        started = self.clock()
        uri, sha256, catalog = await self._resolve(name, named)
        if backing_off(self.failures, name, sha256, started):
            failure = self.failures[name]
            raise EnsureError(
                EnsureStatus.UNAVAILABLE,
                failure.reason,
                f"adapter {name} failed to load: {failure.message}",
                failure.retry_at - started,
            )
        if await self._fetch(name, uri, sha256, on_demand=True) is None:
            failure = self.failures[name]
            raise EnsureError(
                _refusal_of(failure.reason), failure.reason, failure.message, failure.retry_at - started
            )
        async with self._engine_lock:
            current = self.registered.get(name)
            fresh = current is not None and current.sha256 == sha256
            if fresh and current is not None:  # the router's view was older than the LoRAAdapter's
                return self._already_held(current)
            revived = retiring_copy_of(self.retiring, name, sha256)
            if revived is not None and await self._revive(name, revived, warm=False):
                return self._already_held(self.registered[name])
            engine_name = engine_name_for(name, sha256, engine_names_in_use(self.registered, self.retiring))
            if engine_name is None:
                raise EnsureError(
                    EnsureStatus.UNAVAILABLE,
                    EnsureCode.LOAD_FAILED,
                    f"adapter {name}: both its engine names are held by copies still retiring",
                    self.retire_after,
                )
            loaded = await self._load(name, sha256, engine_name, warm=False, on_demand=True, catalog=catalog)
        if not loaded:
            failure = self.failures[name]
            raise EnsureError(
                _refusal_of(failure.reason), failure.reason, failure.message, failure.retry_at - started
            )
        seconds = self.clock() - started
        self._record_load(name, Tier.CPU, seconds)
        self.activity.used(name, self.wall_clock())  # the router ensures an adapter to send it a request
        self._wake.set()  # let the next pass drop on-demand adapters beyond the free slots
        return Ensured(name, Tier.CPU, seconds, sha256, _other_than(engine_name, name))

    async def _resolve(self, name: str, named: bool) -> tuple[str, str, bool]:
        for want in self.wanted or []:
            if want.name == name:
                return want.uri, want.sha256, False
        if name in self.unload:
            raise EnsureError(
                EnsureStatus.NOT_FOUND, EnsureCode.ADAPTER_NOT_FOUND, f"adapter {name} is being deleted"
            )
        if named and self.adapter_lookup is not None:
            try:
                source = await self.adapter_lookup(name)
            except LookupFailed as error:
                raise EnsureError(
                    EnsureStatus.UNAVAILABLE, EnsureCode.ADAPTER_LOOKUP_FAILED, str(error), 1.0
                ) from error
            if source is not None:
                return source.uri, source.sha256, False
        if self.catalog_template is None:
            raise EnsureError(
                EnsureStatus.NOT_FOUND,
                EnsureCode.ADAPTER_NOT_FOUND,
                f"adapter {name} is not placed on this worker and there is no catalog",
            )
        try:
            uri = catalog_uri(self.catalog_template, name)
        except InvalidSource as error:
            raise EnsureError(EnsureStatus.INVALID, EnsureCode.INVALID_ADAPTER_NAME, str(error)) from error
        try:
            return uri, await self.fetcher.read_digest(uri), True
        except FetchError as error:
            self.metrics.fetch_failures.labels(error.reason).inc()
            if error.reason in ("SourceNotFound", "DigestMissing"):
                raise EnsureError(
                    EnsureStatus.NOT_FOUND,
                    EnsureCode.ADAPTER_NOT_FOUND,
                    f"adapter {name} is not in the catalog: {error.message}",
                ) from error
            raise EnsureError(_refusal_of(error.reason), error.reason, error.message) from error

    # -- steps --------------------------------------------------------------------------------

    async def _fetch(self, name: str, uri: str, sha256: str, *, on_demand: bool = False) -> float | None:
        """Seconds the fetch took, or None when it failed (the failure is recorded).

        Success clears a fetch failure of the same revision; a load failure stays until it loads.
        """
        started = self.clock()
        try:
            await self.fetcher.fetch(uri, sha256)
        except FetchError as error:
            self._fail(name, sha256, error.reason, error.message, on_demand)
            return None
        failure = self.failures.get(name)
        if failure is not None and failure.sha256 == sha256 and failure.reason not in LOAD_REASONS:
            del self.failures[name]
        return self.clock() - started

    async def _load(
        self,
        name: str,
        sha256: str,
        engine_name: str,
        *,
        warm: bool,
        on_demand: bool = False,
        catalog: bool = False,
    ) -> bool:
        """Register the revision in vLLM under `engine_name` (warmed for the GPU tier); a copy of
        another revision it replaces retires. False when it failed (the failure is recorded)."""
        path = str(self.cache.path(sha256))
        if self.base_modules is not None:
            problem = await asyncio.to_thread(adapter_targets_problem, Path(path), self.base_modules)
            if problem is not None:
                self._fail(name, sha256, EnsureCode.TARGET_MODULES_NOT_IN_BASE, problem, on_demand)
                return False
        try:
            await self.vllm.load(engine_name, path)
            if warm:
                await self.vllm.warm(engine_name)
        except VllmError as error:
            self._fail(name, sha256, EnsureCode.LOAD_FAILED, error.message, on_demand)
            return False
        self.cache.touch(sha256)
        own_name = "" if engine_name == name else engine_name
        self._take_over(RegisteredAdapter(name, sha256, on_demand, catalog, self.clock(), warm, own_name))
        failure = self.failures.get(name)
        if failure is not None and failure.sha256 == sha256:
            del self.failures[name]
        self._attempts.pop((name, sha256), None)
        log.info(
            "Loaded adapter %s on worker %s revision=%s engine_name=%s",
            name, self.worker, sha256[:12], engine_name,
        )  # fmt: skip
        return True

    def _take_over(self, copy: RegisteredAdapter) -> None:
        """`copy` serves its adapter from now on; the copy it replaces (another revision) retires."""
        current = self.registered.get(copy.name)
        if current is not None and current.engine != copy.engine:
            self.retiring[current.engine] = RetiringCopy(current)
            self.metrics.swaps.inc()
            log.info(
                "Retired adapter %s revision=%s on worker %s engine_name=%s successor=%s",
                copy.name, current.sha256[:12], self.worker, current.engine, copy.engine,
            )  # fmt: skip
        self.registered[copy.name] = copy

    async def _revive(self, name: str, engine_name: str, *, warm: bool) -> bool:
        """A retiring copy at the revision wanted again serves once more: no load (warmed if asked)."""
        retired = self.retiring.get(engine_name)
        if retired is None:  # unloaded meanwhile: the next pass loads the revision
            return False
        copy = retired.copy
        if warm and not copy.warm:
            try:
                await self.vllm.warm(engine_name)
            except VllmError as error:
                log.warning("Failed to warm adapter %s on worker %s: %s", name, self.worker, error.message)
                return False
            copy = dataclasses.replace(copy, warm=True)
        del self.retiring[engine_name]
        self._take_over(dataclasses.replace(copy, last_used=self.clock()))
        log.info("Revived adapter %s on worker %s engine_name=%s", name, self.worker, engine_name)
        return True

    async def _warm(self, name: str) -> None:
        current = self.registered.get(name)
        if current is None:
            return
        try:
            await self.vllm.warm(current.engine)
        except VllmError as error:
            log.warning("Failed to warm adapter %s on worker %s: %s", name, self.worker, error.message)
            return
        self.registered[name] = dataclasses.replace(current, warm=True)

    async def _unload(self, name: str) -> None:
        current = self.registered.get(name)
        tier = Tier.GPU if current is not None and current.warm else Tier.CPU
        await self.vllm.unload(current.engine if current is not None else name)
        self.registered.pop(name, None)
        self.metrics.evictions.labels(tier).inc()
        log.info("Unloaded adapter %s from worker %s", name, self.worker)

    async def _unload_retired(self, engine_name: str) -> None:
        """A retired copy's drain has passed: unload it (requests vLLM already took for it finish)."""
        retired = self.retiring.get(engine_name)
        if retired is None:
            return
        await self.vllm.unload(engine_name)
        del self.retiring[engine_name]
        log.info(
            "Unloaded retired adapter %s revision=%s from worker %s engine_name=%s",
            retired.copy.name, retired.copy.sha256[:12], self.worker, engine_name,
        )  # fmt: skip

    def _fail(self, name: str, sha256: str | None, reason: str, message: str, on_demand: bool) -> None:
        attempts = self._attempts.pop((name, sha256), 0) + 1
        self._attempts[(name, sha256)] = attempts  # re-inserted: the dict runs oldest failure first
        while len(self._attempts) > MAX_ATTEMPT_RECORDS:
            del self._attempts[next(iter(self._attempts))]
        backoff = min(FIRST_BACKOFF * 2 ** (attempts - 1), MAX_BACKOFF)
        self.failures[name] = LoadFailure(name, sha256, reason, message, self.clock() + backoff, on_demand)
        self.metrics.fetch_failures.labels(reason).inc()
        log.warning(
            "Failed to load adapter %s on worker %s reason=%s: %s", name, self.worker, reason, message
        )

    def _record_load(self, name: str, tier: Tier, seconds: float) -> None:
        self.load_seconds[name] = seconds
        self.metrics.loads.labels(tier).inc()
        self.metrics.load_seconds.labels(tier).observe(seconds)

    def _evict_disk(self) -> None:
        protected = protected_revisions(self.wanted or [], self.registered, self.retiring)
        self.cache.evict(
            protected, on_evict=lambda _sha, _size: self.metrics.evictions.labels(Tier.DISK).inc()
        )

    # -- reporting ----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The residency report as the agent's API answers it (camelCase, as in status)."""
        return to_wire(self.residency())

    def residency(self) -> AgentResidency:
        """What the agent holds per tier, and what failed: its WorkerPlacement status, and more."""
        wanted = self.wanted or []
        held = plan_report(wanted, self.registered, self.cache.revisions(), self.slots)
        active = self.activity.active(self.wall_clock()) & self.registered.keys()
        self.metrics.active_adapters.set(len(active))
        adapters = []
        bytes_by_tier = dict.fromkeys(TIERS, 0)
        count_by_tier = dict.fromkeys(TIERS, 0)
        for entry in held:
            size = self.cache.size(entry.sha256)
            bytes_by_tier[entry.tier] += size or 0
            count_by_tier[entry.tier] += 1
            item: dict[str, Any] = {"name": entry.name, "sha256": entry.sha256, "tier": entry.tier}
            if entry.engine_name is not None:
                item["engine_name"] = entry.engine_name
            if size is not None:
                item["bytes"] = size
            if entry.name in self.load_seconds:
                item["load_seconds"] = round(self.load_seconds[entry.name], 4)
            if entry.catalog:
                item["catalog"] = True
            if entry.on_demand:
                item["on_demand"] = True
            if entry.name in active:
                item["active"] = True
            adapters.append(ResidentAdapter(**item))
        for tier in TIERS:
            self.metrics.cache_bytes.labels(tier).set(
                bytes_by_tier[tier] if tier != Tier.DISK else self.cache.used_bytes
            )
            self.metrics.adapters.labels(tier).set(count_by_tier[tier])
        wanted_names = {w.name for w in wanted}
        held_wanted = sum(1 for entry in held if entry.name in wanted_names)
        return AgentResidency(
            worker=self.worker,
            engine_ready=self.engine_ready,
            adapters=adapters,
            failures=[
                AdapterFailure(name=f.name, reason=f.reason, message=f.message[:1024])
                for f in sorted(self.failures.values(), key=lambda f: f.name)
            ],
            gpu_slots=self.slots.gpu,
            cpu_slots=self.slots.cpu,
            held=f"{held_wanted}/{len(wanted)}",
            observed_generation=self.generation,
            **({"requests": self.requests} if self.report_requests and self.requests is not None else {}),
        )

    async def publish(self) -> None:
        report = self.residency()
        if report != self._last_report and self.on_report is not None:
            await self.on_report(report)
        self._last_report = report
        if self.on_report is None:  # no status to write: the agent's own report is what routers read
            self.reported(report)

    def reported(self, report: AgentResidency) -> None:
        """`report` is out where routers read it (the WorkerPlacement status written, or the agent's
        own report): each retiring copy it no longer names starts its drain of `retire_after`."""
        serving = {a.name: a.engine_name or a.name for a in report.adapters if a.tier != Tier.DISK}
        unload_after = self.clock() + self.retire_after
        for engine_name, retired in list(self.retiring.items()):
            if retired.unload_after is None and serving.get(retired.copy.name) != engine_name:
                self.retiring[engine_name] = dataclasses.replace(retired, unload_after=unload_after)


def _read_metrics(text: str) -> tuple[dict[str, float], float]:
    """From vLLM's `/metrics`: each engine name's last use, and the requests running or waiting."""
    return last_use(text), requests_in_engine(text)


def _other_than(engine_name: str, name: str) -> str | None:
    """An engine name as reports and ensure answers carry it: only where it is not the adapter's name."""
    return engine_name if engine_name != name else None


def _refusal_of(reason: str) -> EnsureStatus:
    """A failed fetch or load: refused for good (that revision fails again), or unavailable for now."""
    return EnsureStatus.REFUSED if reason in REFUSED_REASONS else EnsureStatus.UNAVAILABLE

"""Where the agent learns what to hold, and where it reports what it holds.

In a cluster: the worker's own WorkerPlacement (named after the pod), watched
by name, and its `status` subresource, written only when the report changed
(and at most every `min_interval` seconds: bursts of loads coalesce into one
write); `on_written` hears of each report written (the agent retires replaced
revisions only once routers can have read their successors). For local use
and tests: a YAML/JSON file with the same `adapters` (and `unload`) lists as a
WorkerPlacement spec, re-read when it changes, and no status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loraplex.api import GROUP, VERSION, WORKER_PLACEMENTS
from loraplex.api.agent import AgentResidency
from loraplex.api.conditions import ConditionUpdate, merge_conditions
from loraplex.api.tiers import Tier
from loraplex.api.wire import to_wire
from loraplex.kube import list_and_watch
from loraplex.worker.agent.residency import WantedAdapter

log = logging.getLogger("loraplex.agent")
# (wanted adapters, the WorkerPlacement's generation, the adapters being deleted to unload, whether
# to report the worker's request load)
WantedCallback = Callable[[list[WantedAdapter], int | None, list[str], bool], None]


def wanted_from_spec(spec: dict[str, Any]) -> list[WantedAdapter]:
    return [
        WantedAdapter(
            name=item["name"],
            uri=item["uri"],
            sha256=item["sha256"],
            tier=Tier(item.get("tier", Tier.CPU)),
            pinned=bool(item.get("pinned", False)),
        )
        for item in spec.get("adapters", [])
    ]


def unload_from_spec(spec: dict[str, Any]) -> list[str]:
    return [str(name) for name in spec.get("unload") or []]


def reports_requests(spec: dict[str, Any]) -> bool:
    """Whether the operator asks for the worker's request load (`spec.reportRequests`)."""
    return bool(spec.get("reportRequests", False))


class FileSource:
    """Wanted adapters from a file (`adapters: [...]`), polled for changes."""

    def __init__(self, path: Path, on_wanted: WantedCallback, interval: float = 1.0) -> None:
        self.path = path
        self.on_wanted = on_wanted
        self.interval = interval
        self._seen: float | None = None

    async def run(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):
                mtime = self.path.stat().st_mtime
                if mtime != self._seen:
                    self._seen = mtime
                    spec = yaml.safe_load(self.path.read_text()) or {}
                    self.on_wanted(
                        wanted_from_spec(spec), None, unload_from_spec(spec), reports_requests(spec)
                    )
            await asyncio.sleep(self.interval)


class WorkerPlacementSource:
    """Watches one WorkerPlacement by name and writes its status."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        name: str,
        on_wanted: WantedCallback,
        *,
        min_interval: float = 0.5,
    ) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name
        self.on_wanted = on_wanted
        self.min_interval = min_interval
        self._conditions: list[dict[str, Any]] = []
        self._written: AgentResidency | None = None
        self.on_written: Callable[[AgentResidency], None] | None = None  # after each write of a report
        self._pending: AgentResidency | None = None
        self._changed = asyncio.Event()
        self._stop = threading.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def deliver(
            wanted: list[WantedAdapter], generation: int | None, unload: list[str], report_requests: bool
        ) -> None:
            loop.call_soon_threadsafe(self.on_wanted, wanted, generation, unload, report_requests)

        watcher = threading.Thread(target=self._watch, args=(deliver,), name="placement-watch", daemon=True)
        watcher.start()
        try:
            await self._write_loop()
        finally:
            self._stop.set()

    def _watch(self, deliver: WantedCallback) -> None:
        list_fn = functools.partial(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, WORKER_PLACEMENTS
        )
        list_and_watch(
            f"WorkerPlacement {self.namespace}/{self.name}",
            list_fn,
            lambda items: self._deliver(items[0] if items else None, deliver),
            lambda kind, obj: self._deliver(None if kind == "DELETED" else obj, deliver),
            self._stop,
            self.custom.api_client.sanitize_for_serialization,
            field_selector=f"metadata.name={self.name}",
        )

    @staticmethod
    def _deliver(obj: dict[str, Any] | None, deliver: WantedCallback) -> None:
        if obj is None:
            deliver([], None, [], False)
            return
        spec = obj.get("spec", {})
        generation = obj["metadata"].get("generation")
        deliver(wanted_from_spec(spec), generation, unload_from_spec(spec), reports_requests(spec))

    async def report(self, report: AgentResidency) -> None:
        """Queue a report for the status; the write loop coalesces and sends it."""
        self._pending = report
        self._changed.set()

    async def _write_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            report = self._pending
            if report is not None and report != self._written:
                try:
                    await asyncio.to_thread(self._write, report)
                    self._written = report
                    if self.on_written is not None:
                        self.on_written(report)
                except Exception as error:
                    log.warning("Failed to write status of WorkerPlacement %s: %s", self.name, error)
                    self._changed.set()
            await asyncio.sleep(self.min_interval)

    def _write(self, report: AgentResidency) -> None:
        from kubernetes.client.exceptions import ApiException

        generation = report.observed_generation
        if generation is None:
            return  # no WorkerPlacement yet: nothing to write on
        self._conditions = merge_conditions(
            self._conditions, [ready_condition(report)], generation, datetime.now(UTC)
        )
        status = to_wire(report.placement_status(self._conditions))
        status.setdefault("requests", None)  # a merge patch keeps what it leaves out: null drops a stale load
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, WORKER_PLACEMENTS, self.name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:
                raise


def ready_condition(report: AgentResidency) -> ConditionUpdate:
    if not report.engine_ready:
        return ConditionUpdate("Ready", "False", "EngineNotReady", "vLLM is not answering yet")
    held, _, wanted = (report.held or "0/0").partition("/")
    if report.failures:
        names = ", ".join(f.name for f in report.failures[:5])
        return ConditionUpdate("Ready", "False", "LoadFailed", f"held {held} of {wanted}; failed: {names}")
    if held != wanted:
        return ConditionUpdate("Ready", "False", "Loading", f"held {held} of {wanted} adapters")
    return ConditionUpdate("Ready", "True", "Converged", f"holds all {wanted} adapters")

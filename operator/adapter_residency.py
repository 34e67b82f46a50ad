"""Decides a placed LoRAAdapter's status from what the agents report holding.

Pure: the caller passes the adapter's spec, the workers the plan put it on,
and what the workers report about it (their WorkerPlacement statuses, turned
by `reports_by_adapter` into one entry per adapter once per pass, so each
adapter costs its own copies, not the fleet's size). A copy counts
as ready only when an agent reports it loaded with the adapter's digest: the
plan alone is not residency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.operator.conditions import ConditionUpdate, merge_conditions

TIER_ORDER = {"GPU": 0, "CPU": 1, "Disk": 2}


@dataclass(frozen=True)
class Resident:
    """One adapter as one agent reports holding it."""

    tier: str
    sha256: str | None
    load_seconds: float | None = None


@dataclass(frozen=True)
class WorkerReport:
    """What one worker's agent reports: adapters held, and adapters it failed to load."""

    held: Mapping[str, Resident]
    failures: Mapping[str, tuple[str, str]]  # adapter -> (reason, message)


@dataclass(frozen=True)
class AdapterReports:
    """What the workers report about one adapter: who holds it, who failed to load it."""

    held: Mapping[str, Resident] = field(default_factory=dict)  # worker -> its copy
    failures: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # worker -> (reason, message)


NOT_REPORTED = AdapterReports()


def reports_by_adapter(workers: Mapping[str, WorkerReport]) -> dict[str, AdapterReports]:
    """The workers' reports turned around, adapter -> reports: O(copies and failures reported)."""
    held: dict[str, dict[str, Resident]] = {}
    failed: dict[str, dict[str, tuple[str, str]]] = {}
    for worker, report in workers.items():
        for adapter, resident in report.held.items():
            held.setdefault(adapter, {})[worker] = resident
        for adapter, failure in report.failures.items():
            failed.setdefault(adapter, {})[worker] = failure
    return {
        adapter: AdapterReports(held.get(adapter, {}), failed.get(adapter, {}))
        for adapter in held.keys() | failed.keys()
    }


def plan_placed_adapter_status(
    spec: LoRAAdapterSpec,
    generation: int,
    planned_workers: Sequence[str],
    reports: AdapterReports,
    previous: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """The adapter's status once the placement planner has given it workers."""
    placements, latencies = [], []
    for worker, resident in reports.held.items():
        if resident.sha256 == spec.source.sha256:
            placements.append({"worker": worker, "tier": resident.tier})
            if resident.load_seconds is not None:
                latencies.append(resident.load_seconds)
    failures = [(worker, *reports.failures[worker]) for worker in sorted(reports.failures)]
    placements.sort(key=lambda p: (TIER_ORDER[p["tier"]], p["worker"]))
    ready_copies = len(placements)
    desired = spec.replicas
    ready = _ready(spec, ready_copies, desired, len(planned_workers), failures)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": _phase(ready, ready_copies),
        "placements": placements,
        "readyReplicas": ready_copies,
        "copies": f"{ready_copies}/{desired}",
        "revision": spec.source.sha256,
        "conditions": merge_conditions(
            previous.get("conditions", []),
            [
                ready,
                ConditionUpdate(
                    "Reconciling", "True" if ready.reason == "Loading" else "False", ready.reason
                ),
                _stalled(ready) if failures else ConditionUpdate("Stalled", "False", "AsExpected"),
            ],
            generation,
            now,
        ),
    }
    if latencies:
        status["lastLoadLatencySeconds"] = max(latencies)
    return status


def _ready(
    spec: LoRAAdapterSpec, ready_copies: int, desired: int, planned: int, failures: list[tuple[str, str, str]]
) -> ConditionUpdate:
    if failures:
        worker, reason, message = failures[0]
        text = f"{worker} could not load it: {message}" if message else f"{worker} could not load it"
        return ConditionUpdate("Ready", "False", reason, text)
    if ready_copies >= desired:
        return ConditionUpdate("Ready", "True", "Placed", f"{ready_copies} of {desired} copies loaded")
    if planned < desired:
        message = (
            f"only {planned} of {desired} copies fit on the workers: add workers or lower other replicas"
        )
        return ConditionUpdate("Ready", "False", "InsufficientCapacity", message)
    return ConditionUpdate("Ready", "False", "Loading", f"{ready_copies} of {desired} copies loaded")


def _stalled(ready: ConditionUpdate) -> ConditionUpdate:
    return ConditionUpdate("Stalled", "True", ready.reason, ready.message)


def _phase(ready: ConditionUpdate, ready_copies: int) -> str:
    if ready.status == "True":
        return "Ready"
    if ready.reason == "Loading":
        return "Loading"
    return "Degraded" if ready_copies else "Failed"

"""Decides a placed LoRAAdapter's status from what the agents report holding.

Pure: the caller passes the adapter's spec, the workers the plan put it on,
how far the fleet has come up (ready workers against the fleet scaler's
target), and what the workers report about it (their WorkerPlacement statuses,
turned by `reports_by_adapter` into one entry per adapter once per pass, so
each adapter costs its own copies, not the fleet's size). A copy counts as
ready only when an agent reports it loaded with the adapter's digest: the plan
alone is not residency. A failure counts only when a worker the plan puts the
adapter on reports it: one from a worker it has left says nothing now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraplex.api.adapter import LoRAAdapterSpec, LoRAAdapterStatus
from loraplex.api.conditions import ConditionUpdate, condition, merge_conditions
from loraplex.api.tiers import Tier
from loraplex.api.wire import to_wire

# The Ready reasons this module decides itself; any other is a failure an agent reported.
PLACEMENT_REASONS = frozenset({"Placed", "Loading", "WaitingForWorkers", "InsufficientCapacity"})
IN_PROGRESS_REASONS = frozenset({"Loading", "WaitingForWorkers"})


@dataclass(frozen=True)
class Resident:
    """One adapter as one agent reports holding it."""

    tier: str
    sha256: str | None
    load_seconds: float | None = None
    active: bool = False  # vLLM ran it (or the router ensured it) within the agent's active window


@dataclass(frozen=True)
class WorkerReport:
    """What one worker's agent reports: adapters held, adapters it failed to load, its request load."""

    held: Mapping[str, Resident]
    failures: Mapping[str, tuple[str, str]]  # adapter -> (reason, message)
    requests: float | None = None  # running or waiting in its vLLM, a one-minute mean; None: not reported


@dataclass(frozen=True)
class AdapterReports:
    """What the workers report about one adapter: who holds it, who failed to load it."""

    held: Mapping[str, Resident] = field(default_factory=dict)  # worker -> its copy
    failures: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # worker -> (reason, message)


NOT_REPORTED = AdapterReports()


@dataclass(frozen=True)
class FleetSize:
    """The BaseModel's workers: how many are ready, and how many the fleet scaler is bringing up."""

    ready: int
    target: int

    @property
    def starting(self) -> bool:
        """Fewer workers are ready than the fleet is heading for: copies that do not fit may fit soon."""
        return self.ready < self.target


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


def active_adapters(workers: Mapping[str, WorkerReport]) -> set[str]:
    """Adapters some agent reports used within its active window: they rank above idle ones."""
    return {name for report in workers.values() for name, held in report.held.items() if held.active}


def plan_placed_adapter_status(
    spec: LoRAAdapterSpec,
    generation: int,
    planned_workers: Sequence[str],
    reports: AdapterReports,
    fleet: FleetSize,
    previous: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """The adapter's status once the placement planner has given it workers: its LoRAAdapterStatus."""
    placements, latencies = [], []
    for worker, resident in reports.held.items():
        if resident.sha256 == spec.source.sha256:
            placements.append({"worker": worker, "tier": resident.tier})
            if resident.load_seconds is not None:
                latencies.append(resident.load_seconds)
    # Only the workers the plan puts it on now: a failure on a worker it has left says nothing now.
    failing = sorted(reports.failures.keys() & set(planned_workers))
    failures = [(worker, *reports.failures[worker]) for worker in failing]
    placements.sort(key=lambda p: (Tier(p["tier"]).rank, p["worker"]))
    ready_copies = len(placements)
    desired = spec.replicas
    ready = _ready(ready_copies, desired, len(planned_workers), fleet, failures)
    latency = {"last_load_latency_seconds": max(latencies)} if latencies else {}  # unset: not written
    status = LoRAAdapterStatus(
        observed_generation=generation,
        phase=_phase(ready, ready_copies),
        placements=placements,
        ready_replicas=ready_copies,
        copies=f"{ready_copies}/{desired}",
        revision=spec.source.sha256,
        conditions=merge_conditions(
            previous.get("conditions", []),
            [
                ready,
                ConditionUpdate(
                    "Reconciling", "True" if ready.reason in IN_PROGRESS_REASONS else "False", ready.reason
                ),
                _stalled(ready) if failures else ConditionUpdate("Stalled", "False", "AsExpected"),
            ],
            generation,
            now,
        ),
        **latency,
    )
    return to_wire(status)


def agent_failure_to_announce(
    previous: Mapping[str, Any], planned: Mapping[str, Any]
) -> ConditionUpdate | None:
    """The Ready condition to announce in a Warning Event: only when an agent-reported failure
    becomes the adapter's Ready reason (a new reason), not on each pass that still shows it."""
    after = condition(planned.get("conditions", []), "Ready")
    before = condition(previous.get("conditions", []), "Ready") or {}
    if after is None or after["reason"] in PLACEMENT_REASONS or after["reason"] == before.get("reason"):
        return None
    return ConditionUpdate("Ready", after["status"], after["reason"], after["message"])


def _ready(
    ready_copies: int, desired: int, planned: int, fleet: FleetSize, failures: list[tuple[str, str, str]]
) -> ConditionUpdate:
    if failures:
        worker, reason, message = failures[0]
        text = f"{worker} could not load it: {message}" if message else f"{worker} could not load it"
        return ConditionUpdate("Ready", "False", reason, text)
    if ready_copies >= desired:
        return ConditionUpdate("Ready", "True", "Placed", f"{ready_copies} of {desired} copies loaded")
    if planned < desired and fleet.starting:
        message = (
            f"{fleet.ready} of {fleet.target} workers ready; {planned} of {desired} copies fit on them "
            "so far: waiting for the fleet to come up"
        )
        return ConditionUpdate("Ready", "False", "WaitingForWorkers", message)
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
    if ready.reason == "WaitingForWorkers":
        return "Degraded" if ready_copies else "Pending"
    return "Degraded" if ready_copies else "Failed"

"""The operator's Prometheus metrics (prefix loraplex_, base units, bounded labels).

Labels stay bounded: kinds, results, resources, verbs, tiers, phases and BaseModels (`namespace`
and `base_model`), never adapter names. A deleted BaseModel's series go with it
(`forget_base_model`). `reconciling` times and counts one reconcile of a kind by its result.

`loraplex_api_writes_total` counts the writes the operator's code decides: those it sends itself
and those kopf sends for a handler because the handler filled kopf's `patch` (counted where the
handler fills it: kopf sends the metadata part as one patch of the object and the status part as one
of its status). kopf's own bookkeeping (its finalizer, handler progress, peering, Events) is not
counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import kopf
from prometheus_client import Counter, Gauge, Histogram, Info

from loraplex.api.release import __version__
from loraplex.api.tiers import TIERS

BUILD_INFO = Info("loraplex_build", "Version of the running loraplex operator")
BUILD_INFO.info({"version": __version__, "component": "operator"})

RECONCILES = Counter(
    "loraplex_reconciles_total",
    "Reconciles by kind and result (ok, invalid, retry, error)",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "loraplex_reconcile_duration_seconds", "Time one reconcile took, by kind and result", ["kind", "result"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
API_WRITES = Counter(
    "loraplex_api_writes_total",
    "Writes the operator sent to the API, by resource and verb",
    ["resource", "verb"],
)
APPLY_SKIPPED = Counter(
    "loraplex_apply_skipped_total",
    "Child objects left alone because their content had not changed",
    ["resource"],
)
WORKERS = Gauge(
    "loraplex_workers",
    "Worker pods by BaseModel and state (desired, ready)",
    ["namespace", "base_model", "state"],
)
FLEET_SCALINGS = Counter(
    "loraplex_fleet_scalings_total",
    "Worker StatefulSet resizes made to hold the adapters warm, by BaseModel and direction",
    ["namespace", "base_model", "direction"],
)
PLANNER_SECONDS = Histogram(
    "loraplex_planner_duration_seconds",
    "Time the placement planner took in one placement pass (planning only, no API calls)",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
PLACEMENT_PASSES = Counter(
    "loraplex_placement_passes_total",
    "Placement loop wake-ups, by outcome: ran (inputs changed or work pending), idle (nothing changed), "
    "failed (an API call failed during the pass; the next wake-up runs it again)",
    ["outcome"],
)
PLACEMENT_PASS_SECONDS = Histogram(
    "loraplex_placement_pass_duration_seconds", "Time one placement pass took (plan, apply, statuses)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)  # fmt: skip
ADAPTER_COPIES = Gauge(
    "loraplex_adapter_copies",
    "Adapter copies placed, by BaseModel and tier",
    ["namespace", "base_model", "tier"],
)
ADAPTERS_PENDING = Gauge(
    "loraplex_adapters_pending",
    "Adapters of a BaseModel short of their replicas (capacity)",
    ["namespace", "base_model"],
)
ADAPTERS_ACTIVE = Gauge(
    "loraplex_adapters_active",
    "Adapters of a BaseModel that an agent reports used within its active window (they outrank idle ones)",
    ["namespace", "base_model"],
)
PLACEMENT_MOVES = Counter(
    "loraplex_placement_moves_total", "Adapter copies the planner moved", ["namespace", "base_model"]
)
TRAINING_JOBS = Gauge(
    "loraplex_training_jobs",
    "TrainingJobs by phase (Queued, Running, Preempted, Succeeded, Failed)",
    ["phase"],
)
WARM_TRAINERS = Gauge(
    "loraplex_training_warm_trainers", "Warm trainers that have not finished (holding their GPUs)"
)
WARM_TENANTS = Gauge("loraplex_training_warm_tenants", "TrainingJobs running as tenants of warm trainers")
TRAINING_ADMISSIONS = Counter(
    "loraplex_training_admissions_total", "Trainer attempts the operator admitted onto a node"
)
TRAINING_PREEMPTIONS = Counter(
    "loraplex_training_preemptions_total", "Trainer attempts preempted (serving took the GPUs back)"
)
TRAINING_PASS_SECONDS = Histogram(
    "loraplex_training_pass_duration_seconds", "Time one training admission pass took",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)  # fmt: skip


# Every series labelled by one BaseModel, with the values of their other labels.
_PER_BASE_MODEL: tuple[tuple[Gauge | Counter, tuple[str, ...]], ...] = (
    (WORKERS, ("desired", "ready")),
    (FLEET_SCALINGS, ("up", "down")),
    (ADAPTER_COPIES, TIERS),
    (ADAPTERS_PENDING, ("",)),
    (ADAPTERS_ACTIVE, ("",)),
    (PLACEMENT_MOVES, ("",)),
)


def track_base_model(namespace: str, name: str) -> None:
    """Export a BaseModel's counters at 0 before their first event, so a query of them has data."""
    for direction in ("up", "down"):
        FLEET_SCALINGS.labels(namespace, name, direction)
    PLACEMENT_MOVES.labels(namespace, name)


def forget_base_model(namespace: str, name: str) -> None:
    """Remove every series of one BaseModel, so a deleted one leaves no stale gauge behind."""
    for metric, values in _PER_BASE_MODEL:
        for value in values:
            labels = (namespace, name, value) if value else (namespace, name)
            with suppress(KeyError):
                metric.remove(*labels)


@dataclass
class Outcome:
    """The result label of a reconcile in progress; a handler sets `invalid` for bad user input."""

    result: str = "ok"


@contextmanager
def reconciling(kind: str) -> Iterator[Outcome]:
    """Count and time one reconcile of `kind`, whatever it ends with.

    Results: `ok`; `invalid` (the object cannot be acted on as it stands, e.g. a LoRAAdapter whose
    BaseModel is missing or cannot take it, and its status says why: the handler sets it); `error`
    (kopf.PermanentError: kopf gives up until the object changes); `retry` (any other exception:
    kopf retries a change handler, a timer tries again on its next tick).
    """
    outcome, started = Outcome(), time.monotonic()
    try:
        yield outcome
    except kopf.PermanentError:
        outcome.result = "error"
        raise
    except Exception:
        outcome.result = "retry"
        raise
    finally:
        RECONCILES.labels(kind, outcome.result).inc()
        RECONCILE_SECONDS.labels(kind, outcome.result).observe(time.monotonic() - started)

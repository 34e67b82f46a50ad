"""The operator's Prometheus metrics (prefix loraplex_, base units, bounded labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from loraplex import __version__

BUILD_INFO = Info("loraplex_build", "Version of the running loraplex operator")
BUILD_INFO.info({"version": __version__, "component": "operator"})

RECONCILES = Counter(
    "loraplex_reconciles_total", "Reconciles by kind and result (ok, retry, error)", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "loraplex_reconcile_duration_seconds", "Time one reconcile took", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
    "loraplex_workers", "Worker pods by BaseModel and state (desired, ready)", ["base_model", "state"]
)
FLEET_SCALINGS = Counter(
    "loraplex_fleet_scalings_total",
    "Worker StatefulSet resizes made to hold the adapters warm, by BaseModel and direction",
    ["base_model", "direction"],
)
PLANNER_SECONDS = Histogram(
    "loraplex_placement_pass_duration_seconds", "Time one placement pass took (plan, apply, statuses)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)  # fmt: skip
ADAPTER_COPIES = Gauge(
    "loraplex_adapter_copies", "Adapter copies placed, by BaseModel and tier", ["base_model", "tier"]
)
ADAPTERS_PENDING = Gauge(
    "loraplex_adapters_pending", "Adapters of a BaseModel short of their replicas (capacity)", ["base_model"]
)
PLACEMENT_MOVES = Counter(
    "loraplex_placement_moves_total", "Adapter copies the planner moved", ["base_model"]
)
TRAINING_JOBS = Gauge(
    "loraplex_training_jobs",
    "TrainingJobs by phase (Queued, Running, Preempted, Succeeded, Failed)",
    ["phase"],
)
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

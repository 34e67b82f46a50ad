"""The router's Prometheus metrics (prefix loraplex_router_, base units, bounded labels).

Label sets stay bounded: tiers, status codes and workers are small sets;
per-adapter series exist only for named adapters (the head, with LoRAAdapter
objects); requests for catalog (tail) adapters share the adapter label value
`_catalog`, and requests for the base model use `_base`. `prune` drops the
series of adapters no longer named and of workers that are gone, so a
long-running router's series follow the fleet instead of its history.
Named adapters are bounded too, for a fleet of tens of thousands of LoRAAdapters: at
most `adapter_labels` of them are named at a time, the first seen while there is room;
the others share `_other`. Per-principal series (quotas) are bounded the same way by
`principal_labels`. A subject or an adapter idle for `IDLE_SECONDS` gives its place up
at the next prune (its series are dropped), so the names follow the traffic.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from loraplex.api.release import __version__
from loraplex.router.errors import RETRY_REASONS

CATALOG = "_catalog"
BASE = "_base"
OTHER = "_other"
_AGGREGATES = frozenset({CATALOG, BASE, OTHER})  # label values that stand for many adapters
IDLE_SECONDS = 900.0
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DECISION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class BoundedLabels:
    """The label value of each key (a principal's subject, an adapter): itself while there is room, else
    OTHER."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.last_seen: dict[str, float] = {}

    def label(self, subject: str, now: float) -> str:
        if subject in self.last_seen or len(self.last_seen) < self.limit:
            self.last_seen[subject] = now
            return subject
        return OTHER

    def idle(self, now: float, idle_seconds: float = IDLE_SECONDS) -> list[str]:
        """Forget the keys not seen for `idle_seconds`; they are returned, to drop their series."""
        gone = [s for s, seen in self.last_seen.items() if now - seen > idle_seconds]
        for subject in gone:
            del self.last_seen[subject]
        return gone

    def forget(self, key: str) -> None:
        """Give a key's place up at once (an adapter no longer named)."""
        self.last_seen.pop(key, None)


class RouterMetrics:
    """One registry per router (tests build several in one process)."""

    def __init__(self, base_model: str, principal_labels: int = 50, adapter_labels: int = 100) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("loraplex_build", "Version of the running loraplex router", registry=r).info(
            {"version": __version__, "component": "router", "base_model": base_model}
        )
        self.requests = Counter(
            "loraplex_router_requests_total",
            "Requests routed, by where the chosen worker held the adapter (gpu, cpu, disk, miss; base)",
            ["tier"],
            registry=r,
        )
        self.responses = Counter(
            "loraplex_router_responses_total", "Responses sent, by HTTP status", ["status"], registry=r
        )
        self.decision_seconds = Histogram(
            "loraplex_router_decision_seconds", "Time one routing decision took",
            buckets=_DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft_seconds = Histogram(
            "loraplex_router_upstream_time_to_first_token_seconds",
            "Streamed requests: from sending one to a worker to its first response bytes",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency_seconds = Histogram(
            "loraplex_router_upstream_latency_seconds",
            "From sending a request to a worker to the end of its response",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "loraplex_router_retries_total",
            "Requests retried on another worker, by why (connect, status, stream, not_loaded, ...)",
            ["reason"],
            registry=r,
        )
        self.ensures = Counter(
            "loraplex_router_adapter_loads_total",
            "Adapters the router asked a worker's agent to load before forwarding, by result",
            ["result"],
            registry=r,
        )
        self.inflight = Gauge(
            "loraplex_router_inflight_requests", "Requests in flight per worker", ["worker"], registry=r
        )
        self.workers = Gauge(
            "loraplex_router_workers", "Workers known to the router, by state", ["state"], registry=r
        )
        self.adapter_requests = Counter(
            "loraplex_router_adapter_requests_total",
            "Requests per named adapter (catalog adapters: _catalog, the base model: _base)",
            ["adapter"],
            registry=r,
        )
        self.adapter_latency_seconds = Histogram(
            "loraplex_router_adapter_latency_seconds",
            "End-to-end latency per named adapter (catalog adapters: _catalog, the base model: _base)",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.over_bound = Counter(
            "loraplex_router_over_bound_requests_total",
            "Requests sent to a worker at the load bound because every worker that could serve the adapter"
            " was there (a named adapter: raise its replicas; catalog adapters: _catalog)",
            ["adapter"],
            registry=r,
        )
        self.slot_waits = Counter(
            "loraplex_router_gpu_slot_waits_total",
            "Requests sent to a worker whose GPU slots were all taken by other adapters' requests in flight"
            " (this router's): they wait there for a slot. Often: raise the BaseModel's engine.maxLoras",
            registry=r,
        )
        self.principal_requests = Counter(
            "loraplex_router_principal_requests_total",
            "Requests admitted per principal (a bounded number named, the others: _other)",
            ["principal"],
            registry=r,
        )
        self.principal_tokens = Counter(
            "loraplex_router_principal_tokens_total",
            "Tokens (prompt and completion) used per principal, read from vLLM's usage while quotas are on",
            ["principal"],
            registry=r,
        )
        self.principal_quota_refusals = Counter(
            "loraplex_router_principal_quota_refusals_total",
            "Requests refused with 429 per principal, by the budget that ran out: scope (principal, adapter)"
            " and budget (requests, tokens)",
            ["principal", "scope", "budget"],
            registry=r,
        )
        self.adapter_tokens = Counter(
            "loraplex_router_adapter_tokens_total",
            "Tokens used per named adapter while quotas are on (catalog adapters: _catalog, base: _base)",
            ["adapter"],
            registry=r,
        )
        self.adapter_quota_refusals = Counter(
            "loraplex_router_adapter_quota_refusals_total",
            "Requests refused with 429 per named adapter (catalog adapters: _catalog, base: _base), by the"
            " budget that ran out (requests, tokens)",
            ["adapter", "budget"],
            registry=r,
        )
        # Series a dashboard or an alert reads exist at 0 before their first event.
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        self.over_bound.labels(CATALOG)
        self.principals = BoundedLabels(principal_labels)
        self.adapters = BoundedLabels(adapter_labels)
        self._principal_series: dict[str, set[tuple[str, ...]]] = {}  # subject -> refusal label pairs
        self._quota_adapter_labels: set[tuple[str, str]] = set()
        self._adapter_labels: set[str] = set()  # the label values with series, so pruning reads no samples
        self._worker_labels: set[str] = set()
        self._over_bound_labels: set[str] = set()

    def adapter_request(self, label: str, seconds: float) -> None:
        """Count one request of an adapter label (a named adapter, CATALOG or BASE) and its latency."""
        label = self._adapter(label)
        self._adapter_labels.add(label)
        self.adapter_requests.labels(label).inc()
        self.adapter_latency_seconds.labels(label).observe(seconds)

    def over_bound_request(self, label: str) -> None:
        """Count one request of an adapter label sent past the load bound (nowhere else could serve it)."""
        label = self._adapter(label)
        self._over_bound_labels.add(label)
        self.over_bound.labels(label).inc()

    def principal_request(self, subject: str) -> None:
        """Count one admitted request of a principal."""
        self.principal_requests.labels(self._principal(subject)).inc()

    def tokens_used(self, subject: str, adapter_label: str, tokens: int) -> None:
        """Count the tokens one request used, for its principal and its adapter label."""
        self.principal_tokens.labels(self._principal(subject)).inc(tokens)
        adapter_label = self._adapter(adapter_label)
        self._adapter_labels.add(adapter_label)
        self.adapter_tokens.labels(adapter_label).inc(tokens)

    def quota_refusal(self, subject: str, adapter_label: str, scope: str, budget: str) -> None:
        """Count one request refused by a quota, for its principal and its adapter label."""
        principal = self._principal(subject)
        self._principal_series.setdefault(principal, set()).add((scope, budget))
        self.principal_quota_refusals.labels(principal, scope, budget).inc()
        adapter_label = self._adapter(adapter_label)
        self._quota_adapter_labels.add((adapter_label, budget))
        self.adapter_quota_refusals.labels(adapter_label, budget).inc()

    def _principal(self, subject: str) -> str:
        return self.principals.label(subject, time.monotonic())

    def _adapter(self, label: str) -> str:
        if label in _AGGREGATES:
            return label
        return self.adapters.label(label, time.monotonic())

    def prune_principals(self, now: float) -> None:
        """Drop the series of principals idle too long, giving their places to others."""
        for subject in self.principals.idle(now):
            for series in (self.principal_requests, self.principal_tokens):
                with contextlib.suppress(KeyError):
                    series.remove(subject)
            for scope, budget in self._principal_series.pop(subject, set()):
                self.principal_quota_refusals.remove(subject, scope, budget)

    def worker_inflight(self, worker: str) -> Gauge:
        """The in-flight gauge of one worker."""
        self._worker_labels.add(worker)
        return self.inflight.labels(worker)

    def prune(self, named: Callable[[str], bool], workers: Collection[str]) -> None:
        """Drop per-adapter series of adapters no longer named or idle too long, in-flight series of gone
        workers, and the series of principals idle too long."""
        idle = set(self.adapters.idle(time.monotonic()))

        def kept(adapter: str) -> bool:
            return adapter in _AGGREGATES or (adapter not in idle and named(adapter))

        for adapter in [a for a in self._adapter_labels if not kept(a)]:
            self.adapters.forget(adapter)
            for series in (self.adapter_requests, self.adapter_latency_seconds, self.adapter_tokens):
                with contextlib.suppress(KeyError):  # a label value may have series in some only
                    series.remove(adapter)
            self._adapter_labels.discard(adapter)
        for adapter, budget in [(a, b) for a, b in self._quota_adapter_labels if not kept(a)]:
            self.adapter_quota_refusals.remove(adapter, budget)
            self._quota_adapter_labels.discard((adapter, budget))
        for adapter in [a for a in self._over_bound_labels if not kept(a)]:
            self.adapters.forget(adapter)
            self.over_bound.remove(adapter)
            self._over_bound_labels.discard(adapter)
        for worker in [w for w in self._worker_labels if w not in workers]:
            self.inflight.remove(worker)
            self._worker_labels.discard(worker)
        self.prune_principals(time.monotonic())

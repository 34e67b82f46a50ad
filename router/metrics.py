"""The router's Prometheus metrics (prefix loraplex_router_, base units, bounded labels).

Label sets stay bounded: tiers, status codes and workers are small sets;
per-adapter series exist only for named adapters (the head, with LoRAAdapter
objects); requests for catalog (tail) adapters share the adapter label value
`_catalog`, and requests for the base model use `_base`. `prune` drops the
series of adapters no longer named and of workers that are gone, so a
long-running router's series follow the fleet instead of its history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from loraplex.api.release import __version__

CATALOG = "_catalog"
BASE = "_base"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DECISION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class RouterMetrics:
    """One registry per router (tests build several in one process)."""

    def __init__(self, base_model: str) -> None:
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
        self._adapter_labels: set[str] = set()  # the label values with series, so pruning reads no samples
        self._worker_labels: set[str] = set()
        self._over_bound_labels: set[str] = set()

    def adapter_request(self, label: str, seconds: float) -> None:
        """Count one request of an adapter label (a named adapter, CATALOG or BASE) and its latency."""
        self._adapter_labels.add(label)
        self.adapter_requests.labels(label).inc()
        self.adapter_latency_seconds.labels(label).observe(seconds)

    def over_bound_request(self, label: str) -> None:
        """Count one request of an adapter label sent past the load bound (nowhere else could serve it)."""
        self._over_bound_labels.add(label)
        self.over_bound.labels(label).inc()

    def worker_inflight(self, worker: str) -> Gauge:
        """The in-flight gauge of one worker."""
        self._worker_labels.add(worker)
        return self.inflight.labels(worker)

    def prune(self, named: Callable[[str], bool], workers: Collection[str]) -> None:
        """Drop per-adapter series of adapters no longer named, and in-flight series of gone workers."""
        for adapter in [a for a in self._adapter_labels if a not in (CATALOG, BASE) and not named(a)]:
            self.adapter_requests.remove(adapter)
            self.adapter_latency_seconds.remove(adapter)
            self._adapter_labels.discard(adapter)
        for adapter in [a for a in self._over_bound_labels if a != CATALOG and not named(a)]:
            self.over_bound.remove(adapter)
            self._over_bound_labels.discard(adapter)
        for worker in [w for w in self._worker_labels if w not in workers]:
            self.inflight.remove(worker)
            self._worker_labels.discard(worker)

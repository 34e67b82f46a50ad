"""The agent's Prometheus metrics (prefix loraplex_agent_, bounded labels: tier and reason only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loraplex.api.agent import REFUSED_REASONS
from loraplex.api.tiers import TIERS

LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.loads = Counter(
            "loraplex_agent_adapter_loads_total", "Adapters made resident, by tier.", ["tier"], registry=r
        )
        self.evictions = Counter(
            "loraplex_agent_adapter_evictions_total",
            "Adapters taken out of a tier (unloaded from vLLM, removed from disk).",
            ["tier"],
            registry=r,
        )
        self.swaps = Counter(
            "loraplex_agent_revision_swaps_total",
            "Adapters whose new revision was registered in vLLM beside the old one, which then retired.",
            registry=r,
        )
        self.load_seconds = Histogram(
            "loraplex_agent_adapter_load_seconds",
            "Time to make an adapter servable (fetch included when it was not on disk), by tier.",
            ["tier"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.cache_bytes = Gauge(
            "loraplex_agent_cache_bytes", "Bytes of adapter files held, by tier.", ["tier"], registry=r
        )
        self.adapters = Gauge("loraplex_agent_adapters", "Adapters held, by tier.", ["tier"], registry=r)
        self.fetch_failures = Counter(
            "loraplex_agent_fetch_failures_total",
            "Adapter fetches or loads that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.disk_budget = Gauge(
            "loraplex_agent_disk_budget_bytes", "Byte budget of the local disk tier.", registry=r
        )
        self.active_adapters = Gauge(
            "loraplex_agent_active_adapters",
            "Adapters held in vLLM that ran a request (or a router ensured) within the active window.",
            registry=r,
        )
        for reason in REFUSED_REASONS:  # series a dashboard or an alert reads exist at 0 before any failure
            self.fetch_failures.labels(reason)
        for tier in TIERS:
            self.loads.labels(tier)
            self.evictions.labels(tier)
            self.cache_bytes.labels(tier)
            self.adapters.labels(tier)

"""The Grafana dashboard the chart ships asks only for series that loraplex and its vLLM export.

A renamed metric or label would otherwise leave a panel empty without any error. Metric names
come from the registries the operator, the router and the agent really build; vLLM's from the
installed vLLM's source. Labels `base_model`, `component` and `pod` on router, agent and vLLM
series come from the chart's PodMonitor relabelling and Prometheus itself.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.metrics import MetricWrapperBase

from loraplex.operator import metrics as operator_metrics
from loraplex.router.metrics import RouterMetrics
from loraplex.worker.agent.metrics import AgentMetrics

DASHBOARD = Path(__file__).parents[2] / "charts" / "loraplex" / "files" / "grafana-dashboard.json"
SCRAPE_LABELS = {"base_model", "component", "pod", "le"}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported() -> dict[str, set[str]]:
    """Series name -> its label names, for every metric the operator, a router and an agent export."""
    registries = [prometheus_client.REGISTRY, RouterMetrics("tiny").registry, AgentMetrics().registry]
    series: dict[str, set[str]] = {}
    for registry in registries:
        for collector in list(registry._collector_to_names):  # label names are not public API
            if isinstance(collector, MetricWrapperBase):
                for suffix in SUFFIXES[collector._type]:
                    series[collector._name + suffix] = set(collector._labelnames)
    return series


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def vllm_metric_source() -> str:
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    return (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()


def test_every_panel_asks_for_a_series_that_is_exported() -> None:
    series, vllm = exported(), vllm_metric_source()
    asked = {name for expr in expressions() for name in re.findall(r"\b(loraplex_\w+|vllm:\w+)", expr)}
    assert asked, "the dashboard asks for no series"
    for name in sorted(asked):
        if name.startswith("vllm:"):
            assert f'"{name}"' in vllm, f"vLLM exports no {name}"
        else:
            assert name in series, f"loraplex exports no {name}"
    assert "vllm:lora_requests_info" not in asked  # the chart's PodMonitor drops it by default


def test_every_label_a_panel_groups_or_selects_by_is_on_its_series() -> None:
    series = exported()
    checked = 0
    for expr in expressions():
        for labels, name in re.findall(r"by \(([\w, ]+)\) \((?:\w+\()?(loraplex_\w+)", expr):
            assert {label.strip() for label in labels.split(",")} <= series[name] | SCRAPE_LABELS, expr
            checked += 1
        for name, selector in re.findall(r"(loraplex_\w+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*[!=]~?", selector))
            assert used <= series[name] | SCRAPE_LABELS, expr
    assert checked > 10


def test_the_base_model_variable_reads_a_series_the_operator_labels_by_base_model() -> None:
    variable = next(
        v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "base_model"
    )
    name, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
    assert label in exported()[name]


def test_the_series_of_events_a_healthy_fleet_may_never_see_exist_at_zero() -> None:
    """A panel (or an alert) over failures, retries, evictions or scalings shows 0 on a healthy fleet,
    not "No data": those series are exported at 0 for the label values known in advance."""
    operator_metrics.track_base_model("ns", "fresh")  # as the operator does once it sees a BaseModel
    present: set[str] = set()
    for registry in (prometheus_client.REGISTRY, RouterMetrics("tiny").registry, AgentMetrics().registry):
        present |= {sample.name for family in registry.collect() for sample in family.samples}
    rare = {
        "loraplex_router_retries_total", "loraplex_router_over_bound_requests_total",
        "loraplex_agent_adapter_evictions_total", "loraplex_agent_fetch_failures_total",
        "loraplex_fleet_scalings_total", "loraplex_placement_moves_total",
        "loraplex_training_preemptions_total", "loraplex_training_admissions_total",
    }  # fmt: skip
    asked = {name for expr in expressions() for name in re.findall(r"\b(loraplex_\w+)", expr)}
    assert rare <= asked  # the dashboard still reads them
    assert sorted(rare - present) == []

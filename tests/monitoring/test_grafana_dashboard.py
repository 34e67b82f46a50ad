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

from loraplex.operator import metrics as operator_metrics  # noqa: F401 (registers the operator's metrics)
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

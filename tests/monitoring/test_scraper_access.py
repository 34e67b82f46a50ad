"""Prometheus may scrape the workers: each BaseModel's NetworkPolicy lets the configured scraper in.

Without it the policy lets only the router (and the operator) reach a worker, and a stock
kube-prometheus-stack scrapes no agent and no vLLM. The chart's values reach these settings through
LORAPLEX_METRICS_SCRAPER_* (tests/cluster/test_chart_integrations.py follows them from values to env).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet import AGENT_PORT, VLLM_PORT, BaseModelRef, plan_fleet
from loraplex.operator.settings import MetricsScraper, OperatorSettings, SettingsError

REF = BaseModelRef("chat", "serving", "uid-1")
SPEC = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}})
PROMETHEUS = {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}


def peers_by_port(settings: OperatorSettings) -> dict[int, list[dict[str, Any]]]:
    (policy,) = [m for m in plan_fleet(REF, SPEC, settings, 1) if m["kind"] == "NetworkPolicy"]
    return {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}


def test_kube_prometheus_stacks_prometheus_may_scrape_agent_and_vllm_by_default() -> None:
    scraper = {"namespaceSelector": {}, "podSelector": PROMETHEUS}  # any namespace
    peers = peers_by_port(OperatorSettings())
    assert scraper in peers[VLLM_PORT]
    assert scraper in peers[AGENT_PORT]


def test_the_scraper_is_configurable_and_can_be_left_out() -> None:
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    vmagent = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["vmagent"]}]}
    settings = OperatorSettings.from_env(
        {
            "POD_NAME": "op",
            "LORAPLEX_METRICS_SCRAPER_NAMESPACE_SELECTOR": json.dumps(monitoring),
            "LORAPLEX_METRICS_SCRAPER_POD_SELECTOR": json.dumps(vmagent),
        }
    )
    assert settings.metrics_scraper == MetricsScraper(monitoring, vmagent)
    for port, peers in peers_by_port(settings).items():
        assert {"namespaceSelector": monitoring, "podSelector": vmagent} in peers, port
        assert PROMETHEUS not in [p.get("podSelector") for p in peers]
    closed = OperatorSettings.from_env({"POD_NAME": "op", "LORAPLEX_METRICS_SCRAPER": "false"})
    assert closed.metrics_scraper is None
    router = {
        "podSelector": {
            "matchLabels": {"loraplex.dev/base-model": "chat", "app.kubernetes.io/component": "router"}
        }
    }
    assert peers_by_port(closed)[VLLM_PORT] == [router]  # only the router reaches vLLM then


def test_the_defaults_are_the_operators_when_no_variable_is_set() -> None:
    assert OperatorSettings.from_env({"POD_NAME": "op"}).metrics_scraper == OperatorSettings().metrics_scraper


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LORAPLEX_METRICS_SCRAPER", "maybe"),
        ("LORAPLEX_METRICS_SCRAPER_POD_SELECTOR", "app=prometheus"),  # not JSON
        ("LORAPLEX_METRICS_SCRAPER_POD_SELECTOR", '{"app": "prometheus"}'),  # not a LabelSelector
        ("LORAPLEX_METRICS_SCRAPER_NAMESPACE_SELECTOR", '{"matchLabels": {"a": 1}}'),
        (
            "LORAPLEX_METRICS_SCRAPER_NAMESPACE_SELECTOR",
            '{"matchExpressions": [{"key": "a", "operator": "Is"}]}',
        ),
    ],
)
def test_a_malformed_scraper_setting_stops_the_operator_naming_it(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        OperatorSettings.from_env({"POD_NAME": "op", variable: value})

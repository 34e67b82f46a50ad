"""The alerts and recording rules the chart ships: valid, each one fires when it should and stays
quiet when it should not (`promtool test rules`), and each asks only for series loraplex exports.

promtool comes with Debian's prometheus package, installed here when missing (root, apt-get),
as the image builds install buildah. The chart renders the same file into its PrometheusRule
(tests/cluster/test_chart_integrations.py checks that).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.e2e.debian_packages import ensure_packages
from tests.monitoring.test_grafana_dashboard import exported

RULES = Path(__file__).parents[2] / "charts" / "loraplex" / "files" / "prometheus-rules.yaml"
CASES = Path(__file__).with_name("prometheus-rules.test.yaml")
# Labels a series gets from being scraped: Prometheus' own, and the chart's monitors' relabelling.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "base_model", "component", "le"}


@pytest.fixture(scope="module")
def promtool() -> str:
    ensure_packages({"promtool": "prometheus"}, lambda message: print(message, file=sys.stderr))
    return "promtool"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid(promtool: str) -> None:
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_rule_passes_its_promtool_cases(promtool: str) -> None:
    tested = subprocess.run(
        [promtool, "test", "rules", CASES.name], cwd=CASES.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(CASES.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts <= firing, f"never seen firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"never seen quiet: {sorted(alerts - quiet)}"
    for case in cases:  # promtool compares annotations only where a case states them
        for alert in case["exp_alerts"]:
            assert alert["exp_annotations"]["summary"], case["alertname"]


def test_every_rule_asks_only_for_series_and_labels_loraplex_exports() -> None:
    series = exported()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    asked = 0
    for rule in rules():
        expr = rule["expr"]
        for name in re.findall(r"\b(loraplex_\w+)", expr):
            assert name in series, f"loraplex exports no {name} ({rule.get('alert') or rule.get('record')})"
            asked += 1
        for name in re.findall(r"\b(loraplex:[\w:]+)", expr):
            assert name in recorded, f"no rule records {name}"
        for name, selector in re.findall(r"(loraplex_\w+)\{([^}]*)\}", expr):
            assert set(re.findall(r"(\w+)\s*[!=]~?", selector)) <= series[name] | SCRAPE_LABELS, expr
        for labels, name in re.findall(r"by \(([\w, ]+)\) \((?:\w+\()*(loraplex_\w+)", expr):
            assert {label.strip() for label in labels.split(",")} <= series[name] | SCRAPE_LABELS, expr
    assert asked > 15

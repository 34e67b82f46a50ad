"""The local fleet's Prometheus config: translated from the chart's monitors, accepted by real Prometheus.

Which pods it really scrapes is checked on the real node (tests/e2e/test_real_node_fleet.py:
every target up, every dashboard panel answered); here, that the translation keeps what each
monitor selects and that `promtool check config` (Debian's Prometheus) accepts the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.api.basemodel import BaseModelSpec
from loraplex.e2e import chart
from loraplex.e2e.debian_packages import ensure_packages
from loraplex.e2e.http_probe import free_port
from loraplex.e2e.prometheus import PACKAGES, chart_monitors, scrape_configs, selector_relabelings
from loraplex.e2e.prometheus_discovery import endpoint_targets, pod_targets, write_targets
from loraplex.e2e.waiting import wait_until
from loraplex.operator.fleet import BaseModelRef, plan_fleet
from loraplex.operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster  # helm, built with the cluster's binaries


def test_the_config_scrapes_what_each_monitor_selects_and_prometheus_accepts_it(tmp_path: Path) -> None:
    monitors = chart_monitors("loraplex-system")
    assert sorted(m["kind"] for m in monitors) == ["PodMonitor", "ServiceMonitor"]
    configs = scrape_configs(monitors, tmp_path)
    pods = [c for c in configs if c["job_name"].startswith("podmonitor/")]

    def port(config: dict[str, Any]) -> str:
        port_name = ["__meta_kubernetes_pod_container_port_name"]
        return next(str(r["regex"]) for r in config["relabel_configs"] if r["source_labels"] == port_name)

    ports = {port(c) for c in pods}
    assert ports == {"http", "agent", "vllm"}  # the router's, the agent's and vLLM's metrics ports
    for config in pods:
        assert config["file_sd_configs"][0]["files"] == [str(tmp_path / "pod.json")]
        kept = {rule["regex"] for rule in config["relabel_configs"] if rule.get("action") == "keep"}
        assert {"(loraplex);true", "(router|worker);true"} <= kept
        assert {"source_labels": ["__meta_kubernetes_pod_label_loraplex_dev_base_model"],
                "target_label": "base_model"} in config["relabel_configs"]  # fmt: skip
    vllm = next(c for c in pods if port(c) == "vllm")
    assert vllm["metric_relabel_configs"][0]["regex"] == "vllm:lora_requests_info"
    (operator,) = [c for c in configs if c["job_name"].startswith("servicemonitor/")]
    assert operator["honor_labels"] is True  # the BaseModel's namespace label, not the operator pod's
    assert operator["file_sd_configs"][0]["files"] == [str(tmp_path / "endpoints.json")]
    assert {"source_labels": ["__meta_kubernetes_namespace"], "regex": "(loraplex\\-system)",
            "action": "keep"} in operator["relabel_configs"]  # fmt: skip

    if os.geteuid() != 0 and not Path("/usr/bin/promtool").exists():
        pytest.skip("promtool is not installed and installing Debian's prometheus needs root")
    ensure_packages(PACKAGES, print)
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump({"scrape_configs": configs}))
    checked = subprocess.run(
        ["/usr/bin/promtool", "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_label_selectors_become_keep_and_drop_rules() -> None:
    selector = {
        "matchLabels": {"app.kubernetes.io/managed-by": "loraplex"},
        "matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["canary"]},
            {"key": "loraplex.dev/base-model", "operator": "Exists"},
        ],
    }
    assert selector_relabelings(selector, "pod") == [
        {
            "source_labels": [
                "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by",
                "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_managed_by",
            ],
            "regex": "(loraplex);true",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_label_tier"], "regex": "(canary)", "action": "drop"},
        {
            "source_labels": ["__meta_kubernetes_pod_labelpresent_loraplex_dev_base_model"],
            "regex": "true",
            "action": "keep",
        },
    ]


def _pod(template: dict[str, Any], name: str, namespace: str, ip: str) -> dict[str, Any]:
    """A running pod of a workload's pod template, as the apiserver would list it."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_real_prometheus_scrapes_the_fleets_pods_and_the_operator_and_nothing_else(tmp_path: Path) -> None:
    """The operator's real manifests as pods, discovered into file_sd files, read by real Prometheus."""
    if os.geteuid() != 0 and not Path("/usr/bin/prometheus").exists():
        pytest.skip("Prometheus is not installed and installing Debian's prometheus needs root")
    ensure_packages(PACKAGES, print)
    ref = BaseModelRef("tiny", "team-a", "uid")
    fleet = plan_fleet(ref, BaseModelSpec.model_validate({"model": {"uri": "/m"}}), OperatorSettings(), 1)
    workload = {m["kind"]: m for m in fleet}
    chart_objects = {d["kind"]: d for d in chart.render("loraplex-system")}
    operator_template = chart_objects["Deployment"]["spec"]["template"]
    operator_pod = _pod(operator_template, "op-0", "loraplex-system", "10.0.0.9")
    # The same operator and metrics Service in another namespace: not the release's, so not scraped.
    elsewhere_pod = {**operator_pod, "metadata": {**operator_pod["metadata"], "namespace": "elsewhere"}}
    pods = [
        _pod(workload["StatefulSet"]["spec"]["template"], "tiny-worker-0", "team-a", "10.0.0.1"),
        _pod(workload["Deployment"]["spec"]["template"], "tiny-router-x", "team-a", "10.0.0.2"),
        operator_pod,
        {**elsewhere_pod, "status": {**elsewhere_pod["status"], "podIP": "10.0.0.8"}},
    ]
    metrics_service = chart_objects["Service"]
    service_name, metrics_port = metrics_service["metadata"]["name"], metrics_service["spec"]["ports"][0]
    services, slices = [], []
    for namespace, address in (("loraplex-system", "10.0.0.9"), ("elsewhere", "10.0.0.8")):
        metadata = {**metrics_service["metadata"], "namespace": namespace}
        services.append({**metrics_service, "metadata": metadata})
        slices.append({
            "metadata": {"namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": [{"addresses": [address], "targetRef": {"kind": "Pod", "name": "op-0"}}],
            "ports": [{"name": metrics_port["name"], "port": 8080}],
        })  # fmt: skip
    write_targets(tmp_path, "pod", pod_targets(pods))
    write_targets(tmp_path, "endpoints", endpoint_targets(services, slices, pods))
    config_file = tmp_path / "prometheus.yml"
    configs = scrape_configs(chart_monitors("loraplex-system"), tmp_path)
    config_file.write_text(yaml.safe_dump({"scrape_configs": configs}))
    port = free_port()
    process = subprocess.Popen(
        ["/usr/bin/prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def active() -> list[tuple[str, str, str]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2) as answer:
                    targets = json.load(answer)["data"]["activeTargets"]
            except OSError:
                return None
            found = sorted(
                (t["labels"]["instance"], t["labels"].get("component", ""), t["labels"].get("base_model", ""))
                for t in targets
            )
            return found if len(found) >= 4 else None

        assert wait_until(active, 60, "Prometheus discovering the targets") == [
            ("10.0.0.1:8000", "worker", "tiny"),  # vLLM
            ("10.0.0.1:8080", "worker", "tiny"),  # the agent
            ("10.0.0.2:8000", "router", "tiny"),
            ("10.0.0.9:8080", "", ""),  # the operator, through its metrics Service
        ]
    finally:
        process.terminate()
        process.wait(timeout=30)

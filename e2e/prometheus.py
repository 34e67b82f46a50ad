"""A real Prometheus for the local fleet: Debian's package, scraping what the chart's monitors select.

`loraplex dev up --prometheus` starts it beside the control plane (pid file, log,
config and data in the cluster's state folder; `loraplex dev down` stops it).
Its scrape configs are not written by hand: they are translated from the
PodMonitor and ServiceMonitor the chart renders, the way the Prometheus
Operator translates them (`scrape_configs`), so the local Prometheus scrapes
exactly what a kube-prometheus-stack installation of the chart would: the
operator through its metrics Service, and every router, agent and vLLM pod the
operator runs, relabelled alike. Debian builds Prometheus without Kubernetes
service discovery, so the targets come from file_sd files that
`e2e/prometheus_discovery.py` (a second daemon) keeps written from the
apiserver, with the same meta labels.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from loraplex.e2e import chart, daemon
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.debian_packages import ensure_packages
from loraplex.e2e.http_probe import free_port
from loraplex.e2e.waiting import wait_until

PACKAGES = {"prometheus": "prometheus"}
MONITORING_API = "monitoring.coreos.com/v1"
# What the chart's monitors look like when a user turns them on (they need the Prometheus Operator's API).
MONITOR_VALUES = ("metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true")
SCRAPE_INTERVAL = "5s"


def _label_meta(prefix: str, key: str) -> tuple[str, str]:
    """The service-discovery meta labels of a Kubernetes label: its value and whether it is present."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return f"__meta_kubernetes_{prefix}_label_{name}", f"__meta_kubernetes_{prefix}_labelpresent_{name}"


def selector_relabelings(selector: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """`keep` rules that let through only the targets whose labels match a label selector."""
    rules: list[dict[str, Any]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        label, present = _label_meta(prefix, key)
        rules.append(
            {"source_labels": [label, present], "regex": f"({re.escape(str(value))});true", "action": "keep"}
        )
    for expression in selector.get("matchExpressions") or []:
        label, present = _label_meta(prefix, expression["key"])
        values = "|".join(re.escape(str(v)) for v in expression.get("values") or [])
        operator = expression["operator"]
        if operator == "In":
            rules.append({"source_labels": [label, present], "regex": f"({values});true", "action": "keep"})
        elif operator == "NotIn":
            rules.append({"source_labels": [label], "regex": f"({values})", "action": "drop"})
        elif operator == "Exists":
            rules.append({"source_labels": [present], "regex": "true", "action": "keep"})
        elif operator == "DoesNotExist":
            rules.append({"source_labels": [present], "regex": "true", "action": "drop"})
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
    return rules


def _relabeling(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A monitor's relabeling (camelCase, the CRD's spelling) as Prometheus spells it."""
    names = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "regex": "regex",
        "replacement": "replacement",
        "action": "action",
        "separator": "separator",
        "modulus": "modulus",
    }
    return {names[key]: value for key, value in rule.items() if key in names}


def _namespace_rules(monitor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A `keep` rule for the namespaces a monitor looks in (none: it looks in all of them)."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return []
    names = list(selector.get("matchNames") or [monitor["metadata"]["namespace"]])
    regex = "|".join(re.escape(name) for name in names)
    return [{"source_labels": ["__meta_kubernetes_namespace"], "regex": f"({regex})", "action": "keep"}]


def _discovery(role: str, targets_dir: Path) -> dict[str, Any]:
    """Where the targets of a role are (the files prometheus_discovery writes)."""
    return {"files": [str(targets_dir / f"{role}.json")], "refresh_interval": SCRAPE_INTERVAL}


def _target_labels(kind: str) -> list[dict[str, Any]]:
    """The labels the Prometheus Operator gives every target (namespace, pod, container)."""
    rules = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    if kind == "ServiceMonitor":
        rules.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"})
    return rules


def scrape_configs(monitors: Iterable[Mapping[str, Any]], targets_dir: Path) -> list[dict[str, Any]]:
    """One Prometheus scrape config per endpoint of each PodMonitor and ServiceMonitor."""
    configs: list[dict[str, Any]] = []
    for monitor in monitors:
        kind, spec, name = monitor["kind"], monitor["spec"], monitor["metadata"]["name"]
        if kind == "PodMonitor":
            role, prefix, port_label = "pod", "pod", "__meta_kubernetes_pod_container_port_name"
            endpoints = spec.get("podMetricsEndpoints") or []
        elif kind == "ServiceMonitor":
            role, prefix, port_label = "endpoints", "service", "__meta_kubernetes_endpoint_port_name"
            endpoints = spec.get("endpoints") or []
        else:
            continue
        for index, endpoint in enumerate(endpoints):
            port = re.escape(endpoint["port"])
            keep_port = {"source_labels": [port_label], "regex": port, "action": "keep"}
            config: dict[str, Any] = {
                "job_name": f"{kind.lower()}/{monitor['metadata']['namespace']}/{name}/{index}",
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": SCRAPE_INTERVAL,
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "file_sd_configs": [_discovery(role, targets_dir)],
                "relabel_configs": [
                    *_namespace_rules(monitor),
                    *selector_relabelings(spec.get("selector") or {}, prefix),
                    keep_port,
                    *_target_labels(kind),
                    *(_relabeling(rule) for rule in endpoint.get("relabelings") or []),
                ],
            }
            if endpoint.get("metricRelabelings"):
                config["metric_relabel_configs"] = [_relabeling(r) for r in endpoint["metricRelabelings"]]
            configs.append(config)
    return configs


def chart_monitors(namespace: str, sets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The PodMonitor and ServiceMonitor the chart renders with monitoring on."""
    docs = chart.render(namespace, *MONITOR_VALUES, *sets)
    return [doc for doc in docs if doc.get("apiVersion") == MONITORING_API and "Monitor" in doc["kind"]]


class LocalPrometheus:
    """Debian's Prometheus as a daemon of the local fleet, scraping what the chart's monitors select."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.root = cluster.state_dir / "prometheus"
        self.pid_file = cluster.state_dir / "prometheus.pid"
        self.discovery_pid_file = cluster.state_dir / "prometheus-discovery.pid"
        self.log_file = cluster.state_dir / "prometheus.log"
        self.port_file = cluster.state_dir / "prometheus.port"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def pid(self) -> int | None:
        return daemon.running_pid(self.pid_file)

    def start(self, release_namespace: str, chart_sets: Iterable[str] = (), timeout: float = 60.0) -> int:
        """Start it unless it runs; return its pid."""
        running = self.pid()
        if running is not None:
            return running
        ensure_packages(PACKAGES, print)
        targets = self.root / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        discovery = [sys.executable, "-m", "loraplex.e2e.prometheus_discovery"]
        discovery += [str(self.cluster.kubeconfig), str(targets)]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        daemon.spawn(discovery, environment, self.log_file, self.discovery_pid_file)
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": scrape_configs(chart_monitors(release_namespace, chart_sets), targets),
        }
        config_file = self.root / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        self.port_file.write_text(str(port))
        command = [
            "/usr/bin/prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        pid = daemon.spawn(command, {"PATH": "/usr/bin:/bin"}, self.log_file, self.pid_file)
        wait_until(lambda: self._ready(pid), timeout, "Prometheus answering /-/ready")
        return pid

    def stop(self) -> None:
        daemon.stop(self.pid_file, timeout=30.0)
        daemon.stop(self.discovery_pid_file, timeout=10.0)

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (raises on a query Prometheus refuses)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expression!r}: {answer}")
        return list(answer["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets and their health."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as response:
            return list(json.load(response)["data"]["activeTargets"])

    def _ready(self, pid: int) -> bool:
        if not process_alive(pid):
            raise RuntimeError(f"Prometheus exited; see {self.log_file}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

"""Kubernetes service discovery for the local fleet's Prometheus, written as file_sd target files.

Debian builds Prometheus without its Kubernetes service discovery, so this
daemon does that one job for it: every few seconds it lists the pods, services
and EndpointSlices through the apiserver and writes every pod container port
(`pod.json`) and every service endpoint port (`endpoints.json`) as target
groups carrying the meta labels Kubernetes service discovery gives them
(`__meta_kubernetes_pod_label_<name>`, `..._container_port_name`,
`__meta_kubernetes_service_label_<name>`, `..._endpoint_port_name`, ...). The
scrape configs translated from the chart's monitors (`e2e/prometheus.py`)
then select and relabel them exactly as they would with `kubernetes_sd_configs`.

Run as `python -m loraplex.e2e.prometheus_discovery KUBECONFIG OUT_DIR`.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loraplex.kube import api_client

INTERVAL_SECONDS = 5.0
Target = dict[str, Any]  # a file_sd target group: {"targets": [address], "labels": {...}}


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _labels(prefix: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key, value in (labels or {}).items():
        meta[f"__meta_kubernetes_{prefix}_label_{_sanitize(key)}"] = value
        meta[f"__meta_kubernetes_{prefix}_labelpresent_{_sanitize(key)}"] = "true"
    return meta


def _ready(pod: Mapping[str, Any]) -> str:
    conditions = pod.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return "true" if ready else "false"


def pod_targets(pods: Iterable[Mapping[str, Any]]) -> list[Target]:
    """One target per container port of every pod with an address (the `pod` role)."""
    groups: list[Target] = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        common = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_node_name": pod.get("spec", {}).get("nodeName") or "",
            "__meta_kubernetes_pod_phase": status.get("phase") or "",
            "__meta_kubernetes_pod_ready": _ready(pod),
            **_labels("pod", meta.get("labels")),
        }
        for container in pod.get("spec", {}).get("containers") or []:
            for port in container.get("ports") or []:
                labels = {
                    **common,
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name") or "",
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": port.get("protocol") or "TCP",
                }
                groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return groups


def endpoint_targets(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
) -> list[Target]:
    """One target per address and port of every service's endpoints (the `endpoints` role)."""
    by_service = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    by_pod = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    groups: list[Target] = []
    for endpoint_slice in slices:
        meta = endpoint_slice["metadata"]
        namespace = meta["namespace"]
        service_name = (meta.get("labels") or {}).get("kubernetes.io/service-name", "")
        service = by_service.get((namespace, service_name))
        if service is None:
            continue
        common = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_service_name": service["metadata"]["name"],
            **_labels("service", service["metadata"].get("labels")),
        }
        for endpoint in endpoint_slice.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            pod = by_pod.get((namespace, ref.get("name", ""))) if ref.get("kind") == "Pod" else None
            ready = (endpoint.get("conditions") or {}).get("ready", True)
            for port in endpoint_slice.get("ports") or []:
                labels = {
                    **common,
                    "__meta_kubernetes_endpoint_port_name": port.get("name") or "",
                    "__meta_kubernetes_endpoint_port_protocol": port.get("protocol") or "TCP",
                    "__meta_kubernetes_endpoint_ready": "true" if ready else "false",
                }
                if pod is not None:
                    labels["__meta_kubernetes_pod_name"] = pod["metadata"]["name"]
                    labels.update(_labels("pod", pod["metadata"].get("labels")))
                    container = _container_with_port(pod, port.get("port"))
                    if container:
                        labels["__meta_kubernetes_pod_container_name"] = container
                for address in endpoint.get("addresses") or []:
                    groups.append({"targets": [f"{address}:{port['port']}"], "labels": labels})
    return groups


def _container_with_port(pod: Mapping[str, Any], number: int | None) -> str | None:
    for container in pod.get("spec", {}).get("containers") or []:
        if any(p.get("containerPort") == number for p in container.get("ports") or []):
            return str(container["name"])
    return None


def write_targets(out_dir: Path, role: str, groups: list[Target]) -> None:
    """Replace a target file atomically (Prometheus watches it and must never read half of one)."""
    tmp = out_dir / f".{role}.json.tmp"
    tmp.write_text(json.dumps(groups, sort_keys=True))
    tmp.replace(out_dir / f"{role}.json")


def discover_once(api: Any, out_dir: Path) -> None:
    from kubernetes import client

    serialize = api.sanitize_for_serialization
    pods = serialize(client.CoreV1Api(api).list_pod_for_all_namespaces().items)
    services = serialize(client.CoreV1Api(api).list_service_for_all_namespaces().items)
    slices = serialize(client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces().items)
    write_targets(out_dir, "pod", pod_targets(pods))
    write_targets(out_dir, "endpoints", endpoint_targets(services, slices, pods))


def main(argv: list[str]) -> int:
    kubeconfig, out_dir = argv[1], Path(argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(api_client(kubeconfig)) as api:
        while True:
            try:
                discover_once(api, out_dir)
            except Exception as error:  # the apiserver restarting: keep the last targets, try again
                print(f"discovery failed, keeping the last targets: {error}", flush=True)
            time.sleep(INTERVAL_SECONDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

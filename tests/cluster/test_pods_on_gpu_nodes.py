"""Pods are really scheduled onto the simulated GPU nodes and reach Running."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from loraplex.e2e.gpu_nodes import KWOK_ANNOTATION

pytestmark = pytest.mark.cluster


def gpu_deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/never-pulled:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def wait_for_pods(
    core: client.CoreV1Api, namespace: str, selector: str, count: int, phase: str, timeout: float = 60.0
) -> list[Any]:
    deadline = time.monotonic() + timeout
    pods: list[Any] = []
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        if len([p for p in pods if p.status.phase == phase]) == count:
            return pods
        time.sleep(0.2)
    states = [(p.metadata.name, p.status.phase, p.spec.node_name) for p in pods]
    raise AssertionError(f"wanted {count} pods {phase} within {timeout}s, have {states}")


def test_gpu_nodes_are_ready_with_allocatable_gpus(kube: Any) -> None:
    nodes = client.CoreV1Api(kube).list_node(label_selector="loraplex.dev/gpu-node=true").items
    assert len(nodes) == 4
    for node in nodes:
        assert node.metadata.annotations[KWOK_ANNOTATION] == "fake"
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True"
    assert {n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes} == {"zone-a", "zone-b", "zone-c"}


def test_deployment_pods_run_on_gpu_nodes(kube: Any, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(namespace, gpu_deployment("serve", replicas=3, gpus=4))
    pods = wait_for_pods(core, namespace, "app=serve", 3, "Running")
    gpu_nodes = {n.metadata.name for n in core.list_node(label_selector="loraplex.dev/gpu-node=true").items}
    assert {p.spec.node_name for p in pods} <= gpu_nodes


def test_scheduler_respects_gpu_capacity(kube: Any, namespace: str) -> None:
    """4 nodes x 8 GPUs: five 8-GPU pods leave exactly one Pending as Unschedulable."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(namespace, gpu_deployment("big", replicas=5, gpus=8))
    running = wait_for_pods(core, namespace, "app=big", 4, "Running")
    assert len({p.spec.node_name for p in running if p.status.phase == "Running"}) == 4
    pending = wait_for_pods(core, namespace, "app=big", 1, "Pending")
    stuck = next(p for p in pending if p.status.phase == "Pending")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stuck = core.read_namespaced_pod(stuck.metadata.name, namespace)
        scheduled = {c.type: c for c in stuck.status.conditions or []}.get("PodScheduled")
        if scheduled is not None and scheduled.reason == "Unschedulable":
            break
        time.sleep(0.2)
    assert scheduled is not None
    assert scheduled.reason == "Unschedulable"
    assert "nvidia.com/gpu" in scheduled.message

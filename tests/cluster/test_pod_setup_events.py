"""The operator reads why a fleet pod's volume will not mount from the kubelet's Events, with only
the chart's RBAC, on the real API server (the real kubelet's side: tests/e2e/test_real_node_fleet.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from loraplex.e2e.chart import chart_applied
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.service_account import service_account_kubeconfig
from loraplex.kube import api_client
from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.pod_events import PodSetupEvents

pytestmark = pytest.mark.cluster

SCHEDULED = "2026-12-04T10:00:00Z"
MISSING = 'MountVolume.SetUp failed for volume "api-keys-0" : secret "team-keys" not found'


@pytest.fixture
def operator_core(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    """The core API as the operator's ServiceAccount, with exactly the chart's RBAC."""
    with chart_applied(local_cluster, namespace):
        kubeconfig = service_account_kubeconfig(
            local_cluster.kubeconfig, namespace, "loraplex-operator", tmp_path / "sa-kubeconfig.yaml"
        )
        with contextlib.closing(api_client(str(kubeconfig))) as api:
            yield client.CoreV1Api(api)


@pytest.fixture
def stuck_pod(kube: Any, namespace: str) -> Iterator[Callable[[str], str]]:
    """Makes pods bound to a node no kubelet runs (they stay as created), returning each one's uid;
    deleted at once afterwards (no kubelet would confirm a graceful deletion, and other tests count
    the pods on every node)."""
    core, made = client.CoreV1Api(kube), []

    def make(name: str) -> str:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": "no-such-node", "containers": [{"name": "router", "image": "router:test"}]},
        }
        made.append(name)
        return str(core.create_namespaced_pod(namespace, pod).metadata.uid)

    yield make
    for name in made:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def kubelet_warning(kube: Any, namespace: str, pod: str, uid: str, reason: str, message: str) -> None:
    """An Event as the kubelet writes one about a pod (core/v1, source kubelet)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod}."},
        "involvedObject": {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": namespace,
            "name": pod,
            "uid": uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "no-such-node"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    client.CoreV1Api(kube).create_namespaced_event(namespace, event)


def test_a_stuck_pods_mount_failure_is_read_from_its_own_events_under_the_charts_rbac(
    kube: Any, namespace: str, operator_core: client.CoreV1Api, stuck_pod: Callable[[str], str]
) -> None:
    uid = stuck_pod("tiny-router-0")
    kubelet_warning(kube, namespace, "tiny-router-0", uid, "FailedMount", MISSING)
    other = stuck_pod("tiny-router-1")
    kubelet_warning(kube, namespace, "tiny-router-1", other, "FailedScheduling", "not a volume")
    # The same name's earlier pod (a StatefulSet reuses names) had a mount trouble: not this pod's.
    kubelet_warning(kube, namespace, "tiny-router-1", "uid-of-a-gone-pod", "FailedMount", "gone pod's")

    clock = [datetime.fromisoformat(SCHEDULED).timestamp() + 5]
    events = PodSetupEvents(operator_core, clock=lambda: clock[0])
    pods = [
        FleetPod("tiny-router-0", False, uid=uid, setting_up_since=SCHEDULED),
        FleetPod("tiny-router-1", False, uid=other, setting_up_since=SCHEDULED),
        FleetPod("tiny-router-2", True, uid="started"),
    ]
    assert events.with_volume_trouble(namespace, pods) == pods  # 5 s in: a mount may still pass

    clock[0] += 60
    seen = events.with_volume_trouble(namespace, pods)
    assert [p.volume_trouble for p in seen] == [f"FailedMount: {MISSING}", None, None]

    # Read at most once per recheck: the kubelet's newer word shows after it.
    kubelet_warning(kube, namespace, "tiny-router-1", other, "FailedMount", "configmap not found")
    assert events.with_volume_trouble(namespace, pods)[1].volume_trouble is None
    clock[0] += events.recheck_seconds
    assert events.with_volume_trouble(namespace, pods)[1].volume_trouble == "FailedMount: configmap not found"

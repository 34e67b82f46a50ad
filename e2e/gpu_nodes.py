"""Simulated GPU nodes: Node objects that KWOK keeps Ready and whose pods it runs.

Pure builders (no API calls): the manifests are plain dicts, applied by the
caller, so tests can check them without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
ZONES = ("zone-a", "zone-b", "zone-c")


@dataclass(frozen=True)
class GpuNodeShape:
    """What each simulated node offers."""

    gpus: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110


def node_name(cluster: str, index: int) -> str:
    return f"{cluster}-gpu-{index}"


def pod_cidr(index: int) -> str:
    """A loopback /24 of its own for node `index` (127.1.1.0/24, ...), clear of 127.0.0.0/16."""
    if not 0 <= index < 254 * 256:
        raise ValueError("too many simulated GPU nodes for one loopback /24 each")
    number = index + 257  # from 127.1.1.0/24 on
    return f"127.{number // 256}.{number % 256}.0/24"


def gpu_node(cluster: str, index: int, shape: GpuNodeShape) -> dict[str, Any]:
    """A Node manifest for one simulated GPU node, spread round-robin over zones."""
    name = node_name(cluster, index)
    resources = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": str(shape.pods),
        "nvidia.com/gpu": str(shape.gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": ZONES[index % len(ZONES)],
                "nvidia.com/gpu.product": shape.gpu_product,
                "nvidia.com/gpu.count": str(shape.gpus),
                "loraplex.dev/gpu-node": "true",
            },
        },
        # Pods on this node get loopback addresses (KWOK hands them out from the node's podCIDR), so a
        # real process can stand behind a simulated pod: the local fleet binds vLLM to the pod's IP.
        "spec": {"podCIDR": pod_cidr(index), "podCIDRs": [pod_cidr(index)]},
        "status": {
            "allocatable": resources,
            "capacity": resources,
        },
    }

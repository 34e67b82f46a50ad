"""The configuration of the local real node, as pure builders (no processes, no API calls).

One machine is one node: containerd with the CRI plugin and runc, a CNI bridge
with host-local addresses, the kubelet and kube-proxy (iptables mode). The
control plane (kwokctl's `binary` runtime, see cluster.py) is told to advertise
the bridge's gateway address, so pods reach the apiserver through the
`kubernetes` Service like on any cluster. Tests check these builders; node.py
writes them and runs the daemons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraplex.e2e.images import PAUSE_IMAGE  # built by images.py: no registry serves one here

BRIDGE = "loraplex0"
POD_SUBNET = "10.88.0.0/16"
NODE_IP = "10.88.0.1"  # the bridge's gateway: pods reach the node (and the apiserver) here
NODE_PREFIX = 16
SERVICE_SUBNET = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of SERVICE_SUBNET
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CRI_NAMESPACE = "k8s.io"
GPU_RESOURCE = "nvidia.com/gpu"
NODE_LABELS = {"loraplex.dev/gpu-node": "true", "loraplex.dev/real-node": "true"}


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its state: one folder per cluster, removed by `down`."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_state(self) -> Path:
        return self.root / "cni" / "state"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "node-kubeconfig.yaml"

    @property
    def imported(self) -> Path:
        """The image archives already imported into containerd, one path a line."""
        return self.root / "imported-images"

    def log(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def pid(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"


def containerd_config(paths: NodePaths) -> str:
    """containerd 1.6 config (version 2): CRI with runc on cgroupfs, our CNI folder, our pause image."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{paths.containerd_root}"',
            f'state = "{paths.containerd_state}"',
            "[grpc]",
            f'  address = "{paths.socket}"',
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_IMAGE}"',
            # This machine may not lower a process's OOM score (the kubelet asks -998 for sandboxes):
            # containerd then clamps it to its own, as it does for rootless and nested nodes.
            "  restrict_oom_score_adj = true",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{paths.cni_conf_dir}"',
            "",
        ]
    )


def cni_config(paths: NodePaths) -> str:
    """A bridge network with host-local addresses from POD_SUBNET, masqueraded when leaving it."""
    bridge = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(paths.cni_state),
        },
    }
    conflist = {
        "cniVersion": "1.0.0",
        "name": "loraplex",
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }
    return json.dumps(conflist, indent=2)


def kubelet_config(paths: NodePaths, client_ca: Path) -> str:
    """KubeletConfiguration: cgroupfs (no systemd here), cgroup v1 allowed, images never collected.

    The images are imported, not pulled (no registry is reachable), so image
    garbage collection is kept from removing them, and eviction thresholds are
    low enough not to evict the fleet on a full development disk.
    """
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "hairpinMode": "hairpin-veth",
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2Gi", "imagefs.available": "2Gi"},
        "maxPods": 110,
        "shutdownGracePeriod": "0s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_args(paths: NodePaths, name: str) -> list[str]:
    labels = ",".join(f"{key}={value}" for key, value in sorted(NODE_LABELS.items()))
    return [
        f"--config={paths.kubelet_config}",
        f"--kubeconfig={paths.kubeconfig}",
        f"--root-dir={paths.kubelet_root}",
        f"--hostname-override={name}",
        f"--node-ip={NODE_IP}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def kube_proxy_args(paths: NodePaths, name: str) -> list[str]:
    """kube-proxy in iptables mode; conntrack sysctls are left as the machine has them."""
    return [
        f"--kubeconfig={paths.kubeconfig}",
        f"--hostname-override={name}",
        f"--cluster-cidr={POD_SUBNET}",
        "--proxy-mode=iptables",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--metrics-bind-address=127.0.0.1:10249",
        "--healthz-bind-address=127.0.0.1:10256",
        "--v=1",
    ]


def gpu_capacity_patch(gpus: int) -> dict[str, Any]:
    """The node status patch that advertises `gpus` GPUs as an extended resource.

    Extended resources are advertised by patching the node's status capacity
    (the kubelet then reports them as allocatable too); nothing here is a GPU,
    so containers that request them get no device, which the CPU engine does
    not need.
    """
    return {"status": {"capacity": {GPU_RESOURCE: str(gpus)}}}


def apiserver_patches(pki: Path) -> list[dict[str, Any]]:
    """kwokctl component patches for a cluster with a real node.

    kwokctl runs kube-apiserver on loopback with no `kubernetes` endpoints; a
    real node needs it reachable from pods (advertised at the bridge's gateway,
    listening on all addresses of this machine), the Service range to hold the
    API's ClusterIP, and a client certificate to reach the kubelet (logs, exec).
    """
    args = {
        "bind-address": "0.0.0.0",
        "advertise-address": NODE_IP,
        "endpoint-reconciler-type": "lease",
        "service-cluster-ip-range": SERVICE_SUBNET,
        "kubelet-client-certificate": str(pki / "admin.crt"),
        "kubelet-client-key": str(pki / "admin.key"),
        "kubelet-preferred-address-types": "InternalIP",  # the node's name is in no DNS here
    }
    # KWOK would play kubelet for the real node too: keep it to the simulated nodes (annotated).
    kwok_args = {
        "manage-all-nodes": "false",
        "manage-nodes-with-annotation-selector": "kwok.x-k8s.io/node=fake",
    }
    controller_args = {"service-cluster-ip-range": SERVICE_SUBNET}
    return [
        {"name": "kube-apiserver", "extraArgs": [{"key": k, "value": v} for k, v in args.items()]},
        {
            "name": "kube-controller-manager",
            "extraArgs": [{"key": k, "value": v} for k, v in controller_args.items()],
        },
        {"name": "kwok-controller", "extraArgs": [{"key": k, "value": v} for k, v in kwok_args.items()]},
    ]

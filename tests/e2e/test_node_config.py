"""The real node's configuration, as the daemons and the apiserver will read it (no processes)."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import yaml

from loraplex.e2e.cluster import kwokctl_config
from loraplex.e2e.node_config import (
    API_SERVICE_IP,
    NODE_IP,
    PAUSE_IMAGE,
    POD_SUBNET,
    SERVICE_SUBNET,
    NodePaths,
    apiserver_patches,
    cni_config,
    containerd_config,
    gpu_capacity_patch,
    kubelet_config,
)
from loraplex.e2e.node_fleet import store_claim, store_volume

PATHS = NodePaths(Path("/var/cache/loraplex/node/demo"))


def test_containerd_runs_pods_with_runc_on_cgroupfs_and_our_pause_image_and_cni() -> None:
    config = tomllib.loads(containerd_config(PATHS))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True  # this machine may not lower OOM scores
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(PATHS.cni_conf_dir)
    assert config["grpc"]["address"] == str(PATHS.socket)
    assert len(str(PATHS.socket)) < 108  # a unix socket path's limit


def test_pods_get_addresses_on_the_bridge_whose_gateway_is_the_node() -> None:
    conflist = json.loads(cni_config(PATHS))
    bridge = conflist["plugins"][0]
    subnet = ipaddress.ip_network(POD_SUBNET)
    ranges = bridge["ipam"]["ranges"][0][0]
    assert (bridge["type"], bridge["isGateway"]) == ("bridge", True)
    assert ranges["gateway"] == NODE_IP
    assert ipaddress.ip_address(NODE_IP) in subnet
    assert ipaddress.ip_network(SERVICE_SUBNET).network_address + 1 == ipaddress.ip_address(API_SERVICE_IP)
    assert not ipaddress.ip_network(SERVICE_SUBNET).overlaps(subnet)


def test_the_kubelet_allows_cgroup_v1_uses_cgroupfs_and_never_collects_the_imported_images() -> None:
    config = yaml.safe_load(kubelet_config(PATHS, Path("/pki/ca.crt")))
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["containerRuntimeEndpoint"] == f"unix://{PATHS.socket}"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"


def test_a_real_node_cluster_advertises_the_apiserver_to_pods_and_keeps_kwok_to_simulated_nodes() -> None:
    documents = list(yaml.safe_load_all(kwokctl_config(Path("/pki"))))
    config = documents[0]
    assert {NODE_IP, API_SERVICE_IP} <= set(config["options"]["kubeApiserverCertSANs"])
    patches = {p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in config["componentsPatches"]}
    apiserver = patches["kube-apiserver"]
    assert apiserver["advertise-address"] == NODE_IP
    assert apiserver["endpoint-reconciler-type"] == "lease"  # kwokctl's `none` leaves the Service empty
    assert apiserver["service-cluster-ip-range"] == SERVICE_SUBNET
    assert patches["kwok-controller"]["manage-all-nodes"] == "false"
    assert patches == {
        p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in apiserver_patches(Path("/pki"))
    }
    assert "componentsPatches" not in yaml.safe_load_all(kwokctl_config()).__next__()  # simulated: as before


def test_gpus_are_advertised_as_an_extended_resource_in_the_node_status() -> None:
    assert gpu_capacity_patch(8) == {"status": {"capacity": {"nvidia.com/gpu": "8"}}}


def test_the_store_volume_binds_only_the_store_claim_on_this_node() -> None:
    volume = store_volume("demo", Path("/srv/store"), "demo-node")
    claim = store_claim()
    assert volume["spec"]["claimRef"] == {
        "namespace": claim["metadata"]["namespace"],
        "name": claim["metadata"]["name"],
    }
    assert volume["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
    term = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term["values"] == ["demo-node"]

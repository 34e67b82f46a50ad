"""The CRDs on a real kube-apiserver: accepted, served, and shown the way users read them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from loraplex.api import GROUP, VERSION, crd
from loraplex.e2e.binaries import cached_binaries
from loraplex.e2e.cluster import LocalCluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
# Shaped for a real cluster: every kind, and the llama-8b names the assertions use.
PRODUCTION_EXAMPLES = ROOT / "examples" / "production"


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binaries = cached_binaries()
    assert binaries is not None
    return subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_crd_is_established_with_its_names(kube: Any, kind: crd.Kind) -> None:
    served = client.ApiextensionsV1Api(kube).read_custom_resource_definition(kind.crd_name)
    conditions = {c.type: c.status for c in served.status.conditions}
    assert conditions["Established"] == "True"
    assert served.status.accepted_names.short_names == list(kind.short_names)
    assert served.status.accepted_names.categories == ["loraplex"]


def test_examples_apply_cleanly_with_kubectl(local_cluster: LocalCluster, namespace: str) -> None:
    applied = kubectl(local_cluster, "apply", "-n", namespace, "-f", str(PRODUCTION_EXAMPLES))
    assert applied.returncode == 0, applied.stderr
    listed = kubectl(local_cluster, "get", "bm,lora,tj", "-n", namespace, "-o", "name")
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert "basemodel.loraplex.dev/llama-8b" in names
    assert "trainingjob.loraplex.dev/support-bot-weekly" in names
    assert len([n for n in names if n.startswith("loraadapter.")]) == 4


def test_category_lists_every_kind(local_cluster: LocalCluster, namespace: str) -> None:
    kubectl(local_cluster, "apply", "-n", namespace, "-f", str(PRODUCTION_EXAMPLES)).check_returncode()
    listed = kubectl(local_cluster, "get", "loraplex", "-n", namespace, "-o", "name")
    kinds = {name.split("/")[0] for name in listed.stdout.split()}
    assert kinds == {f"{kind}.{GROUP}" for kind in ("basemodel", "loraadapter", "trainingjob")}


def test_printer_columns_show_base_phase_copies_and_age(local_cluster: LocalCluster, namespace: str) -> None:
    kubectl(local_cluster, "apply", "-n", namespace, "-f", str(PRODUCTION_EXAMPLES)).check_returncode()
    table = kubectl(local_cluster, "get", "lora", "-n", namespace)
    header = table.stdout.splitlines()[0].split()
    assert header == ["NAME", "BASE", "PHASE", "COPIES", "READY", "REASON", "AGE"]
    assert "llama-8b" in table.stdout.splitlines()[1]
    wide = kubectl(local_cluster, "get", "lora", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert {"POLICY", "RANK"} <= set(wide)
    jobs = kubectl(local_cluster, "get", "tj", "-n", namespace).stdout.splitlines()[0].split()
    assert jobs[:5] == ["NAME", "BASE", "PHASE", "STEP", "TOTAL"]
    models = kubectl(local_cluster, "get", "bm", "-n", namespace).stdout.splitlines()[0].split()
    assert models == ["NAME", "READY", "REASON", "WORKERS", "GPU-SLOTS", "AGE"]


def test_defaults_are_applied_at_admission(kube: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "basemodels",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BaseModel",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"uri": "/models/tiny"}},
        },
    )
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
    assert stored["spec"]["engine"]["maxLoras"] == 4
    assert stored["spec"]["resources"] == {"gpu": 1, "gpuResourceName": "nvidia.com/gpu"}
    assert stored["spec"]["replicas"] == {"min": 1}


def test_status_is_a_subresource(kube: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    doc = next(
        d
        for d in yaml.safe_load_all((PRODUCTION_EXAMPLES / "10-adapters.yaml").read_text())
        if d["metadata"]["name"] == "sql-gen"
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", doc)
    status = {
        "observedGeneration": 1,
        "phase": "Ready",
        "copies": "2/2",
        "readyReplicas": 2,
        "placements": [{"worker": "llama-8b-worker-0", "tier": "GPU"}],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Placed",
                "message": "2 of 2 copies loaded",
                "lastTransitionTime": "2026-11-22T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    # A status written through the main resource is ignored; through /status it lands.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", "sql-gen", {"status": status}
    )
    plain = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "sql-gen")
    assert "status" not in plain
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "loraadapters", "sql-gen", {"status": status}
    )
    table = kubectl_table(kube, namespace)
    assert table == ["sql-gen", "llama-8b", "Ready", "2/2", "True", "Placed"]


def kubectl_table(kube: Any, namespace: str) -> list[str]:
    """The printer-column cells of the one adapter, as the apiserver renders them for kubectl."""
    response = kube.call_api(
        *kube.param_serialize(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/loraadapters",
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        )
    )
    response.read()
    import json

    table = json.loads(response.data)
    cells: list[Any] = table["rows"][0]["cells"]
    return [str(c) for c in cells[:6]]

"""The local fleet on a real node: the store volume, its contents, and the chart installed with helm.

What a user does on a cluster, done here for the README's main command: a
PersistentVolume (a folder of this machine) holds the base model, the example
adapters, the catalog and the training data, bound to the claim
`loraplex-store` that `examples/` name; the chart installs the CRDs, the
operator and its RBAC with `helm upgrade --install`. Everything else (workers,
routers, trainers) the operator creates as pods on the real node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api.release import __version__
from loraplex.e2e.binaries import cache_root, cached_binaries, ensure_helm
from loraplex.e2e.chart import CHART
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.example_data import CATALOG_ADAPTERS, EXAMPLE_ADAPTERS, support_tickets
from loraplex.e2e.tiny_model import lora_adapter, tiny_llama
from loraplex.worker.digest import tree_digest

Log = Callable[[str], None]

STORE_CLAIM = "loraplex-store"
STORE_NAMESPACE = "default"
RELEASE = "loraplex"
RELEASE_NAMESPACE = "loraplex-system"
RUN_AS = 65532  # the images' user: the store must be theirs to write trained adapters into


def store_dir(cluster: LocalCluster) -> Path:
    return cache_root() / "node-store" / cluster.name


def fill_store(root: Path, log: Log) -> None:
    """The store's contents: models/, adapters/, catalog/ (with digests beside), datasets/."""
    model = tiny_llama()
    _copy_tree(model, root / "models" / "tiny-llama")
    for folder, adapters in (("adapters", EXAMPLE_ADAPTERS), ("catalog", CATALOG_ADAPTERS)):
        for name, seed, rank in adapters:
            files = lora_adapter(name, seed, rank=rank, base=model)
            _copy_tree(files.path, root / folder / name)
            (root / folder / f"{name}.sha256").write_text(tree_digest(files.path) + "\n")
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "datasets" / "support-tickets.jsonl").write_text(support_tickets())
    for path in [root, *root.rglob("*")]:
        os.chown(path, RUN_AS, RUN_AS, follow_symlinks=False)
    log(f"Filled the store {root} (claim {STORE_CLAIM}): models, adapters, catalog, datasets")


def _copy_tree(source: Path, dest: Path) -> None:
    if not dest.exists():
        shutil.copytree(source, dest)


def store_volume(cluster: str, path: Path, node: str) -> dict[str, Any]:
    """A PersistentVolume on a folder of the node, for the store claim only."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{cluster}-store", "labels": {"loraplex.dev/local-store": cluster}},
        "spec": {
            "capacity": {"storage": "20Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "local": {"path": str(path)},
            "claimRef": {"namespace": STORE_NAMESPACE, "name": STORE_CLAIM},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                               "values": [node]}]}
                    ]
                }
            },
        },
    }  # fmt: skip


def store_claim() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": STORE_CLAIM, "namespace": STORE_NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "20Gi"}},
        },
    }


def ensure_store(cluster: LocalCluster, node: str, log: Log) -> Path:
    root = store_dir(cluster)
    root.mkdir(parents=True, exist_ok=True)
    fill_store(root, log)
    with contextlib.closing(cluster.api_client()) as api:
        core = client.CoreV1Api(api)
        for create in (
            lambda: core.create_persistent_volume(
                client.V1PersistentVolume.model_validate(store_volume(cluster.name, root, node))
            ),
            lambda: core.create_namespaced_persistent_volume_claim(
                STORE_NAMESPACE, client.V1PersistentVolumeClaim.model_validate(store_claim())
            ),
        ):
            try:
                create()
            except ApiException as error:
                if error.status != 409:
                    raise
    return root


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def restrict_namespaces(cluster: LocalCluster, log: Log) -> None:
    """Enforce the `restricted` Pod Security Standard where the fleet runs (made before any pod is)."""
    with contextlib.closing(cluster.api_client()) as api:
        core = client.CoreV1Api(api)
        for namespace in (RELEASE_NAMESPACE, STORE_NAMESPACE):
            body = {"metadata": {"name": namespace, "labels": RESTRICTED}}
            try:
                core.create_namespace(client.V1Namespace.model_validate(body))
            except ApiException as error:
                if error.status != 409:
                    raise
                core.patch_namespace(namespace, body)
    log(f"Namespaces {RELEASE_NAMESPACE} and {STORE_NAMESPACE} enforce the restricted Pod Security Standard")


def chart_values() -> list[str]:
    """The chart's settings for one small node: one operator replica, the store claim above."""
    return [
        "operator.replicas=1",
        f"training.store=pvc://{STORE_CLAIM}",
        f"image.tag={__version__}",
    ]


def install_chart(cluster: LocalCluster, log: Log, timeout: str = "5m") -> None:
    """`helm upgrade --install` the chart into RELEASE_NAMESPACE and wait for the operator."""
    sets = [arg for value in chart_values() for arg in ("--set", value)]
    command = [
        str(ensure_helm()), "upgrade", "--install", RELEASE, str(CHART),
        "--namespace", RELEASE_NAMESPACE, "--create-namespace",
        "--kubeconfig", str(cluster.kubeconfig), "--wait", "--timeout", timeout, *sets,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"helm install failed: {result.stderr.strip() or result.stdout.strip()}")
    log(f"Installed the chart as release {RELEASE} in {RELEASE_NAMESPACE}")


def uninstall_chart(cluster: LocalCluster) -> subprocess.CompletedProcess[str]:
    command = [
        str(ensure_helm()), "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE,
        "--kubeconfig", str(cluster.kubeconfig), "--wait",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=False)


def kubectl(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    binaries = cached_binaries()
    if binaries is None:
        raise RuntimeError("the Kubernetes binaries are not built (loraplex dev cluster build)")
    command = [str(binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)

"""`kubectl explain` on a real kube-apiserver shows the description the API models give each field."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from loraplex.api import crd
from loraplex.e2e.binaries import cached_binaries
from loraplex.e2e.cluster import LocalCluster

pytestmark = pytest.mark.cluster

# Deep fields of every kind: a nested object's leaf, a list item's field, a status field.
FIELDS = (
    "basemodels.spec.tolerations.tolerationSeconds",
    "basemodels.status.slots.gpuUsed",
    "loraadapters.status.placements.tier",
    "trainingjobs.spec.lora.rank",
    "trainingjobs.status.conditions.reason",
    "workerplacements.status.failures.reason",
)


def description(path: str) -> str:
    """The description the generated CRD gives `path` (plural.field.field...)."""
    plural, *names = path.split(".")
    kind = next(k for k in crd.KINDS if k.plural == plural)
    node: dict[str, Any] = crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in names:
        node = node.get("items", node)["properties"][name]
    return str(node["description"])


@pytest.mark.parametrize("path", FIELDS)
def test_kubectl_explain_shows_the_field_description(local_cluster: LocalCluster, path: str) -> None:
    binaries = cached_binaries()
    assert binaries is not None
    explained = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "explain", path],
        text=True,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert " ".join(description(path).split()) in " ".join(explained.split())

"""The Helm chart in tests: render it with the pinned helm, and apply its RBAC to a cluster."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from loraplex.e2e.binaries import cached_binaries, ensure_helm
from loraplex.e2e.cluster import LocalCluster

CHART = Path(__file__).resolve().parents[1] / "charts" / "loraplex"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_helm()), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(namespace: str, *sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The chart's objects; `api_versions` (group/version/Kind) as if the cluster served them."""
    flags = [arg for value in sets for arg in ("--set", value)]
    flags += [arg for value in api_versions for arg in ("--api-versions", value)]
    rendered = helm("template", "loraplex", str(CHART), "--namespace", namespace, *flags)
    if rendered.returncode != 0:
        raise RuntimeError(f"helm template failed: {rendered.stderr}")
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@contextlib.contextmanager
def chart_applied(cluster: LocalCluster, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The chart (CRDs left to the harness) applied in `namespace`; cluster-wide RBAC removed afterwards."""
    from kubernetes import client

    docs = render(namespace, "crds.enabled=false", "operator.replicas=1")
    binaries = cached_binaries()
    if binaries is None:
        raise RuntimeError("the Kubernetes binaries are not built (loraplex dev cluster build)")
    applied = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if applied.returncode != 0:
        raise RuntimeError(f"kubectl apply of the chart failed: {applied.stderr}")
    try:
        yield docs
    finally:
        with contextlib.closing(cluster.api_client()) as api:
            rbac = client.RbacAuthorizationV1Api(api)
            for doc in docs:
                with contextlib.suppress(client.exceptions.ApiException):
                    if doc["kind"] == "ClusterRole":
                        rbac.delete_cluster_role(doc["metadata"]["name"])
                    elif doc["kind"] == "ClusterRoleBinding":
                        rbac.delete_cluster_role_binding(doc["metadata"]["name"])

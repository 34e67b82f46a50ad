"""The Helm chart: lints, renders what the values say, and its RBAC is all the operator needs."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.binaries import cached_binaries, ensure_helm
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.service_account import service_account_kubeconfig
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "loraplex"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_helm()), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(namespace: str, *sets: str) -> list[dict[str, Any]]:
    flags = [arg for value in sets for arg in ("--set", value)]
    rendered = helm("template", "loraplex", str(CHART), "--namespace", namespace, *flags)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_chart_lints() -> None:
    linted = helm("lint", str(CHART), "--strict")
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("bad", ["operator.replicas=0", "surprise=1", "image.pullPolicy=Sometimes"])
def test_values_schema_refuses_bad_values(bad: str) -> None:
    linted = helm("lint", str(CHART), "--set", bad)
    assert linted.returncode != 0


def test_crds_follow_the_toggles() -> None:
    with_crds = [d for d in render("ops") if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["name"] for d in with_crds} >= {"basemodels.loraplex.dev", "kopfpeerings.kopf.dev"}
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in with_crds)
    dropped = [d for d in render("ops", "crds.keep=false") if d["kind"] == "CustomResourceDefinition"]
    assert all("annotations" not in d["metadata"] for d in dropped)
    assert not [d for d in render("ops", "crds.enabled=false") if d["kind"] == "CustomResourceDefinition"]


def test_operator_pod_runs_restricted() -> None:
    deployment = next(d for d in render("ops") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]


def test_operator_rbac_never_reads_secrets_or_writes_crds() -> None:
    role = next(
        d
        for d in render("ops")
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "loraplex-operator"
    )
    by_resource = {res: set(rule["verbs"]) for rule in role["rules"] for res in rule["resources"]}
    assert by_resource["secrets"] == {"create"}
    assert by_resource["customresourcedefinitions"] <= {"list", "watch", "get"}


@pytest.fixture
def chart_rbac(local_cluster: LocalCluster, namespace: str) -> Iterator[None]:
    """The chart (CRDs already installed) applied to the test namespace, cluster roles removed afterwards."""
    docs = render(namespace, "crds.enabled=false", "operator.replicas=1")
    binaries = cached_binaries()
    assert binaries is not None
    applied = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "apply", "-f", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    yield
    with contextlib.closing(local_cluster.api_client()) as api:
        rbac = client.RbacAuthorizationV1Api(api)
        for doc in docs:
            if doc["kind"] == "ClusterRole":
                rbac.delete_cluster_role(doc["metadata"]["name"])
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(doc["metadata"]["name"])


def test_operator_works_with_only_the_charts_rbac(
    local_cluster: LocalCluster, kube: Any, namespace: str, chart_rbac: None, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(
        local_cluster.kubeconfig, namespace, "loraplex-operator", tmp_path / "sa-kubeconfig.yaml"
    )
    custom = client.CustomObjectsApi(kube)
    operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        base = {"model": {"uri": "/models/tiny"}, "engine": {"maxLoraRank": 8}}
        adapter = {
            "baseModel": "tiny",
            "source": {"uri": "s3://adapters/big/", "sha256": "c" * 64},
            "rank": 16,
        }
        create_object(kube, namespace, "basemodels", "BaseModel", "tiny", base)
        create_object(kube, namespace, "loraadapters", "LoRAAdapter", "big", adapter)

        def ready(plural: str, name: str, reason: str) -> bool:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            conditions = body.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["reason"] == reason for c in conditions)

        wait_until(
            lambda: ready("basemodels", "tiny", "WorkersReady"), 60, "BaseModel Ready under chart RBAC"
        )
        wait_until(lambda: ready("loraadapters", "big", "RankTooHigh"), 30, "adapter judged under chart RBAC")
        assert "Forbidden" not in operator.log()
        assert "forbidden" not in operator.log()
    finally:
        operator.stop()

"""The Helm chart: lints, renders what the values say, and its RBAC is all the operator needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.chart import CHART, chart_applied, helm, render
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.service_account import service_account_kubeconfig
from loraplex.e2e.waiting import wait_until
from loraplex.operator.settings import OperatorSettings
from tests.restricted_pods import restricted_violations

pytestmark = pytest.mark.cluster


def test_chart_lints() -> None:
    linted = helm("lint", str(CHART), "--strict")
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "operator.replicas=0",
        "surprise=1",
        "image.pullPolicy=Sometimes",
        "workloadResources.agent.memoryLimit=lots",
        "trainerImage.surprise=1",
    ],
)
def test_values_schema_refuses_bad_values(bad: str) -> None:
    linted = helm("lint", str(CHART), "--set", bad)
    assert linted.returncode != 0


def test_crds_follow_the_toggles() -> None:
    with_crds = [d for d in render("ops") if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["name"] for d in with_crds} >= {
        "basemodels.loraplex.dev",
        "loraadapters.loraplex.dev",
    }
    assert "kopfpeerings.kopf.dev" not in {d["metadata"]["name"] for d in with_crds}  # Helm crds/ folder
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in with_crds)
    dropped = [d for d in render("ops", "crds.keep=false") if d["kind"] == "CustomResourceDefinition"]
    assert all("annotations" not in d["metadata"] for d in dropped)
    assert not [d for d in render("ops", "crds.enabled=false") if d["kind"] == "CustomResourceDefinition"]


def test_monitoring_objects_follow_the_toggles() -> None:
    assert not [d for d in render("ops") if d["kind"] in ("PodMonitor", "ConfigMap")]
    rendered = render("ops", "metrics.podMonitor.enabled=true", "metrics.grafanaDashboard.enabled=true")
    (pods,) = [d for d in rendered if d["kind"] == "PodMonitor"]
    assert pods["spec"]["namespaceSelector"] == {"any": True}  # BaseModels live in users' namespaces
    assert pods["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "loraplex"}
    endpoints = pods["spec"]["podMetricsEndpoints"]
    assert sorted(e["port"] for e in endpoints) == ["agent", "http", "vllm"]
    by_base_model = {
        "sourceLabels": ["__meta_kubernetes_pod_label_loraplex_dev_base_model"],
        "targetLabel": "base_model",
    }
    assert all(by_base_model in e["relabelings"] for e in endpoints)
    drop_lora_info = {"sourceLabels": ["__name__"], "regex": "vllm:lora_requests_info", "action": "drop"}
    dropping = [e["port"] for e in endpoints if drop_lora_info in e.get("metricRelabelings", [])]
    assert dropping == ["vllm"]  # unbounded cardinality, kept out of Prometheus by default
    kept = render("ops", "metrics.podMonitor.enabled=true", "metrics.podMonitor.keepLoraRequestsInfo=true")
    (pods,) = [d for d in kept if d["kind"] == "PodMonitor"]
    assert not [e for e in pods["spec"]["podMetricsEndpoints"] if "metricRelabelings" in e]
    (dashboard,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["loraplex.json"]) == shipped
    labelled = render(
        "ops", "metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.label=dashboards"
    )
    assert [d["metadata"]["labels"].get("dashboards") for d in labelled if d["kind"] == "ConfigMap"] == ["1"]


MAP_V1 = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"
MAP_V1BETA1 = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"


def policy_versions(*sets: str, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
    rendered = render("ops", *sets, api_versions=api_versions)
    return {d["kind"]: d["apiVersion"] for d in rendered if d["kind"].startswith("MutatingAdmissionPolicy")}


def test_admission_policy_is_installed_at_the_version_the_cluster_serves() -> None:
    def at(version: str) -> dict[str, str]:
        group_version = f"admissionregistration.k8s.io/{version}"
        return {"MutatingAdmissionPolicy": group_version, "MutatingAdmissionPolicyBinding": group_version}

    assert policy_versions(api_versions=(MAP_V1, MAP_V1BETA1)) == at("v1")  # Kubernetes 1.36
    assert policy_versions(api_versions=(MAP_V1BETA1,)) == at("v1beta1")  # 1.34 with the beta API on
    assert policy_versions() == {}  # not served: the operator adds the finalizer itself
    assert policy_versions("admissionPolicy.enabled=false", api_versions=(MAP_V1,)) == {}


def test_operator_pod_runs_restricted() -> None:
    deployment = next(d for d in render("ops") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is True  # the operator is an API client
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    # kopf's peer identity: a container restarted in the same pod resumes at once as the same peer.
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]


def test_workload_images_and_resources_reach_the_operator() -> None:
    def env(*sets: str) -> dict[str, str]:
        deployment = next(d for d in render("ops", *sets) if d["kind"] == "Deployment")
        return {
            e["name"]: e.get("value", "")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    defaults = env()
    assert defaults["LORAPLEX_TRAINER_IMAGE"] == "ghcr.io/loraplex/loraplex-trainer:0.1.0"
    documented = OperatorSettings()
    for variable, resources in (
        ("AGENT", documented.agent_resources),
        ("ROUTER", documented.router_resources),
        ("FETCH_MODEL", documented.fetch_model_resources),
    ):  # the chart's defaults are the operator's
        assert defaults[f"LORAPLEX_{variable}_CPU_REQUEST"] == resources.cpu_request
        assert defaults[f"LORAPLEX_{variable}_MEMORY_REQUEST"] == resources.memory_request
        assert defaults[f"LORAPLEX_{variable}_MEMORY_LIMIT"] == resources.memory_limit
    tuned = env("trainerImage.tag=v2", "workloadResources.fetchModel.memoryLimit=8Gi")
    assert tuned["LORAPLEX_TRAINER_IMAGE"] == "ghcr.io/loraplex/loraplex-trainer:v2"
    assert tuned["LORAPLEX_FETCH_MODEL_MEMORY_LIMIT"] == "8Gi"
    assert OperatorSettings.from_env({"POD_NAME": "a", **tuned}).fetch_model_resources.memory_limit == "8Gi"


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
    with chart_applied(local_cluster, namespace):
        yield


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

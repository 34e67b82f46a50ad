"""The chart fits the tools users run it with: kube-prometheus-stack, `helm test`, kubeconform, and
values a platform team expects (pull secrets, placement, annotations, extra env, PDB, subcharts).

kubeconform validates every object the chart renders, with every toggle on, against schemas made
from the pinned kube-apiserver's own OpenAPI document (tests/chart/kube_schemas.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.api import GROUP, VERSION, crd, peering
from loraplex.e2e.binaries import cached_binaries, ensure_kubeconform
from loraplex.e2e.chart import CHART, helm, render
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.operator.fleet import AGENT_PORT, VLLM_PORT, BaseModelRef, network_policy
from loraplex.operator.settings import OperatorSettings
from tests.chart.kube_schemas import FILE_TEMPLATE, prometheus_operator_crds, write_schemas
from tests.restricted_pods import restricted_violations

pytestmark = pytest.mark.cluster

RULES = CHART / "files" / "prometheus-rules.yaml"
KPS = "release=kube-prometheus-stack"
EVERY_TOGGLE = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    f"metrics.serviceMonitor.labels.{KPS}",
    f"metrics.podMonitor.labels.{KPS}",
    f"metrics.prometheusRule.labels.{KPS}",
    "metrics.scraper.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    "imagePullSecrets[0].name=registry",
    "operator.podAnnotations.team=ml",
    "operator.priorityClassName=system-cluster-critical",
    "operator.extraEnv[0].name=LORAPLEX_MAX_REBALANCE_MOVES",
    "operator.extraEnv[0].value=8",
    "operator.topologySpreadConstraints[0].maxSkew=1",
    "operator.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "operator.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/os",
    "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    "operator.nodeSelector.kubernetes\\.io/os=linux",
    "operator.tolerations[0].operator=Exists",
    "operator.namespaces={team-a,team-b}",
    "global.imageRegistry=registry.example",
)


# Cluster-wide objects the test cluster already has, which a release may not adopt.
OWNED_BY_THE_HARNESS = (
    "crds.enabled=false",
    "admissionPolicy.enabled=false",
    "training.priorityClass.create=false",
)


def flags(sets: tuple[str, ...]) -> list[str]:
    return [arg for value in sets for arg in ("--set", value)]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_the_chart_lints_strict_with_every_toggle_on() -> None:
    linted = helm("lint", str(CHART), "--strict", *flags(EVERY_TOGGLE))
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_global_is_allowed_so_the_chart_can_be_a_subchart() -> None:
    assert helm("lint", str(CHART), "--strict", "--set", "global.anything=1").returncode == 0
    assert (
        helm("lint", str(CHART), "--set", "operator.podAnnotations.a=null", "--set", "global=1").returncode
        != 0
    )


def test_monitors_and_rules_carry_the_labels_kube_prometheus_stack_selects() -> None:
    docs = render("ops", *EVERY_TOGGLE)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (monitor,) = by_kind(docs, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    assert not [
        d for d in render("ops", "metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true")
        if "release" in d["metadata"].get("labels", {})
    ]  # fmt: skip
    (endpoint,) = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # the per-BaseModel series keep their BaseModel's namespace


def test_the_prometheus_rule_is_the_promtool_tested_file_and_off_by_default() -> None:
    assert not by_kind(render("ops"), "PrometheusRule")
    (rule,) = by_kind(render("ops", "metrics.prometheusRule.enabled=true"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_the_scraper_values_reach_every_worker_network_policy() -> None:
    def policy_peers(*sets: str) -> dict[int, list[dict[str, Any]]]:
        (deployment,) = by_kind(render("ops", *sets), "Deployment")
        env = {
            e["name"]: e["value"]
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            if "value" in e
        }
        policy = network_policy(BaseModelRef("chat", "team-a", "uid"), OperatorSettings.from_env(env))
        return {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}

    prometheus = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    defaults = policy_peers()
    assert prometheus in defaults[VLLM_PORT]
    assert prometheus in defaults[AGENT_PORT]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    narrowed = policy_peers(
        "metrics.scraper.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring"
    )
    assert {**prometheus, "namespaceSelector": monitoring} in narrowed[AGENT_PORT]
    assert prometheus not in narrowed[AGENT_PORT]
    closed = policy_peers("metrics.scraper.enabled=false")
    assert all(
        prometheus["podSelector"] not in [p.get("podSelector") for p in peers] for peers in closed.values()
    )


def test_the_operator_pod_takes_the_platform_values() -> None:
    docs = render("ops", *EVERY_TOGGLE)
    (deployment,) = by_kind(docs, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert template["metadata"]["annotations"] == {"team": "ml"}
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LORAPLEX_MAX_REBALANCE_MOVES"] == "8"
    assert (
        OperatorSettings.from_env(
            {"POD_NAME": "op", **{k: v for k, v in env.items() if v}}
        ).max_rebalance_moves
        == 8
    )
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    assert not by_kind(render("ops", "operator.podDisruptionBudget.enabled=false"), "PodDisruptionBudget")
    plain = by_kind(render("ops"), "Deployment")[0]["spec"]["template"]
    assert not {"imagePullSecrets", "priorityClassName", "affinity", "topologySpreadConstraints"} & set(
        plain["spec"]
    )
    assert "annotations" not in plain["metadata"]


def test_kopf_peering_crds_are_helm_crds_no_release_owns() -> None:
    """Another kopf operator may have installed them: Helm installs them only where missing, and
    never adopts, upgrades or deletes them."""
    templates = [d["metadata"]["name"] for d in render("ops") if d["kind"] == "CustomResourceDefinition"]
    assert "kopfpeerings.kopf.dev" not in templates
    assert "clusterkopfpeerings.kopf.dev" not in templates
    assert "basemodels.loraplex.dev" in templates
    shipped = (CHART / peering.CHART_FOLDER / peering.FILE_NAME).read_text()
    assert shipped == peering.render()
    rendered = helm("template", "loraplex", str(CHART), "--include-crds")
    assert rendered.returncode == 0, rendered.stderr
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= names


def test_helm_test_checks_every_loraplex_crd_and_the_operator_service() -> None:
    docs = render("ops")
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    (pod,) = by_kind(hooks, "Pod")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    resources = set(env["LORAPLEX_RESOURCES"].split(","))
    assert {f"{kind.plural}.{GROUP}/{VERSION}" for kind in crd.KINDS} <= resources
    assert env["LORAPLEX_METRICS_URL"] == "http://loraplex-operator-metrics.ops.svc:9090/metrics"
    assert restricted_violations(pod["spec"]) == []  # runs where the restricted standard is enforced
    assert {d["kind"] for d in hooks} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Pod",
    }
    assert not [
        d
        for d in render("ops", "helmTests.enabled=false")
        if "helm.sh/hook" in d["metadata"].get("annotations", {})
    ]


def run_check(operator_url: str, resources: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LORAPLEX_METRICS_URL": operator_url,
           "LORAPLEX_RESOURCES": resources}  # fmt: skip
    env.pop("KUBERNETES_SERVICE_HOST", None)
    script = CHART / "files" / "helm-test.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_the_helm_test_script_passes_on_a_running_operator_and_says_what_is_missing(
    local_cluster: LocalCluster, operator: OperatorProcess
) -> None:
    (pod,) = by_kind(render("ops"), "Pod")
    resources = next(
        e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "LORAPLEX_RESOURCES"
    )
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    passed = run_check(url, resources, local_cluster.kubeconfig)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    unserved = run_check(url, resources + ",nothings.loraplex.dev/v1alpha1", local_cluster.kubeconfig)
    assert unserved.returncode == 1
    assert "serves no nothings" in unserved.stderr
    silent = run_check(
        f"http://127.0.0.1:{operator.health_port}/nothing", resources, local_cluster.kubeconfig
    )
    assert silent.returncode == 1
    assert "operator" in silent.stderr


@pytest.fixture
def monitoring_crds(local_cluster: LocalCluster) -> None:
    """The Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule served by the cluster."""
    binaries = cached_binaries()
    assert binaries is not None
    wanted = {"podmonitors", "servicemonitors", "prometheusrules"}
    crds = [c for c in prometheus_operator_crds() if c["spec"]["names"]["plural"] in wanted]
    applied = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "apply", "--server-side",
         "--force-conflicts", "-f", "-"],
        input=yaml.safe_dump_all(crds), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    for crd_doc in crds:
        subprocess.run(
            [str(binaries.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "wait", "--for",
             "condition=Established", "--timeout=60s", f"crd/{crd_doc['metadata']['name']}"],
            capture_output=True, check=True,
        )  # fmt: skip


@pytest.mark.usefixtures("monitoring_crds")
def test_notes_tell_how_to_check_the_release_and_what_prometheus_needs(local_cluster: LocalCluster) -> None:
    def notes(*sets: str) -> str:
        installed = helm("install", "loraplex", str(CHART), "--dry-run=client", "--namespace", "ops",
                         "--kubeconfig", str(local_cluster.kubeconfig),
                         *flags((*OWNED_BY_THE_HARNESS, *sets)))  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        return installed.stdout.split("NOTES:", 1)[1]

    plain = notes()
    assert "helm test loraplex -n ops" in plain
    assert "Prometheus" not in plain
    unlabelled = notes("metrics.podMonitor.enabled=true")
    assert "release: <its release name>" in unlabelled
    labelled = notes("metrics.podMonitor.enabled=true", f"metrics.podMonitor.labels.{KPS}")
    assert "release: <its release name>" not in labelled
    assert '"release":"kube-prometheus-stack"' in labelled


def test_every_object_the_chart_renders_is_valid_for_the_pinned_kubernetes(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    binaries = cached_binaries()
    assert binaries is not None
    served = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "get", "--raw", "/openapi/v2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    write_schemas(json.loads(served.stdout), prometheus_operator_crds(), schemas)
    # The pinned 1.34 serves MutatingAdmissionPolicy at v1beta1 (its feature gate is on in the harness).
    policy = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"
    rendered = helm("template", "loraplex", str(CHART), "--namespace", "ops", "--include-crds",
                    "--api-versions", policy, *flags(EVERY_TOGGLE))  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    manifests = tmp_path / "chart.yaml"
    manifests.write_text(rendered.stdout)
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {
        "Deployment",
        "PodDisruptionBudget",
        "Pod",
        "PrometheusRule",
        "PodMonitor",
        "ServiceMonitor",
        "MutatingAdmissionPolicy",
    } <= kinds
    checked = subprocess.run(
        [str(ensure_kubeconform()), "-strict", "-summary", "-output", "json",
         "-schema-location", f"{schemas}/{FILE_TEMPLATE}", str(manifests)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr
    summary = json.loads(checked.stdout)["summary"]
    assert (summary["invalid"], summary["errors"], summary["skipped"]) == (0, 0, 0), summary
    assert summary["valid"] == len([d for d in yaml.safe_load_all(rendered.stdout) if d])

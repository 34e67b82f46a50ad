"""`loraplex dev up` (the README's main command): the fleet as real containers under a real kubelet.

This machine becomes a node (containerd, runc, a CNI bridge, the kubelet and
kube-proxy built from the pinned source), the images are built and imported,
and the chart installs the operator. Everything after that is what a user sees
on a cluster: the examples turn Ready as pods in namespaces that enforce the
`restricted` Pod Security Standard, an OpenAI client is answered through the
router pod, a TrainingJob trained in a warm trainer pod publishes a revision the
workers swap in, `helm uninstall` leaves nothing of the release, and `dev down` leaves no
process, mount or bridge behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path
from typing import Any

import openai
import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.cli import main
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.node import LocalNode, node_pids
from loraplex.e2e.node_config import BRIDGE, POD_SUBNET
from loraplex.e2e.node_fleet import RELEASE, RELEASE_NAMESPACE, STORE_NAMESPACE, kubectl, uninstall_chart
from loraplex.e2e.prometheus import LocalPrometheus
from loraplex.e2e.waiting import wait_until
from tests.monitoring.test_grafana_dashboard import expressions
from tests.restricted_pods import restricted_violations

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.engine,
    pytest.mark.node,
    pytest.mark.skipif(os.geteuid() != 0, reason="a real node needs root (cgroups, namespaces, iptables)"),
]

NAME = "loraplex-nodefleet"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ADAPTERS = ("sql-gen", "support-bot", "summarizer-de", "code-review")
ORIGINAL_SUPPORT_BOT = "b8b5b83f817a988bb9605a6385ccbd4a51ec5f0f1ae7eb65acb18c0f3b93542a"  # examples/10
COMPONENT = "app.kubernetes.io/component"


@pytest.mark.timeout(2400)
def test_the_fleet_runs_as_real_pods_installed_by_the_chart_and_leaves_nothing_behind() -> None:
    cluster = LocalCluster(NAME, real_node=True)
    node = LocalNode(cluster)
    pids: dict[str, int] = {}
    try:
        assert main(["dev", "up", "--name", NAME, "--prometheus"]) == 0
        pids = {**cluster.status().pids, **node_pids(node)}
        for example in ("00-basemodel.yaml", "10-adapters.yaml"):  # the TrainingJob once serving is seen
            applied = kubectl(cluster, "apply", "-n", STORE_NAMESPACE, "-f", str(ROOT / "examples" / example))
            assert applied.returncode == 0, applied.stderr
        with contextlib.closing(cluster.api_client()) as api:
            core = client.CoreV1Api(api)
            status = wait_until(lambda: _ready(api, "basemodels", "tiny-llama"), 900, "BaseModel Ready")
            assert status["workers"] == "2/2"
            for name in EXAMPLE_ADAPTERS:
                wait_until(lambda name=name: _ready(api, "loraadapters", name), 300, f"adapter {name} Ready")
            _assert_pods_are_real_and_restricted(core)
            router_ip = _router_ip(core)
            _assert_only_the_router_may_reach_vllm(api, core)
            _assert_a_model_that_cannot_be_fetched_stalls_its_base_model_with_the_cause(cluster, api)
            _assert_a_volume_that_will_not_mount_stalls_its_base_model_until_it_can(cluster, api)

        caller = openai.OpenAI(base_url=f"http://{router_ip}:8000/v1", api_key="unused", max_retries=2)
        texts = {model: _answer(caller, model, "select") for model in ("tiny-llama", "sql-gen", "user-2")}
        assert len(set(texts.values())) == 3, texts  # base, named adapter and catalog adapter differ
        with pytest.raises(openai.NotFoundError):
            caller.completions.create(model="no-such-adapter", prompt="select", max_tokens=1)
        before = _answer(caller, "support-bot", "ticket:")
        training = ROOT / "examples" / "30-trainingjob.yaml"
        applied = kubectl(cluster, "apply", "-n", STORE_NAMESPACE, "-f", str(training))
        assert applied.returncode == 0, applied.stderr

        with contextlib.closing(cluster.api_client()) as api:  # the training example closes the loop
            job = wait_until(lambda: _phase(api, "support-bot-retrain", "Succeeded"), 600, "TrainingJob done")
            revision = job["adapterRevision"]
            admitted = client.CoreV1Api(api).list_namespaced_event(
                STORE_NAMESPACE, field_selector="involvedObject.name=support-bot-retrain"
            )  # a shared job (the default): a tenant of a warm trainer, which reported its result in its log
            assert any(e.reason == "Admitted" and "warm trainer" in e.message for e in admitted.items)
            assert not (job.get("placement") or {}).get("trainer")  # a finished job is no tenant any more
            assert revision != ORIGINAL_SUPPORT_BOT
            wait_until(
                lambda: (_ready(api, "loraadapters", "support-bot") or {}).get("revision") == revision,
                180,
                "the workers serving the trained revision",
            )
        assert _answer(caller, "support-bot", "ticket:") != before  # the trained weights answer now
        _assert_prometheus_answers_every_panel(LocalPrometheus(cluster))

        deleted = kubectl(cluster, "delete", "-n", STORE_NAMESPACE, "-f", str(ROOT / "examples"), "--wait")
        assert deleted.returncode == 0, deleted.stderr
        uninstalled = uninstall_chart(cluster)
        assert uninstalled.returncode == 0, uninstalled.stderr
        with contextlib.closing(cluster.api_client()) as api:
            wait_until(lambda: not _release_pods(api), 180, "no pod of the fleet left")
            assert not _release_cluster_objects(api)
    finally:
        assert main(["dev", "down", "--name", NAME]) == 0
    assert not [name for name, pid in pids.items() if process_alive(pid)]
    assert str(node.paths.root) not in Path("/proc/mounts").read_text()
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()


def _assert_pods_are_real_and_restricted(core: Any) -> None:
    """Every pod of the fleet was admitted under `restricted`, runs on the real node, and is ready."""
    for namespace in (RELEASE_NAMESPACE, STORE_NAMESPACE):
        labels = core.read_namespace(namespace).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = [
        *core.list_namespaced_pod(RELEASE_NAMESPACE).items,
        *core.list_namespaced_pod(STORE_NAMESPACE).items,
    ]
    components = {pod.metadata.labels.get(COMPONENT) for pod in pods if pod.status.phase == "Running"}
    assert {"worker", "router"} <= components
    for pod in pods:
        if pod.status.phase != "Running":
            continue
        spec = client.ApiClient().sanitize_for_serialization(pod.spec)
        assert restricted_violations(spec) == [], pod.metadata.name
        assert pod.spec.node_name.endswith("-node")
        assert _in_pod_subnet(pod.status.pod_ip), pod.status.pod_ip
        assert all(c.ready and c.started for c in pod.status.container_statuses), pod.metadata.name


def _assert_only_the_router_may_reach_vllm(api: Any, core: Any) -> None:
    """The workers' NetworkPolicy selects the real worker pods and admits only the router to vLLM.

    The node's bridge CNI does not enforce NetworkPolicy (no enforcing plugin is packaged for
    these machines), so this checks the policy the operator wrote against the live pods' labels.
    """
    policy = client.NetworkingV1Api(api).read_namespaced_network_policy("tiny-llama-worker", STORE_NAMESPACE)
    pods = core.list_namespaced_pod(STORE_NAMESPACE).items

    def selected(selector: Any, pod: Any) -> bool:
        return all(pod.metadata.labels.get(k) == v for k, v in (selector.match_labels or {}).items())

    workers = [p for p in pods if selected(policy.spec.pod_selector, p)]
    assert {p.metadata.labels[COMPONENT] for p in workers} == {"worker"}
    assert len(workers) == 2
    vllm_rule = next(rule for rule in policy.spec.ingress if rule.ports[0].port == 8000)
    allowed = [p for p in pods for peer in vllm_rule._from if selected(peer.pod_selector, p)]
    assert {p.metadata.labels[COMPONENT] for p in allowed} == {"router"}


def _assert_prometheus_answers_every_panel(prometheus: LocalPrometheus) -> None:
    """Debian's Prometheus, configured from the chart's monitors, scrapes every loraplex process, and
    every query of the Grafana dashboard returns data (for all BaseModels, as the dashboard opens)."""

    def components() -> list[str] | None:
        targets = prometheus.targets()
        if not targets or any(t["health"] != "up" for t in targets):
            return None
        return sorted(t["labels"].get("component", "operator") for t in targets)

    # The operator's Service; per worker pod its agent and its vLLM; the router.
    scraped = wait_until(components, 60, "every scrape target up", interval=2)
    assert scraped == ["operator", "router", *["worker"] * 4]
    queries = [expr.replace("$base_model", ".*") for expr in expressions()]
    empty: list[str] = []

    def answered() -> bool:
        empty[:] = [query for query in queries if not prometheus.query(query)]
        return not empty

    with contextlib.suppress(TimeoutError):
        wait_until(answered, 60, "every dashboard panel answered", interval=5)
    assert empty == []


def _assert_a_model_that_cannot_be_fetched_stalls_its_base_model_with_the_cause(
    cluster: LocalCluster, api: Any
) -> None:
    """A BaseModel whose weights cannot be copied: its worker's fetch-model init container fails under
    the kubelet, and the BaseModel says so (Stalled, the pod, the error the container logged)."""
    broken = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BaseModel",
        "metadata": {"name": "unreachable-model", "namespace": STORE_NAMESPACE},
        "spec": {
            "model": {"uri": "https://127.0.0.1:9/tiny-llama.tar"},  # nothing listens in the pod
            "engine": {"image": "ghcr.io/loraplex/vllm-cpu:v0.32.0"},
            "resources": {"gpu": 1, "cpu": "50m", "memory": "256Mi"},
            "replicas": {"min": 1},
        },
    }
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, STORE_NAMESPACE, "basemodels", broken)

    def stalled() -> dict[str, Any] | None:
        status = (
            objects.get_namespaced_custom_object(
                GROUP, VERSION, STORE_NAMESPACE, "basemodels", "unreachable-model"
            ).get("status")
            or {}
        )
        found = {c["type"]: c for c in status.get("conditions", [])}
        return found["Ready"] if found.get("Stalled", {}).get("status") == "True" else None

    ready = wait_until(stalled, 300, "the unreachable model's BaseModel Stalled")
    assert ready["reason"] == "ModelFetchFailed", ready
    assert ready["message"].startswith("unreachable-model-worker-0: copying the base model failed"), ready
    assert "fetch-model failed (" in ready["message"], ready  # the container's own last line

    def warned() -> list[str] | None:  # kopf posts events after the handler
        about = "involvedObject.kind=BaseModel,involvedObject.name=unreachable-model"
        events = client.CoreV1Api(api).list_namespaced_event(STORE_NAMESPACE, field_selector=about)
        return [e.type for e in events.items if e.reason == "ModelFetchFailed"] or None

    assert wait_until(warned, 60, "a Warning Event on the BaseModel") == ["Warning"]
    deleted = kubectl(cluster, "delete", "-n", STORE_NAMESPACE, "basemodel", "unreachable-model", "--wait")
    assert deleted.returncode == 0, deleted.stderr


def _assert_a_volume_that_will_not_mount_stalls_its_base_model_until_it_can(
    cluster: LocalCluster, api: Any
) -> None:
    """A BaseModel naming an API-key Secret that does not exist: its router pod stays ContainerCreating
    under the kubelet, which says why only in Events; the BaseModel says it (Stalled, the kubelet's
    words), and is Ready once the Secret is there."""
    name, keys = "locked-out", "no-such-keys"
    model = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BaseModel",
        "metadata": {"name": name, "namespace": STORE_NAMESPACE},
        "spec": {
            "model": {"uri": "https://127.0.0.1:9/tiny-llama.tar"},  # no worker runs: replicas 0
            "replicas": {"min": 0},
            "access": {"authentication": {"apiKeys": {"secretNames": [keys]}}},
        },
    }
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, STORE_NAMESPACE, "basemodels", model)

    def ready_condition() -> dict[str, Any]:
        body = objects.get_namespaced_custom_object(GROUP, VERSION, STORE_NAMESPACE, "basemodels", name)
        found = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
        return found.get("Ready", {})

    def unmounted() -> dict[str, Any] | None:
        ready = ready_condition()
        return ready if ready.get("reason") == "VolumeMountFailed" else None

    ready = wait_until(unmounted, 180, "the BaseModel whose key Secret is missing says VolumeMountFailed")
    assert ready["message"].startswith(f"{name}-router-"), ready
    assert (
        f'FailedMount: MountVolume.SetUp failed for volume "api-keys-0" : secret "{keys}" not found'
        in (ready["message"])
    ), ready
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": keys}, "data": {}}
    client.CoreV1Api(api).create_namespaced_secret(STORE_NAMESPACE, secret)
    wait_until(lambda: ready_condition().get("status") == "True", 300, "Ready once the Secret exists")
    deleted = kubectl(cluster, "delete", "-n", STORE_NAMESPACE, "basemodel", name, "--wait")
    assert deleted.returncode == 0, deleted.stderr
    client.CoreV1Api(api).delete_namespaced_secret(keys, STORE_NAMESPACE)


def _in_pod_subnet(ip: str | None) -> bool:
    return ip is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(POD_SUBNET)


def _release_pods(api: Any) -> list[str]:
    core = client.CoreV1Api(api)
    return [
        p.metadata.name
        for namespace in (RELEASE_NAMESPACE, STORE_NAMESPACE)
        for p in core.list_namespaced_pod(namespace).items
    ]


def _release_cluster_objects(api: Any) -> list[str]:
    """Cluster-wide objects the release made (RBAC, PriorityClass, admission policy) still there."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    rbac = client.RbacAuthorizationV1Api(api)
    names = [r.metadata.name for r in rbac.list_cluster_role(label_selector=selector).items]
    names += [b.metadata.name for b in rbac.list_cluster_role_binding(label_selector=selector).items]
    names += [
        c.metadata.name
        for c in client.SchedulingV1Api(api).list_priority_class(label_selector=selector).items
    ]
    return names


def _answer(caller: openai.OpenAI, model: str, prompt: str) -> str:
    answer = caller.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    return answer.choices[0].text


def _ready(api: Any, plural: str, name: str) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, STORE_NAMESPACE, plural, name
    )
    status: dict[str, Any] = body.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return status if ready.get("status") == "True" else None


def _phase(api: Any, name: str, phase: str) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, STORE_NAMESPACE, "trainingjobs", name
    )
    status: dict[str, Any] = body.get("status", {})
    assert status.get("phase") != "Failed", status
    return status if status.get("phase") == phase else None


def _router_ip(core: Any) -> str:
    pods = core.list_namespaced_pod(STORE_NAMESPACE, label_selector=f"{COMPONENT}=router").items
    ip = pods[0].status.pod_ip if pods else None
    assert ip, "the router pod has no IP"
    return str(ip)

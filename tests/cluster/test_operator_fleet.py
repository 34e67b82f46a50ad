"""The operator on the real control plane: BaseModel -> worker fleet, status, rolls, restarts, peering."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api import GROUP, VERSION
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster


def create_base_model(kube: Any, namespace: str, name: str, **spec: Any) -> None:
    create_object(
        kube, namespace, "basemodels", "BaseModel", name, {"model": {"uri": f"/models/{name}"}, **spec}
    )


def base_model(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", name
    )
    return found


def ready_condition(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    conditions = base_model(kube, namespace, name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def wait_ready(
    kube: Any, namespace: str, name: str, generation: int = 1, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = base_model(kube, namespace, name).get("status", {})
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        fresh = status.get("observedGeneration") == generation
        return status if fresh and ready.get("status") == "True" else None

    return wait_until(probe, timeout, f"BaseModel {namespace}/{name} Ready at generation {generation}")


def test_base_model_gets_a_ready_fleet_on_gpu_nodes(
    local_cluster: LocalCluster, kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_base_model(kube, namespace, "tiny", replicas={"min": 2})
    status = wait_ready(kube, namespace, "tiny")
    assert (status["workers"], status["slotsSummary"]) == ("2/2", "0/8")
    statefulset = client.AppsV1Api(kube).read_namespaced_stateful_set("tiny-worker", namespace)
    owner = statefulset.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("BaseModel", "tiny", True)
    pods = (
        client.CoreV1Api(kube)
        .list_namespaced_pod(namespace, label_selector="loraplex.dev/base-model=tiny")
        .items
    )
    workers = [p for p in pods if p.metadata.labels["app.kubernetes.io/component"] == "worker"]
    assert sorted(p.metadata.name for p in workers) == ["tiny-worker-0", "tiny-worker-1"]
    assert all(
        p.status.phase == "Running" and p.spec.node_name.startswith(f"{local_cluster.name}-gpu-")
        for p in workers
    )
    assert client.AppsV1Api(kube).read_namespaced_deployment("tiny-router", namespace).spec.replicas == 1
    assert client.CoreV1Api(kube).read_namespaced_secret("tiny-vllm-api-key", namespace).data["api-key"]


def test_workers_that_cannot_get_gpus_say_so(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    create_base_model(kube, namespace, "huge", resources={"gpu": 16})

    def stuck() -> dict[str, Any] | None:
        ready = ready_condition(kube, namespace, "huge")
        return ready if ready.get("reason") == "InsufficientGPU" else None

    ready = wait_until(stuck, 60, "Ready=False reason InsufficientGPU")
    assert ready["status"] == "False"
    assert "16 free nvidia.com/gpu" in ready["message"]
    conditions = {c["type"]: c["status"] for c in base_model(kube, namespace, "huge")["status"]["conditions"]}
    assert conditions["Stalled"] == "True"

    def warned() -> list[Any] | None:  # kubectl describe and Event-based alerting see it too
        about = "involvedObject.kind=BaseModel,involvedObject.name=huge,type=Warning"
        events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector=about).items
        return [e for e in events if e.reason == "InsufficientGPU"] or None

    (event,) = wait_until(warned, 30, "one Warning Event InsufficientGPU on the BaseModel")
    assert "16 free nvidia.com/gpu" in event.message


def worker_revisions(kube: Any, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    """Each worker pod's name -> (uid, the StatefulSet revision it runs)."""
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"loraplex.dev/base-model={name},app.kubernetes.io/component=worker"
    )
    return {
        p.metadata.name: (p.metadata.uid, p.metadata.labels["controller-revision-hash"]) for p in pods.items
    }


def test_a_fleet_the_api_server_refuses_makes_the_base_model_say_why(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # Admitted (the CRD cannot check map keys within its CEL budget), refused in the StatefulSet.
    create_base_model(kube, namespace, "tiny", nodeSelector={"gpu pool!": "a100"})

    def refused() -> dict[str, Any] | None:
        ready = ready_condition(kube, namespace, "tiny")
        return ready if ready.get("reason") == "ObjectRefused" else None

    ready = wait_until(refused, 60, "BaseModel Ready=False ObjectRefused")
    assert ready["status"] == "False"
    assert "nodeSelector" in ready["message"]
    assert "tiny-worker" in ready["message"]
    fixed = {"spec": {"nodeSelector": {"gpu pool!": None, "gpu-pool": "a100"}}}  # merge patch: None deletes
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny", fixed
    )
    wait_until(
        lambda: ready_condition(kube, namespace, "tiny").get("reason") not in (None, "ObjectRefused"),
        60,
        "the refusal cleared once the spec was fixed",
    )


def test_spec_change_rolls_the_workers(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    create_base_model(kube, namespace, "tiny", replicas={"min": 2}, engine={"maxLoras": 2, "maxCpuLoras": 8})
    wait_ready(kube, namespace, "tiny")
    before = worker_revisions(kube, namespace, "tiny")
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny", {"spec": {"engine": {"maxLoras": 6}}}
    )
    # Ready at generation 2 (what `kubectl wait`, Flux and Argo CD read) only once every worker rolled.
    status = wait_ready(kube, namespace, "tiny", generation=2)
    after = worker_revisions(kube, namespace, "tiny")
    statefulset = client.AppsV1Api(kube).read_namespaced_stateful_set("tiny-worker", namespace)
    assert sorted(after) == sorted(before) == ["tiny-worker-0", "tiny-worker-1"]
    assert all(after[pod][0] != before[pod][0] for pod in before)  # every pod was replaced
    assert {revision for _, revision in after.values()} == {statefulset.status.update_revision}
    assert statefulset.status.update_revision not in {revision for _, revision in before.values()}
    assert statefulset.status.updated_replicas == 2
    assert status["slotsSummary"] == "0/12"
    args = statefulset.spec.template.spec.containers[0].args
    assert args[args.index("--max-loras") + 1] == "6"


def test_restarted_operator_converges_without_writing(
    local_cluster: LocalCluster, kube: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    create_base_model(kube, namespace, "tiny")
    wait_ready(kube, namespace, "tiny")
    custom = client.CustomObjectsApi(kube)

    def placement_written() -> bool:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workerplacements")["items"]
        return [item["metadata"]["name"] for item in listed] == ["tiny-worker-0"]

    wait_until(placement_written, 30, "the placement loop recorded the worker")
    operator.stop()
    again = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "again.log").start()
    try:
        looked = 'loraplex_apply_skipped_total{resource="StatefulSet"}'
        wait_until(lambda: again.metrics().get(looked), 30, "restarted operator re-checked the fleet")
        writes = {k: v for k, v in again.metrics().items() if k.startswith("loraplex_api_writes_total{")}
        assert writes == {}
        assert ready_condition(kube, namespace, "tiny")["status"] == "True"
    finally:
        again.stop()


def test_deleting_the_base_model_removes_its_fleet(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_base_model(kube, namespace, "tiny")
    wait_ready(kube, namespace, "tiny")
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny"
    )

    def gone() -> bool:
        try:
            client.AppsV1Api(kube).read_namespaced_stateful_set("tiny-worker", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, 60, "worker StatefulSet garbage-collected with its BaseModel")


def test_two_replicas_take_turns_instead_of_fighting(
    local_cluster: LocalCluster, kube: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    standby = OperatorProcess(
        local_cluster.kubeconfig, namespace, tmp_path / "standby.log", priority=50
    ).start()
    try:
        create_base_model(kube, namespace, "first")
        wait_ready(kube, namespace, "first")
        # kopf starts a replica paused; it resumes only when no live peer outranks it.
        assert "Resuming operations" not in standby.log()
        assert not any(k.startswith("loraplex_reconciles_total{") for k in standby.metrics())
        operator.stop(signal.SIGTERM)
        wait_until(
            lambda: "Resuming operations" in standby.log(), 90, "standby resumed after the leader left"
        )
        create_base_model(kube, namespace, "second")
        wait_ready(kube, namespace, "second")
        assert standby.metrics().get('loraplex_reconciles_total{kind="BaseModel",result="ok"}', 0) >= 1
    finally:
        standby.stop()

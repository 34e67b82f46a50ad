"""Shared TrainingJobs run as tenants of warm trainers: join, leave, capacity, preemption and resume.

Real kube-apiserver, scheduler and Job controller; KWOK GPU nodes (4 x 8 GPUs), so trainer pods are
really scheduled and really preempted. KWOK runs no container and serves no log: what the trainer
does with its tenants is tests/trainer/test_warm_trainer.py's; here, what the operator asks of it
(the tenants file it writes) and what it makes of the pod's fate. tests/e2e/test_real_node_fleet.py
runs a warm trainer for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster
WARM = "loraplex.dev/warm-trainer"


def base_model(workers: int) -> dict[str, Any]:
    return {"model": {"uri": "/models/tiny"}, "resources": {"gpu": 8}, "replicas": {"min": workers}}


def training_job(priority: int = 0, rank: int = 8) -> dict[str, Any]:
    return {
        "baseModel": "bm",
        "dataset": {"uri": "file:///data/train.jsonl"},
        "output": {"adapterName": "out"},
        "training": {"steps": 100},
        "lora": {"rank": rank},
        "resources": {"gpu": 8},
        "priority": priority,
    }


@pytest.fixture
def operator(
    local_cluster: LocalCluster,
    namespace: str,
    tmp_path: Path,
    training_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OperatorProcess]:
    """The operator with at most three tenants per warm trainer."""
    monkeypatch.setenv("LORAPLEX_TRAINING_MAX_TENANTS", "3")
    process = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    yield process
    process.stop()


def statuses(kube: Any, namespace: str) -> dict[str, dict[str, Any]]:
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs"
    )
    return {item["metadata"]["name"]: item.get("status") or {} for item in listed["items"]}


def trainers(kube: Any, namespace: str) -> dict[str, list[str]]:
    """Each warm trainer's tenants, as its tenants file lists them."""
    maps = client.CoreV1Api(kube).list_namespaced_config_map(namespace, label_selector=WARM).items
    return {
        m.metadata.name: [t["name"] for t in yaml.safe_load(m.data["tenants.yaml"])["tenants"]] for m in maps
    }


def trainer_pods(kube: Any, namespace: str) -> list[Any]:
    return client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=WARM).items


def running_workers(kube: Any, namespace: str) -> int:
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=worker"
    )
    return sum(1 for p in pods.items if p.status.phase == "Running" and p.spec.node_name)


def placed(kube: Any, namespace: str, names: set[str]) -> dict[str, str] | None:
    """job -> warm trainer, once every job in `names` is Running in one."""
    seen = statuses(kube, namespace)
    where = {n: (seen.get(n, {}).get("placement") or {}).get("trainer") for n in names}
    running = all(seen.get(n, {}).get("phase") == "Running" for n in names)
    return where if running and all(where.values()) else None  # type: ignore[return-value]


def two_tenants_on_the_free_node(kube: Any, namespace: str) -> str:
    """Serving fills three of the four nodes; jobs a and b join one warm trainer on the fourth: its name."""
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", base_model(workers=3))
    wait_until(lambda: running_workers(kube, namespace) == 3, 60, "3 serving workers")
    for name in ("a", "b"):
        create_object(kube, namespace, "trainingjobs", "TrainingJob", name, training_job())
    where = wait_until(lambda: placed(kube, namespace, {"a", "b"}), 30, "a and b in a warm trainer")
    (trainer,) = set(where.values())
    return trainer


def test_jobs_join_one_warm_trainer_up_to_its_capacity_and_a_deleted_job_leaves_it(
    kube: Any, namespace: str, operator: OperatorProcess, store: str
) -> None:
    custom = client.CustomObjectsApi(kube)
    trainer = two_tenants_on_the_free_node(kube, namespace)
    assert wait_until(lambda: trainers(kube, namespace).get(trainer) == ["a", "b"], 30, "tenants file")
    pod = wait_until(
        lambda: next((p for p in trainer_pods(kube, namespace) if p.status.phase == "Running"), None),
        30,
        "the warm trainer's pod running",
    )
    assert pod.spec.priority_class_name == "loraplex-trainer"
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"  # once, for both tenants
    config = client.CoreV1Api(kube).read_namespaced_config_map(trainer, namespace)
    tenants = {t["name"]: t for t in yaml.safe_load(config.data["tenants.yaml"])["tenants"]}
    uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", "a")["metadata"][
        "uid"
    ]
    assert tenants["a"]["checkpointUri"] == f"{store}/checkpoints/{namespace}/{uid}/g1"
    assert yaml.safe_load(config.data["trainer.yaml"])["tenantsFile"] == "/etc/loraplex/tenants.yaml"

    # c joins the running trainer (its third and last seat); d, beyond its capacity, needs a trainer
    # of its own, which finds no free GPUs: it waits.
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "c", training_job())
    wait_until(lambda: trainers(kube, namespace).get(trainer) == ["a", "b", "c"], 30, "c joined")
    assert placed(kube, namespace, {"c"}) == {"c": trainer}
    # The pod is nudged (annotated with the new file's hash) so the kubelet updates its mounted
    # tenants file now rather than at its next periodic sync.
    nudged = client.CoreV1Api(kube).read_namespaced_config_map(trainer, namespace).metadata.annotations
    wait_until(
        lambda: (
            (trainer_pods(kube, namespace)[0].metadata.annotations or {}).get("loraplex.dev/tenants")
            == nudged["loraplex.dev/content-hash"]
        ),
        30,
        "the trainer pod annotated with its tenants' hash",
    )
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "d", training_job())
    queued = wait_until(
        lambda: (s := statuses(kube, namespace).get("d", {})).get("phase") == "Queued" and s, 30, "d queued"
    )
    assert next(c for c in queued["conditions"] if c["type"] == "Ready")["reason"] == "WaitingForCapacity"

    # A deleted job leaves at once; its seat goes to d.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", "b")
    wait_until(lambda: trainers(kube, namespace).get(trainer) == ["a", "c", "d"], 30, "b left, d joined")
    assert len(trainer_pods(kube, namespace)) == 1  # one pod, one base model load, for all of them
    wait_until(
        lambda: (
            operator.metrics().get("loraplex_training_warm_tenants") == 3
            and operator.metrics().get("loraplex_training_warm_trainers") == 1
        ),
        30,
        "the warm trainer metrics",
    )
    events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="involvedObject.name=d")
    assert any(e.reason == "Admitted" and trainer in e.message for e in events.items)


def test_a_preempted_warm_trainer_requeues_every_tenant_and_they_resume_together_elsewhere(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(kube)
    first = two_tenants_on_the_free_node(kube, namespace)
    wait_until(lambda: any(p.status.phase == "Running" for p in trainer_pods(kube, namespace)), 30, "pod")
    checkpoints = {n: s["checkpointUri"] for n, s in statuses(kube, namespace).items()}

    # Serving takes the node back: the scheduler preempts the warm trainer's pod; both tenants requeue.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "bm", {"spec": {"replicas": {"min": 4}}}
    )
    seen: dict[str, set[str]] = {"a": set(), "b": set()}

    def requeued() -> bool:
        now = statuses(kube, namespace)
        for name in seen:
            seen[name].add(str(now[name].get("phase")))
        return all(now[n].get("phase") == "Queued" and now[n].get("attempts") == 1 for n in seen)

    wait_until(requeued, 60, "both tenants preempted and re-queued", interval=0.05)
    assert all("Preempted" in phases for phases in seen.values())
    assert {n: s["checkpointUri"] for n, s in statuses(kube, namespace).items()} == checkpoints

    # Serving shrinks again: both resume, together, in a new warm trainer, from the same checkpoints.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "bm", {"spec": {"replicas": {"min": 3}}}
    )
    second = set(wait_until(lambda: placed(kube, namespace, {"a", "b"}), 90, "a and b placed again").values())
    (trainer,) = second
    assert trainer != first
    wait_until(lambda: trainers(kube, namespace).get(trainer) == ["a", "b"], 30, "the new tenants file")
    assert {n: s["checkpointUri"] for n, s in statuses(kube, namespace).items()} == checkpoints
    assert operator.metrics()["loraplex_training_preemptions_total"] >= 2

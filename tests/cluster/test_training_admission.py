"""TrainingJobs run only in the GPUs serving leaves free, by priority, and give way when serving grows.

Real kube-apiserver, scheduler and Job controller; KWOK GPU nodes (4 x 8 GPUs): trainer pods are
really scheduled, and really preempted by the scheduler when a serving worker needs their GPUs.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.trainer_pods import trainer_pods
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster
GPU = "nvidia.com/gpu"


def base_model(gpus: int, workers: int) -> dict[str, Any]:
    return {"model": {"uri": "/models/tiny"}, "resources": {"gpu": gpus}, "replicas": {"min": workers}}


def training_job(gpus: int, priority: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "baseModel": "bm",
        "dataset": {"uri": "file:///data/train.jsonl"},
        "output": {"adapterName": "out"},
        "training": {"steps": 100},
        "resources": {"gpu": gpus},
        "sharing": "dedicated",  # a trainer pod per attempt (warm trainers: test_warm_trainers.py)
        "priority": priority,
        **extra,
    }


def jobs(kube: Any, namespace: str) -> dict[str, dict[str, Any]]:
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs"
    )
    return {item["metadata"]["name"]: item.get("status") or {} for item in listed["items"]}


def in_phase(kube: Any, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    status = jobs(kube, namespace).get(name, {})
    return status if status.get("phase") == phase else None


def running_trainer(kube: Any, namespace: str, job: str) -> Any | None:
    return next((p for p in trainer_pods(kube, namespace, job) if p.status.phase == "Running"), None)


def reason(status: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def gpu_requests_by_node(kube: Any) -> dict[str, int]:
    """GPUs requested by every live pod in the cluster, per node."""
    held: dict[str, int] = {}
    for pod in client.CoreV1Api(kube).list_pod_for_all_namespaces().items:
        if not pod.spec.node_name or pod.status.phase in ("Succeeded", "Failed"):
            continue
        for container in pod.spec.containers:
            limits = (container.resources and container.resources.limits) or {}
            held[pod.spec.node_name] = held.get(pod.spec.node_name, 0) + int(limits.get(GPU, 0))
    return held


def running_workers(kube: Any, namespace: str) -> int:
    pods = (
        client.CoreV1Api(kube)
        .list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=worker")
        .items
    )
    return sum(1 for p in pods if p.status.phase == "Running" and p.spec.node_name)


def test_jobs_fill_only_what_serving_leaves_in_priority_order(
    kube: Any, namespace: str, trainer_operator: OperatorProcess
) -> None:
    # Serving wants every GPU (4 workers x 8). The jobs arrive before any worker exists: the
    # operator must hold back what the unscheduled workers need, so every job waits.
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", base_model(gpus=8, workers=4))
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "low", training_job(2, priority=0))
    for name in ("a", "b", "c", "d"):
        create_object(kube, namespace, "trainingjobs", "TrainingJob", name, training_job(2, priority=5))
    wait_until(lambda: running_workers(kube, namespace) == 4, 60, "all 4 serving workers running")

    def all_queued() -> dict[str, dict[str, Any]] | None:
        seen = jobs(kube, namespace)
        return seen if len(seen) == 5 and all(s.get("phase") == "Queued" for s in seen.values()) else None

    queued = wait_until(all_queued, 30, "every job queued")
    assert {reason(s) for s in queued.values()} == {"WaitingForCapacity"}
    assert not any(trainer_pods(kube, namespace, name) for name in queued)

    # Serving shrinks to 3 workers: one node's 8 GPUs come free. The four priority-5 jobs take
    # them; "low", although older, waits.
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "bm", {"spec": {"replicas": {"min": 3}}}
    )

    def settled() -> dict[str, dict[str, Any]] | None:
        seen = jobs(kube, namespace)
        running = [n for n, s in seen.items() if s.get("phase") == "Running"]
        return seen if len(running) == 4 else None

    seen = wait_until(settled, 60, "4 jobs running in the freed node")
    assert seen["low"]["phase"] == "Queued"
    assert reason(seen["low"]) == "WaitingForCapacity"
    nodes = {seen[n]["placement"]["node"] for n in ("a", "b", "c", "d")}
    assert len(nodes) == 1
    for name in ("a", "b", "c", "d"):
        pod = wait_until(lambda n=name: running_trainer(kube, namespace, n), 30, f"trainer of {name} running")
        assert pod.spec.node_name in nodes
        assert pod.spec.priority_class_name == "loraplex-trainer"
    allocatable = {
        n.metadata.name: int(n.status.allocatable[GPU]) for n in client.CoreV1Api(kube).list_node().items
    }
    for node, held in gpu_requests_by_node(kube).items():
        assert held <= allocatable[node]
    assert running_workers(kube, namespace) == 3
    assert jobs(kube, namespace)["low"]["phase"] == "Queued"
    samples = trainer_operator.metrics()
    assert samples['loraplex_training_jobs{phase="Running"}'] == 4
    assert samples["loraplex_training_admissions_total"] >= 4


def test_serving_scale_up_preempts_a_trainer_which_requeues(
    kube: Any, namespace: str, trainer_operator: OperatorProcess
) -> None:
    # Three 8-GPU workers fill three nodes; an 8-GPU job takes the fourth.
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", base_model(gpus=8, workers=3))
    wait_until(lambda: running_workers(kube, namespace) == 3, 60, "3 serving workers")
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "t", training_job(8))
    status = wait_until(lambda: in_phase(kube, namespace, "t", "Running"), 30, "job admitted")
    node = status["placement"]["node"]
    wait_until(lambda: running_trainer(kube, namespace, "t"), 30, "trainer pod running")

    # Serving scales up: the scheduler preempts the trainer pod (lower PriorityClass) for the 4th worker.
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "bm", {"spec": {"replicas": {"min": 4}}}
    )
    phases: list[str] = []

    def requeued() -> dict[str, Any] | None:
        current = jobs(kube, namespace)["t"]
        if not phases or phases[-1] != current.get("phase"):
            phases.append(str(current.get("phase")))
        return current if current.get("phase") == "Queued" and current.get("attempts") == 1 else None

    status = wait_until(requeued, 60, "job preempted and re-queued", interval=0.05)
    assert "Preempted" in phases
    assert reason(status) == "Requeued" or reason(status) == "WaitingForCapacity"
    assert status["checkpointUri"].endswith("/t")  # the next attempt resumes from the same folder
    wait_until(lambda: running_workers(kube, namespace) == 4, 60, "the 4th worker running on the freed node")
    events = (
        client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="involvedObject.name=t").items
    )
    assert any(e.reason == "Preempted" and node in e.message for e in events)
    assert trainer_operator.metrics()["loraplex_training_preemptions_total"] >= 1
    # No GPUs are left for it, so it stays queued rather than being admitted into serving's capacity.
    assert jobs(kube, namespace)["t"]["phase"] == "Queued"


def test_a_job_in_a_kueue_queue_waits_suspended_until_kueue_lets_it_run(
    kube: Any, namespace: str, trainer_operator: OperatorProcess
) -> None:
    # No Kueue here: the test plays it, by unsuspending the Job as Kueue does when it admits one.
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", base_model(gpus=1, workers=1))
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "k", training_job(1, queueName="team-a"))
    batch = client.BatchV1Api(kube)
    job = wait_until(
        lambda: next(iter(batch.list_namespaced_job(namespace).items), None), 30, "suspended Job"
    )
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kubernetes.io/hostname" not in (job.spec.template.spec.node_selector or {})
    status = wait_until(lambda: in_phase(kube, namespace, "k", "Queued"), 30, "job queued")
    assert reason(status) == "WaitingForKueue"
    assert trainer_pods(kube, namespace, "k") == []

    batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": False}})
    pod = wait_until(lambda: running_trainer(kube, namespace, "k"), 30, "trainer running once unsuspended")
    placed = {"node": pod.spec.node_name, "pod": pod.metadata.name}
    wait_until(
        lambda: (in_phase(kube, namespace, "k", "Running") or {}).get("placement") == placed,
        30,
        "job running on the pod's node",
    )

"""What the local fleet runs behind a pod, read from the pod spec the operator wrote (no cluster needed)."""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.e2e.local_workers import RouterPod, TrainerPod, WorkerPod, pod_processes
from loraplex.operator.fleet import BaseModelRef, router_deployment, worker_statefulset
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_workload import TrainingJobRef, trainer_job

REF = BaseModelRef("tiny-llama", "demo", "uid-1")
SPEC = BaseModelSpec.model_validate(
    {
        "model": {"uri": "/models/tiny", "servedName": "tiny"},
        "engine": {"maxLoras": 2, "maxCpuLoras": 4, "maxLoraRank": 16},
        "adapterCatalog": {"uriTemplate": "https://localhost:8443/catalog/{adapter}.tar"},
    }
)


def pod_from(
    template: dict[str, Any], name: str, phase: str = "Running", ip: str | None = "127.1.1.1"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}", **template["metadata"]},
        "spec": template["spec"],
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def test_a_running_worker_pod_gets_vllm_and_agent_with_its_own_settings() -> None:
    template = worker_statefulset(REF, SPEC, OperatorSettings(), 1)["spec"]["template"]
    assert pod_processes(pod_from(template, "tiny-llama-worker-0")) == WorkerPod(
        name="tiny-llama-worker-0", namespace="demo", ip="127.1.1.1", served_name="tiny",
        max_loras=2, max_cpu_loras=4, max_lora_rank=16,
        api_key_secret=("tiny-llama-vllm-api-key", "api-key"),
        catalog_template="https://localhost:8443/catalog/{adapter}.tar", base_model="tiny-llama",
    )  # fmt: skip


def test_a_router_pod_gets_a_router_following_the_cluster() -> None:
    template = router_deployment(REF, SPEC, OperatorSettings())["spec"]["template"]
    target = pod_processes(pod_from(template, "tiny-llama-router-abc"))
    assert isinstance(target, RouterPod)
    assert (target.base_model, target.served_name) == ("tiny-llama", "tiny")


def test_pods_not_running_or_without_an_ip_get_nothing() -> None:
    template = worker_statefulset(REF, SPEC, OperatorSettings(), 1)["spec"]["template"]
    assert pod_processes(pod_from(template, "w", phase="Pending")) is None
    assert pod_processes(pod_from(template, "w", ip=None)) is None


def test_a_running_trainer_pod_gets_the_trainer_until_it_has_ended() -> None:
    job = TrainingJobSpec.model_validate(
        {
            "baseModel": "tiny-llama",
            "dataset": {"uri": "file:///tmp/data.jsonl"},
            "output": {"adapterName": "support-bot"},
            "training": {"steps": 3},
        }
    )
    ref = TrainingJobRef("retrain", "demo", "uid-tj", 1)
    settings = OperatorSettings(training_dataset_roots=("file:///tmp",))
    template = trainer_job(ref, job, SPEC, settings, attempt=0, node="n0")["spec"]["template"]
    target = pod_processes(pod_from(template, "retrain-a0-xyz"))
    assert target == TrainerPod(
        name="retrain-a0-xyz", namespace="demo", config_map="retrain-a0", training_job="retrain",
        image=OperatorSettings().trainer_image,
    )  # fmt: skip
    ended = pod_from(template, "retrain-a0-xyz")
    ended["status"]["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}]
    assert pod_processes(ended) is None

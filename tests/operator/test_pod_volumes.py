"""A claim that holds the model, the adapters, the data and the store is one volume of the pod.

A pod that names one PersistentVolumeClaim in two volumes never starts on a
real kubelet (its volume set-up times out), so the operator mounts each claim
once and points every mount at it.
"""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.fleet import BaseModelRef, worker_statefulset
from loraplex.operator.pod_volumes import merge_claim_volumes
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_workload import TrainingJobRef, trainer_job

ONE_CLAIM = BaseModelSpec.model_validate(
    {
        "model": {"uri": "pvc://store/models/tiny"},
        "adapterVolumes": ["store"],
        "adapterCatalog": {"uriTemplate": "pvc://store/catalog/{adapter}"},
    }
)


def claims(pod_spec: dict[str, Any]) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v
    ]


def mounts(pod_spec: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(container, mount path) -> volume name."""
    return {
        (c["name"], m["mountPath"]): m["name"]
        for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
        for m in c.get("volumeMounts", [])
    }


def test_a_worker_whose_model_and_adapters_share_a_claim_mounts_it_once_read_only() -> None:
    pod = worker_statefulset(BaseModelRef("tiny", "ns", "u"), ONE_CLAIM, OperatorSettings(), 1)
    pod_spec = pod["spec"]["template"]["spec"]
    assert claims(pod_spec) == ["store"]
    volume = next(v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    by_path = mounts(pod_spec)
    assert by_path[("vllm", "/models")] == by_path[("agent", "/mnt/pvc/store")] == volume["name"]


def test_a_trainer_reading_and_writing_one_claim_mounts_it_once_writable() -> None:
    spec = TrainingJobSpec.model_validate(
        {
            "baseModel": "tiny",
            "dataset": {"uri": "pvc://store/datasets/tickets.jsonl"},
            "output": {"adapterName": "bot"},
            "training": {"steps": 10},
        }
    )
    settings = OperatorSettings(
        training_store="pvc://store", training_dataset_roots=("pvc://store/datasets",)
    )
    job = trainer_job(TrainingJobRef("bot-retrain", "ns", "u", 1), spec, ONE_CLAIM, settings, 0, None)
    pod_spec = job["spec"]["template"]["spec"]
    assert claims(pod_spec) == ["store"]
    volume = next(v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"].get("readOnly", False) is False
    assert len(set(mounts(pod_spec).values()) & {volume["name"]}) == 1
    named = {name for name in mounts(pod_spec).values()}
    assert named <= {v["name"] for v in pod_spec["volumes"]}


def test_distinct_claims_and_other_volumes_are_left_as_they_are() -> None:
    pod_spec = {
        "volumes": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "one", "readOnly": True}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "two"}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "containers": [{"name": "c", "volumeMounts": [{"name": "a", "mountPath": "/a"}]}],
    }
    assert merge_claim_volumes({**pod_spec}) == pod_spec

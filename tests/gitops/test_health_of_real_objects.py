"""Argo CD's health.lua and kstatus on objects the real operator reconciled on the real apiserver.

Every case of the health_test.yaml files is produced here for real (KWOK GPU nodes; the test ends
trainer pods as the kubelet would), then checked as the committed fixtures are. With
LORAPLEX_WRITE_GITOPS_FIXTURES=1 the objects are also written over the committed fixtures, which is
how those are made: `LORAPLEX_WRITE_GITOPS_FIXTURES=1 pytest tests/gitops/test_health_of_real_objects.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from loraplex.api import GROUP, VERSION
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.priority_classes import ensure_trainer_priority_class
from loraplex.e2e.trainer_pods import end_trainer_pod, summary, trainer_pods
from loraplex.e2e.waiting import wait_until
from tests.gitops.health import Case, all_cases, argo_health, as_fixture, kstatus

pytestmark = pytest.mark.cluster
PLURALS = {"BaseModel": "basemodels", "LoRAAdapter": "loraadapters", "TrainingJob": "trainingjobs"}
SHA = "a" * 64


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def current(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


class Objects:
    """Reads and waits for the test namespace's loraplex objects."""

    def __init__(self, kube: Any, namespace: str) -> None:
        self.api = client.CustomObjectsApi(kube)
        self.kube = kube
        self.namespace = namespace

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name
        )
        return found

    def create(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        create_object(self.kube, self.namespace, PLURALS[kind], kind, name, spec)

    def patch(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name, {"spec": spec}
        )

    def wait(self, kind: str, name: str, test: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            obj = self.get(kind, name)
            return obj if current(obj) and test(obj) else None

        return wait_until(probe, 60, f"{kind} {name}: {what}")

    def report_loaded(self, worker: str, adapter: str) -> None:
        """Write the WorkerPlacement status its agent writes once it holds `adapter` in a GPU slot."""
        report = {
            "adapters": [{"name": adapter, "sha256": SHA, "tier": "GPU"}],
            "gpuSlots": 4,
            "cpuSlots": 16,
        }
        wait_until(
            lambda: self.api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workerplacements", field_selector=f"metadata.name={worker}"
            )["items"],
            60,
            f"WorkerPlacement {worker}",
        )
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "workerplacements", worker, {"status": report}
        )

    def first_reconciling(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the object and return the first status the operator writes with Reconciling=True:
        the watch from the creation's resourceVersion sees every write, however short-lived."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        created = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], body
        )
        stream = watch.Watch().stream(
            self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURALS[kind],
            field_selector=f"metadata.name={name}", resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=60,
        )  # fmt: skip
        for event in stream:
            obj: dict[str, Any] = event["object"]
            if current(obj) and condition(obj, "Reconciling").get("status") == "True":
                return obj
        raise AssertionError(f"{kind} {name}: no status with Reconciling=True within 60 s")


def training_job(base: str = "bm", gpu: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "baseModel": base,
        "dataset": {"uri": "file:///data/train.jsonl"},
        "output": {"adapterName": "out"},
        "training": {"steps": 100},
        "resources": {"gpu": gpu},
        "sharing": "dedicated",  # its trainer pod ends the way the tests end KWOK pods (trainer_pods)
        **extra,
    }


def adapter(base: str = "bm", replicas: int = 1) -> dict[str, Any]:
    return {
        "baseModel": base,
        "source": {"uri": "s3://adapters/a/", "sha256": SHA},
        "rank": 8,
        "replicas": replicas,
    }


def ready_is(status: str, reason: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def test(obj: dict[str, Any]) -> bool:
        ready = condition(obj, "Ready")
        return ready.get("status") == status and (reason is None or ready.get("reason") == reason)

    return test


def running_trainer(kube: Any, namespace: str, job: str) -> str:
    pod = wait_until(
        lambda: next((p for p in trainer_pods(kube, namespace, job) if p.status.phase == "Running"), None),
        60,
        f"trainer pod of {job} running",
    )
    return str(pod.metadata.name)


def produce(
    objects: Objects, kube: Any, namespace: str, operator: OperatorProcess, store: str
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case's object, as the operator left it."""
    made: dict[tuple[str, str], dict[str, Any]] = {}
    bm = {"model": {"uri": "/models/tiny"}, "replicas": {"min": 1}}
    made["BaseModel", "reconciling"] = objects.first_reconciling("BaseModel", "bm", bm)
    made["BaseModel", "ready"] = objects.wait("BaseModel", "bm", ready_is("True"), "Ready")
    objects.create("BaseModel", "huge", {"model": {"uri": "/models/huge"}, "resources": {"gpu": 16}})
    made["BaseModel", "stalled"] = objects.wait(
        "BaseModel", "huge", ready_is("False", "InsufficientGPU"), "InsufficientGPU"
    )

    objects.create("LoRAAdapter", "sql", adapter(replicas=1))  # KWOK workers run no agent to load it
    made["LoRAAdapter", "reconciling"] = objects.wait(
        "LoRAAdapter", "sql", ready_is("False", "Loading"), "Loading"
    )
    objects.report_loaded("bm-worker-0", "sql")  # ... so the test reports it loaded, as the agent would
    made["LoRAAdapter", "ready"] = objects.wait("LoRAAdapter", "sql", ready_is("True"), "Ready")
    objects.create("LoRAAdapter", "orphan", adapter(base="missing"))
    made["LoRAAdapter", "stalled"] = objects.wait(
        "LoRAAdapter", "orphan", ready_is("False", "UnknownBaseModel"), "UnknownBaseModel"
    )
    objects.create("LoRAAdapter", "too-many", adapter(replicas=3))  # one worker holds one copy
    made["LoRAAdapter", "short-of-capacity"] = objects.wait(
        "LoRAAdapter", "too-many", ready_is("False", "InsufficientCapacity"), "InsufficientCapacity"
    )

    def phase(name: str) -> Callable[[dict[str, Any]], bool]:
        return lambda obj: (obj.get("status") or {}).get("phase") == name

    objects.create("TrainingJob", "too-big", training_job(gpu=16))
    made["TrainingJob", "queued"] = objects.wait(
        "TrainingJob", "too-big", ready_is("False", "WaitingForCapacity"), "waiting for capacity"
    )
    objects.create("TrainingJob", "kueued", training_job(queueName="team-a"))
    made["TrainingJob", "suspended"] = objects.wait(
        "TrainingJob", "kueued", ready_is("False", "WaitingForKueue"), "held by Kueue"
    )
    objects.create("TrainingJob", "nightly", training_job(schedule="@daily"))
    pod = running_trainer(kube, namespace, "nightly")
    made["TrainingJob", "running"] = objects.wait("TrainingJob", "nightly", phase("Running"), "Running")
    published = f"{store}/adapters/{namespace}/out/{SHA}"
    result = summary(0, "nightly", phase="Succeeded", step=100, totalSteps=100, uri=published, sha256=SHA)
    end_trainer_pod(kube, namespace, pod, 0, result)
    made["TrainingJob", "succeeded-scheduled"] = objects.wait(
        "TrainingJob",
        "nightly",
        lambda obj: phase("Succeeded")(obj) and "nextRunTime" in obj["status"],
        "done",
    )
    objects.create("TrainingJob", "orphan", training_job(base="missing"))
    made["TrainingJob", "failed"] = objects.wait("TrainingJob", "orphan", phase("Failed"), "Failed")

    operator.stop()  # nobody observes the next generation: the statuses stay one behind
    for kind, name, spec in (
        ("BaseModel", "bm", {"replicas": {"min": 2}}),
        ("LoRAAdapter", "sql", {"priority": 5}),
        ("TrainingJob", "nightly", {"priority": 5}),
    ):
        objects.patch(kind, name, spec)
        made[kind, "stale-generation"] = objects.get(kind, name)
    return made


def test_argo_cd_and_kstatus_read_what_the_operator_writes_as_the_cases_say(
    local_cluster: LocalCluster, kube: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_trainer_priority_class(kube)
    store = f"file://{tmp_path}/store"
    monkeypatch.setenv("LORAPLEX_TRAINING_STORE", store)
    monkeypatch.setenv("LORAPLEX_TRAINING_DATASET_ROOTS", "file:///data")
    operator = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        made = produce(Objects(kube, namespace), kube, namespace, operator, store)
    finally:
        operator.stop()
    cases: list[Case] = all_cases()
    assert sorted(made) == sorted((case.kind, case.name) for case in cases)
    fixtures = [as_fixture(made[case.kind, case.name]) for case in cases]
    said = {
        (case.kind, case.name): (argo_health(fixture)["status"], computed["status"])
        for case, fixture, computed in zip(cases, fixtures, kstatus(fixtures), strict=True)
    }
    assert said == {(case.kind, case.name): (case.status, case.kstatus) for case in cases}
    if os.environ.get("LORAPLEX_WRITE_GITOPS_FIXTURES"):
        for case, fixture in zip(cases, fixtures, strict=True):
            case.path.write_text(yaml.safe_dump(fixture, sort_keys=False, width=100))

"""What a TrainingJob ends as: bad input refused with a reason, trainer failures, and a published revision.

KWOK runs no trainer, so the tests end each trainer pod as the kubelet would after `loraplex
trainer` exits: its exit code and the result summary it writes to /dev/termination-log.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api import GROUP, VERSION
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.trainer_pods import end_trainer_pod, summary, trainer_pods
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster


def training_job(base: str = "bm", rank: int = 8, adapter: str = "sql") -> dict[str, Any]:
    return {
        "baseModel": base,
        "dataset": {"uri": "file:///data/train.jsonl"},
        "output": {"adapterName": adapter, "replicas": 2},
        "training": {"steps": 100},
        "lora": {"rank": rank},
        "resources": {"gpu": 1},
        "sharing": "dedicated",  # a trainer pod per attempt (warm trainers: test_warm_trainers.py)
    }


def status_of(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", name
    )
    return dict(body.get("status") or {})


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def ended(kube: Any, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    status = status_of(kube, namespace, name)
    return status if status.get("phase") == phase else None


def adapter(kube: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(
            client.CustomObjectsApi(kube).get_namespaced_custom_object(
                GROUP, VERSION, namespace, "loraadapters", name
            )
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def running_pod(kube: Any, namespace: str, job: str) -> str:
    pod = wait_until(
        lambda: next((p for p in trainer_pods(kube, namespace, job) if p.status.phase == "Running"), None),
        30,
        f"trainer pod of {job} running",
    )
    return str(pod.metadata.name)


def warnings_for(kube: Any, namespace: str, name: str) -> list[Any]:
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e for e in events.items if e.type == "Warning"]


@pytest.fixture
def base_model(kube: Any, namespace: str) -> str:
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 1}, "engine": {"maxLoraRank": 16},
    })  # fmt: skip
    return "bm"


def test_bad_input_fails_with_a_reason_an_event_and_no_trainer(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str
) -> None:
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "nobase", training_job(base="missing"))
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "toobig", training_job(rank=64))
    nobase = wait_until(lambda: ended(kube, namespace, "nobase", "Failed"), 30, "unknown base model refused")
    toobig = wait_until(
        lambda: ended(kube, namespace, "toobig", "Failed"), 30, "rank above the limit refused"
    )
    assert (ready(nobase)["status"], ready(nobase)["reason"]) == ("False", "UnknownBaseModel")
    assert "create it or fix the name" in ready(nobase)["message"]
    assert ready(toobig)["reason"] == "RankTooHigh"
    assert "maxLoraRank 16" in ready(toobig)["message"]
    for name in ("nobase", "toobig"):  # kopf posts Events a moment after the status it wrote
        wait_until(lambda n=name: warnings_for(kube, namespace, n), 30, f"a warning on {name}")
    assert [e.reason for e in warnings_for(kube, namespace, "nobase")] == ["UnknownBaseModel"]
    assert [e.reason for e in warnings_for(kube, namespace, "toobig")] == ["RankTooHigh"]
    assert trainer_pods(kube, namespace, "nobase") == []
    assert client.BatchV1Api(kube).list_namespaced_job(namespace).items == []

    # Creating the missing BaseModel lets the job run; no more warnings meanwhile (no retry storm).
    create_object(kube, namespace, "basemodels", "BaseModel", "missing", {"model": {"uri": "/models/tiny"}})
    wait_until(
        lambda: ended(kube, namespace, "nobase", "Running"), 30, "job admitted once its BaseModel exists"
    )
    assert len(warnings_for(kube, namespace, "nobase")) == 1


def test_a_trainer_failure_fails_the_job_with_its_reason_and_publishes_nothing(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str
) -> None:
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "nan", training_job(adapter="nan-out"))
    pod = running_pod(kube, namespace, "nan")
    result = summary(3, "nan", phase="Failed", reason="NonFiniteLoss", message="loss is nan at step 42")
    end_trainer_pod(kube, namespace, pod, 3, result)
    status = wait_until(lambda: ended(kube, namespace, "nan", "Failed"), 30, "job failed")
    assert ready(status)["reason"] == "NonFiniteLoss"
    assert "step 42" in ready(status)["message"]
    assert next(c for c in status["conditions"] if c["type"] == "Stalled")["status"] == "True"
    assert adapter(kube, namespace, "nan-out") is None
    assert len(trainer_pods(kube, namespace, "nan")) == 1  # not retried


def test_success_creates_the_output_adapter_and_a_retrain_updates_its_revision(
    kube: Any,
    namespace: str,
    trainer_operator: OperatorProcess,
    base_model: str,
    store: str,
) -> None:
    first, second = "1" * 64, "2" * 64
    for job, digest in (("v1", first), ("v2", second)):
        create_object(kube, namespace, "trainingjobs", "TrainingJob", job, training_job(adapter="sql"))
        pod = running_pod(kube, namespace, job)
        published = f"{store}/adapters/{namespace}/sql/{digest}"
        result = summary(0, job, phase="Succeeded", step=100, totalSteps=100, uri=published, sha256=digest)
        end_trainer_pod(kube, namespace, pod, 0, result)
        status = wait_until(lambda j=job: ended(kube, namespace, j, "Succeeded"), 30, f"{job} succeeded")
        assert status["adapterRevision"] == digest
        # KWOK pods have no log to read: the operator's final progress is the trainer's summary's.
        assert status["progress"] == {"step": 100, "totalSteps": 100}
        assert ready(status)["status"] == "True"
        out = wait_until(
            lambda d=digest: (
                (a := adapter(kube, namespace, "sql")) and a["spec"]["source"]["sha256"] == d and a
            ),
            30,
            f"adapter at revision {digest[:4]}",
        )
        assert out["spec"]["source"]["uri"] == published
        assert out["spec"]["baseModel"] == "bm"
        assert (out["spec"]["rank"], out["spec"]["replicas"]) == (8, 2)
    samples = trainer_operator.metrics()
    assert samples['loraplex_training_jobs{phase="Succeeded"}'] == 2


THEIRS = {"baseModel": "other", "source": {"uri": "s3://adapters/sql/v1/", "sha256": "f" * 64}, "rank": 8}


def test_a_job_whose_output_adapter_is_another_base_models_fails_before_training(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str
) -> None:
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "sql", THEIRS)
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "mine", training_job(adapter="sql"))
    status = wait_until(lambda: ended(kube, namespace, "mine", "Failed"), 30, "job refused")
    assert ready(status)["reason"] == "OutputAdapterOfAnotherBaseModel"
    assert "belongs to BaseModel other" in ready(status)["message"]
    warned = wait_until(
        lambda: warnings_for(kube, namespace, "mine"), 10, "a Warning event"
    )  # posted after the status
    assert [e.reason for e in warned] == ["OutputAdapterOfAnotherBaseModel"]
    assert trainer_pods(kube, namespace, "mine") == []
    assert client.BatchV1Api(kube).list_namespaced_job(namespace).items == []


def test_a_revision_is_not_published_to_an_adapter_of_another_base_model(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str, store: str
) -> None:
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "mine", training_job(adapter="sql"))
    pod = running_pod(kube, namespace, "mine")
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "sql", THEIRS)  # made while it trained
    digest = "3" * 64
    published = f"{store}/adapters/{namespace}/sql/{digest}"
    result = summary(0, "mine", phase="Succeeded", step=100, totalSteps=100, uri=published, sha256=digest)
    end_trainer_pod(kube, namespace, pod, 0, result)
    status = wait_until(lambda: ended(kube, namespace, "mine", "Failed"), 30, "publishing refused")
    assert ready(status)["reason"] == "OutputAdapterOfAnotherBaseModel"
    assert published in ready(status)["message"]
    assert "adapterRevision" not in status
    warned = wait_until(
        lambda: warnings_for(kube, namespace, "mine"), 10, "a Warning event"
    )  # posted after the status
    assert [e.reason for e in warned] == ["OutputAdapterOfAnotherBaseModel"]
    kept = adapter(kube, namespace, "sql")
    assert kept is not None
    assert kept["spec"] == {**THEIRS, "replicas": 1, "policy": "OnDemand", "priority": 0}


def run_pod(kube: Any, namespace: str, job: str, run: int) -> Any:
    """The running trainer pod of a scheduled job's first run (0) or second (1)."""
    return wait_until(
        lambda: next(
            (
                p for p in trainer_pods(kube, namespace, job)
                if p.status.phase == "Running" and (run == 0) != ("-r1-" in p.metadata.name)
            ),
            None,
        ),
        30,
        f"trainer pod of run {run} running",
    )  # fmt: skip


def test_a_scheduled_job_runs_again_when_due_and_publishes_a_new_revision(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str, store: str
) -> None:
    custom = client.CustomObjectsApi(kube)
    spec = {**training_job(adapter="nightly"), "schedule": "@daily"}
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "nightly", spec)
    for run, digest in ((0, "3" * 64), (1, "4" * 64)):
        pod = run_pod(kube, namespace, "nightly", run)
        if run == 1:  # the status patch lands after the handler made the run's Job: its pod may be first
            wait_until(
                lambda: status_of(kube, namespace, "nightly")["checkpointUri"].endswith("-r1/nightly"),
                10,
                "the second run's checkpoints in status",
            )
        published = f"{store}/adapters/{namespace}/nightly/{digest}"
        result = summary(0, "nightly", phase="Succeeded", uri=published, sha256=digest)
        end_trainer_pod(kube, namespace, pod.metadata.name, 0, result)
        status = wait_until(
            lambda d=digest: (
                (s := ended(kube, namespace, "nightly", "Succeeded"))
                and s.get("adapterRevision") == d
                and s.get("nextRunTime")
                and s
            ),
            30,
            f"run {run} succeeded with its next run time",
        )
        assert int(status.get("run") or 0) == run
        wait_until(
            lambda d=digest: (
                (a := adapter(kube, namespace, "nightly")) and a["spec"]["source"]["sha256"] == d
            ),
            30,
            f"adapter at the revision of run {run}",
        )
        if run == 0:  # make the daily run due now rather than at midnight
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "trainingjobs", "nightly",
                {"status": {"nextRunTime": "2020-01-01T00:00:00Z"}},
            )  # fmt: skip
    assert len(trainer_pods(kube, namespace, "nightly")) == 2  # one per run, no double start
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector="involvedObject.name=nightly"
    )
    assert [e.reason for e in events.items].count("ScheduledRun") == 1


def test_a_scheduled_run_with_init_from_published_starts_from_the_last_published_revision(
    kube: Any, namespace: str, trainer_operator: OperatorProcess, base_model: str, store: str
) -> None:
    custom, core = client.CustomObjectsApi(kube), client.CoreV1Api(kube)
    spec = {**training_job(adapter="continual"), "schedule": "@daily", "initFrom": "published"}
    create_object(kube, namespace, "trainingjobs", "TrainingJob", "continual", spec)
    starts: list[str | None] = []
    for run, digest in ((0, "5" * 64), (1, "6" * 64)):
        pod = run_pod(kube, namespace, "continual", run)
        attempt = pod.metadata.labels["job-name"]
        config = yaml.safe_load(core.read_namespaced_config_map(attempt, namespace).data["trainer.yaml"])
        starts.append(config["adapters"][0].get("initRevision"))
        assert status_of(kube, namespace, "continual").get("initRevision") == starts[-1]
        published = f"{store}/adapters/{namespace}/continual/{digest}"
        result = summary(0, "continual", phase="Succeeded", uri=published, sha256=digest)
        end_trainer_pod(kube, namespace, pod.metadata.name, 0, result)
        wait_until(
            lambda d=digest: (
                (a := adapter(kube, namespace, "continual")) and a["spec"]["source"]["sha256"] == d
            ),
            30,
            f"adapter at the revision of run {run}",
        )
        if run == 0:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "trainingjobs", "continual",
                {"status": {"nextRunTime": "2020-01-01T00:00:00Z"}},
            )  # fmt: skip
    # The first run had nothing published to start from; the second starts from the first's revision.
    assert starts == [None, "5" * 64]

"""The TrainingJob phase machine: validation, admission, preemption, results and failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_status import JobView, PodView, Step, output_refused, plan_training

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOTS = parse_roots(["file:///data"])
BASE = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}, "engine": {"maxLoraRank": 16}})
SPEC = TrainingJobSpec.model_validate(
    {
        "baseModel": "tiny",
        "dataset": {"uri": "file:///data/x.jsonl"},
        "output": {"adapterName": "sql"},
        "training": {"steps": 10},
        "lora": {"rank": 8},
    }
)


def plan(
    status: dict | None = None,  # type: ignore[type-arg]
    job: JobView | None = None,
    node: str | None = None,
    spec: TrainingJobSpec = SPEC,
    base: BaseModelSpec | None = BASE,
    generation: int = 1,
) -> Step:
    return plan_training(
        namespace="ns", name="tj", generation=generation, spec=spec, base=base, status=status or {},
        job=job, admitted_node=node, max_attempts=3, now=NOW, dataset_roots=ROOTS,
    )  # fmt: skip


def ready(step: Step) -> dict:  # type: ignore[type-arg]
    return next(c for c in step.status["conditions"] if c["type"] == "Ready")


def result(code: int, **entry: object) -> str:
    return json.dumps({"exitCode": code, "adapters": [{"name": "tj", **entry}]})


def test_unknown_base_model_fails_once_with_an_event_and_no_attempt() -> None:
    step = plan(base=None)
    assert step.status["phase"] == "Failed"
    assert ready(step)["reason"] == "UnknownBaseModel"
    assert "create it or fix the name" in ready(step)["message"]
    assert step.create_attempt is None
    assert len(step.events) == 1
    again = plan(step.status, base=None)
    assert again.events == ()
    assert again.status == step.status


def test_rank_above_the_base_models_limit_fails() -> None:
    spec = SPEC.model_copy(update={"lora": SPEC.lora.model_copy(update={"rank": 64})})
    step = plan(spec=spec)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", "RankTooHigh")
    assert "maxLoraRank" in ready(step)["message"]


def test_a_schedule_cron_cannot_read_fails_the_job_at_once_and_clears_when_fixed() -> None:
    spec = SPEC.model_copy(update={"schedule": "0 0 30 2 *"})  # admitted: the pattern cannot count days
    step = plan(spec=spec)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", "ScheduleInvalid")
    assert "spec.schedule" in ready(step)["message"]
    fixed = SPEC.model_copy(update={"schedule": "0 0 28 2 *"})
    assert plan(step.status, spec=fixed).status["phase"] == "Queued"


def test_a_validation_failure_clears_when_the_base_model_appears() -> None:
    failed = plan(base=None).status
    assert plan(failed).status["phase"] == "Queued"


def test_queued_until_admitted_then_running_with_an_attempt_on_the_node() -> None:
    queued = plan()
    assert (queued.status["phase"], ready(queued)["reason"]) == ("Queued", "WaitingForCapacity")
    admitted = plan(queued.status, node="n1")
    assert admitted.status["phase"] == "Running"
    assert (admitted.create_attempt, admitted.node) == (0, "n1")
    assert admitted.status["placement"] == {"node": "n1"}


def test_a_kueue_job_gets_a_suspended_attempt_at_once() -> None:
    spec = SPEC.model_copy(update={"queue_name": "team-a"})
    step = plan(spec=spec)
    assert (step.create_attempt, step.node) == (0, None)
    assert ready(step)["reason"] == "WaitingForKueue"


def running(pod: PodView | None = None, **job: object) -> tuple[dict, JobView]:  # type: ignore[type-arg]
    status = plan(plan().status, node="n1").status
    pods = (pod,) if pod else ()
    return status, JobView("tj-a0", "n1", pods=pods, **job)  # type: ignore[arg-type]


def test_a_running_pod_makes_the_job_training() -> None:
    status, job = running(PodView("tj-a0-x", "n1", "Running"))
    step = plan(status, job)
    assert step.status["phase"] == "Running"
    assert step.status["placement"] == {"node": "n1", "pod": "tj-a0-x"}
    assert ready(step)["reason"] == "Training"
    assert step.create_attempt is None


@pytest.mark.parametrize(
    ("pod", "job"),
    [
        (PodView("p", "n1", "Failed", disrupted=True, exit_code=137), {"failed": True}),
        (PodView("p", "n1", "Failed", exit_code=75), {"failed": True}),
        (None, {"failed": True, "failure_message": "Pod ns/p has condition DisruptionTarget matching"}),
    ],
)
def test_preemption_shows_preempted_then_requeues_with_one_more_attempt(
    pod: PodView | None,
    job: dict,  # type: ignore[type-arg]
) -> None:
    status, view = running(pod, **job)
    preempted = plan(status, view)
    assert preempted.status["phase"] == "Preempted"
    assert preempted.status["attempts"] == 1
    assert [e.reason for e in preempted.events] == ["Preempted"]
    requeued = plan(preempted.status, None)
    assert (requeued.status["phase"], ready(requeued)["reason"]) == ("Queued", "Requeued")
    readmitted = plan({**requeued.status, "conditions": plan().status["conditions"]}, None, node="n2")
    assert readmitted.create_attempt == 1


def test_success_publishes_the_trainers_revision() -> None:
    digest = "a" * 64
    message = result(0, phase="Succeeded", uri="file:///store/adapters/ns/sql/" + digest, sha256=digest)
    status, view = running(PodView("p", "n1", "Succeeded", exit_code=0, message=message), complete=True)
    step = plan(status, view)
    assert step.status["phase"] == "Succeeded"
    assert step.publish is not None
    assert step.publish.sha256 == digest
    assert step.status["adapterRevision"] == digest
    assert plan(step.status, view).publish is None  # terminal: nothing more happens


def test_a_finished_attempt_shows_the_last_step_of_its_summary_keeping_the_logs_loss() -> None:
    digest = "a" * 64
    message = result(0, phase="Succeeded", step=10, totalSteps=10, uri="file:///s/" + digest, sha256=digest)
    status, view = running(PodView("p", "n1", "Succeeded", exit_code=0, message=message), complete=True)
    seen = {**status, "progress": {"step": 7, "totalSteps": 10, "loss": 0.5, "tokensPerSecond": 9.0}}
    step = plan(seen, view)
    assert step.status["progress"] == {"step": 10, "totalSteps": 10, "loss": 0.5, "tokensPerSecond": 9.0}
    never_read = plan(status, view)  # no log was ever read (KWOK, or a run of seconds)
    assert never_read.status["progress"] == {"step": 10, "totalSteps": 10}


def test_a_preempted_attempt_shows_the_step_it_checkpointed() -> None:
    message = result(75, phase="Preempted", step=4, totalSteps=10)
    status, view = running(PodView("p", "n1", "Failed", exit_code=75, message=message), failed=True)
    step = plan(status, view)
    assert step.status["phase"] == "Preempted"
    assert step.status["progress"] == {"step": 4, "totalSteps": 10}


def test_a_revision_that_may_not_be_published_fails_the_job_once_and_for_good() -> None:
    digest, earlier = "a" * 64, "e" * 64
    message = result(0, phase="Succeeded", uri="file:///store/adapters/ns/sql/" + digest, sha256=digest)
    status, view = running(PodView("p", "n1", "Succeeded", exit_code=0, message=message), complete=True)
    succeeded = plan(status, view)
    step = output_refused(succeeded.status, earlier, NOW, "OutputAdapterOfAnotherBaseModel", "not yours")
    assert step.status["phase"] == "Failed"
    assert (ready(step)["status"], ready(step)["reason"]) == ("False", "OutputAdapterOfAnotherBaseModel")
    assert step.status["adapterRevision"] == earlier  # what an earlier run published still stands
    assert [(e.type, e.reason) for e in step.events] == [("Warning", "OutputAdapterOfAnotherBaseModel")]
    again = plan(step.status, view)
    assert again.publish is None  # terminal: not tried again
    assert again.status["phase"] == "Failed"


def test_success_without_a_result_fails_rather_than_publishing_nothing() -> None:
    status, view = running(PodView("p", "n1", "Succeeded", exit_code=0), complete=True)
    step = plan(status, view)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", "ResultMissing")


@pytest.mark.parametrize(
    ("code", "entry", "reason"),
    [
        (3, {"reason": "NonFiniteLoss", "message": "loss is nan at step 3"}, "NonFiniteLoss"),
        (3, {"reason": "DatasetNotFound", "message": "no file"}, "DatasetNotFound"),
        (2, {}, "ConfigInvalid"),
    ],
)
def test_trainer_failures_fail_the_job_with_its_reason_and_publish_nothing(
    code: int,
    entry: dict,
    reason: str,  # type: ignore[type-arg]
) -> None:
    pod = PodView("p", "n1", "Failed", exit_code=code, message=result(code, **entry))
    status, view = running(pod, failed=True)
    step = plan(status, view)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", reason)
    assert step.publish is None
    assert step.create_attempt is None
    assert next(c for c in step.status["conditions"] if c["type"] == "Stalled")["status"] == "True"


def test_crashes_requeue_until_the_attempt_limit() -> None:
    status, view = running(PodView("p", "n1", "Failed", exit_code=1), failed=True)
    step = plan(status, view)
    assert (step.status["phase"], step.status["attempts"]) == ("Queued", 1)
    last = plan({**status, "attempts": 2}, JobView("tj-a2", "n1", failed=True, pods=view.pods))
    assert ready(last)["reason"] == "RetryLimitExceeded"


def test_a_changed_spec_starts_a_new_attempt_after_success() -> None:
    digest = "b" * 64
    message = result(0, uri="file:///s/" + digest, sha256=digest)
    status, view = running(PodView("p", "n1", "Succeeded", exit_code=0, message=message), complete=True)
    done = plan(status, view).status
    changed = plan(done, view, generation=2)
    assert changed.status["phase"] == "Queued"
    assert changed.status["attempts"] == 1
    assert changed.status["observedGeneration"] == 2


def test_a_dataset_outside_the_roots_fails_the_job_at_once_and_clears_when_a_root_admits_it() -> None:
    spec = SPEC.model_copy(update={"dataset": SPEC.dataset.model_copy(update={"uri": "file:///srv/x.jsonl"})})
    step = plan(spec=spec)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", "DatasetOutsideRoots")
    assert "file:///data" in ready(step)["message"]
    assert step.create_attempt is None
    widened = plan_training(
        namespace="ns", name="tj", generation=1, spec=spec, base=BASE, status=step.status, job=None,
        admitted_node="n1", max_attempts=3, now=NOW, dataset_roots=parse_roots(["file:///srv"]),
    )  # fmt: skip
    assert widened.status["phase"] == "Running"
    assert widened.create_attempt == 0

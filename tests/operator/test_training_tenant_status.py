"""A shared TrainingJob's phases as a tenant of a warm trainer: join, train, results, preemption."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_status import JobView, PodView, Step, plan_training

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOTS = parse_roots(["file:///data"])
BASE = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}, "engine": {"maxLoraRank": 16}})
SPEC = TrainingJobSpec.model_validate(
    {"baseModel": "tiny", "dataset": {"uri": "file:///data/x.jsonl"}, "output": {"adapterName": "sql"},
     "training": {"steps": 10}, "lora": {"rank": 8}}
)  # fmt: skip
DIGEST = "a" * 64


def plan(
    status: dict[str, Any] | None = None,
    trainer: JobView | None = None,
    tenant: dict[str, Any] | None = None,
    node: str | None = None,
    joins: str | None = None,
) -> Step:
    return plan_training(
        namespace="ns", name="tj", generation=1, spec=SPEC, base=BASE, status=status or {}, job=trainer,
        admitted_node=node, max_attempts=3, now=NOW, dataset_roots=ROOTS, admitted_trainer=joins,
        tenant=tenant,
    )  # fmt: skip


def ready(step: Step) -> dict[str, Any]:
    return next(c for c in step.status["conditions"] if c["type"] == "Ready")


def joined() -> dict[str, Any]:
    step = plan(plan().status, node="n1", joins="tiny-warm-1")
    assert step.create_attempt is None  # no Job of its own: the pass writes the trainer's tenants
    assert step.status["phase"] == "Running"
    assert step.status["placement"] == {"node": "n1", "trainer": "tiny-warm-1"}
    assert [e.reason for e in step.events] == ["Admitted"]
    assert "tiny-warm-1" in step.events[0].message
    return step.status


RUNNING = PodView("w-x", "n1", "Running")


def trainer(pod: PodView | None = RUNNING, **job: Any) -> JobView:
    return JobView("tiny-warm-1", "n1", pods=(pod,) if pod else (), group="{}", **job)


def test_a_tenant_trains_in_its_warm_trainer() -> None:
    status = joined()
    waiting = plan(status, trainer(), None)  # the trainer has not taken it yet
    assert waiting.status["phase"] == "Running"
    assert ready(waiting)["reason"] == "Starting"
    step = plan(status, trainer(), {"name": "tj", "phase": "Running", "step": 3, "totalSteps": 10})
    assert step.status["placement"] == {"node": "n1", "pod": "w-x", "trainer": "tiny-warm-1"}
    assert ready(step)["reason"] == "Training"
    assert "tiny-warm-1" in ready(step)["message"]


def test_a_tenant_whose_data_the_trainer_is_still_reading_says_so() -> None:
    status = joined()
    step = plan(status, trainer(), {"name": "tj", "phase": "Preparing"})
    assert step.status["phase"] == "Running"
    assert ready(step)["reason"] == "Starting"
    assert "tiny-warm-1" in ready(step)["message"]
    assert "dataset" in ready(step)["message"]
    training = plan(step.status, trainer(), {"name": "tj", "phase": "Running", "step": 1, "totalSteps": 10})
    assert ready(training)["reason"] == "Training"


def test_a_published_tenant_succeeds_while_its_trainer_goes_on_and_leaves_it() -> None:
    status = joined()
    uri = f"file:///store/adapters/ns/sql/{DIGEST}"
    report = {"name": "tj", "phase": "Succeeded", "step": 10, "totalSteps": 10, "uri": uri, "sha256": DIGEST}
    step = plan(status, trainer(), report)
    assert step.status["phase"] == "Succeeded"
    assert step.publish is not None
    assert step.publish.sha256 == DIGEST
    # No longer the trainer's tenant: None deletes the key in the merge patch that writes the status.
    assert step.status["placement"] == {"node": "n1", "trainer": None}
    assert step.status["progress"] == {"step": 10, "totalSteps": 10}
    assert plan(step.status, None).status["phase"] == "Succeeded"  # terminal


def test_a_tenant_the_trainer_failed_fails_with_its_reason() -> None:
    report = {"name": "tj", "phase": "Failed", "step": 4, "reason": "NonFiniteLoss", "message": "loss nan"}
    step = plan(joined(), trainer(), report)
    assert (step.status["phase"], ready(step)["reason"]) == ("Failed", "NonFiniteLoss")
    assert step.publish is None


@pytest.mark.parametrize(
    ("pod", "job"),
    [
        (PodView("w-x", "n1", "Failed", disrupted=True, exit_code=137), {"failed": True}),
        (PodView("w-x", "n1", "Failed", exit_code=75), {"failed": True}),
        (PodView("w-x", "n1", "Running", disrupted=True), {}),
    ],
)
def test_a_preempted_trainer_requeues_each_tenant_to_resume_anywhere(
    pod: PodView, job: dict[str, Any]
) -> None:
    status = joined()
    report = {"name": "tj", "phase": "Running", "step": 5}
    step = plan(status, trainer(pod, **job), report)
    if not job:  # disrupted but still running: it checkpoints within its grace period; wait
        assert step.status["phase"] == "Running"
        return
    assert step.status["phase"] == "Preempted"
    assert step.status["attempts"] == 1
    assert step.status["placement"] is None
    requeued = plan(step.status, None)
    assert (requeued.status["phase"], ready(requeued)["reason"]) == ("Queued", "Requeued")


def test_a_trainer_that_went_idle_before_it_read_the_tenant_requeues_it_without_counting_an_attempt() -> None:
    step = plan(joined(), trainer(PodView("w-x", "n1", "Succeeded", exit_code=0), complete=True), None)
    assert (step.status["phase"], ready(step)["reason"]) == ("Queued", "Requeued")
    assert step.status["attempts"] == 0


def test_a_crashing_trainer_counts_an_attempt_for_each_tenant() -> None:
    step = plan(joined(), trainer(PodView("w-x", "n1", "Failed", exit_code=1), failed=True), None)
    assert (step.status["phase"], ready(step)["reason"]) == ("Queued", "Crashed")
    assert step.status["attempts"] == 1


def test_a_tenant_whose_trainer_job_is_missing_stays_placed_for_the_pass_to_remake_it() -> None:
    status = joined()
    step = plan(status, None, None)
    assert step.status["phase"] == "Running"
    assert step.status["placement"]["trainer"] == "tiny-warm-1"
    assert step.create_attempt is None

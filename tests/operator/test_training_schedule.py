"""spec.schedule: when a succeeded TrainingJob runs again: once, fresh, never two runs at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_schedule import next_run_time
from loraplex.operator.training_status import JobView, PodView, Step, plan_training
from loraplex.operator.training_workload import Store, TrainingJobRef, attempt_name, checkpoint_uri

T0 = datetime(2026, 1, 1, 10, 20, tzinfo=UTC)
ROOTS = parse_roots(["file:///data"])
BASE = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}, "engine": {"maxLoraRank": 16}})
DIGEST = "ab" * 32


def spec(schedule: str | None = "@hourly", **extra: object) -> TrainingJobSpec:
    body: dict[str, object] = {
        "baseModel": "tiny",
        "dataset": {"uri": "file:///data/x.jsonl"},
        "output": {"adapterName": "sql"},
        "training": {"steps": 10},
        **extra,
    }
    if schedule is not None:
        body["schedule"] = schedule
    return TrainingJobSpec.model_validate(body)


def plan(
    status: dict,  # type: ignore[type-arg]
    now: datetime,
    job: JobView | None = None,
    node: str | None = None,
    job_spec: TrainingJobSpec | None = None,
) -> Step:
    return plan_training(
        namespace="ns", name="tj", generation=1, spec=job_spec or spec(), base=BASE, status=status,
        job=job, admitted_node=node, max_attempts=3, now=now, dataset_roots=ROOTS,
    )  # fmt: skip


def finished(name: str = "tj-a0") -> JobView:
    message = json.dumps(
        {"exitCode": 0, "adapters": [{"name": "tj", "uri": f"file:///store/a/{DIGEST}", "sha256": DIGEST}]}
    )
    return JobView(name, "n1", complete=True, pods=(PodView("p", "n1", "Succeeded", 0, message=message),))


def succeed(now: datetime, job_spec: TrainingJobSpec | None = None) -> Step:
    """A job admitted at `now` whose first attempt succeeds at `now`."""
    running = plan({}, now, node="n1", job_spec=job_spec).status
    return plan(running, now, finished(), job_spec=job_spec)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("@hourly", datetime(2026, 1, 1, 10, 20, 30, tzinfo=UTC), datetime(2026, 1, 1, 11, tzinfo=UTC)),
        ("@hourly", datetime(2026, 1, 1, 11, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("@daily", T0, datetime(2026, 1, 2, tzinfo=UTC)),
        ("@weekly", T0, datetime(2026, 1, 4, tzinfo=UTC)),  # Sunday
        ("@monthly", T0, datetime(2026, 2, 1, tzinfo=UTC)),
        ("*/15 * * * *", T0, datetime(2026, 1, 1, 10, 30, tzinfo=UTC)),
        ("30 3 * * 1-5", T0, datetime(2026, 1, 2, 3, 30, tzinfo=UTC)),  # Friday
    ],
)
def test_next_run_time_is_the_first_time_the_schedule_names_after(
    schedule: str, after: datetime, expected: datetime
) -> None:
    assert next_run_time(schedule, after) == expected


@pytest.mark.parametrize("schedule", ["61 * * * *", "* * * * mon-xyz", "0 0 30 2 *"])
def test_a_schedule_cron_cannot_read_is_a_value_error(schedule: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.schedule"):
        next_run_time(schedule, T0)


def test_success_shows_the_next_run_time_and_nothing_runs_before_it() -> None:
    done = succeed(T0)
    assert done.status["phase"] == "Succeeded"
    assert done.publish is not None
    assert done.status["nextRunTime"] == "2026-01-01T11:00:00Z"
    waiting = plan(done.status, T0 + timedelta(minutes=39), finished())
    assert waiting.status == done.status
    assert waiting.create_attempt is None
    assert waiting.publish is None


def test_at_the_next_run_time_a_fresh_run_is_queued_then_admitted() -> None:
    done = succeed(T0)
    due = datetime(2026, 1, 1, 11, tzinfo=UTC)
    queued = plan(done.status, due, finished())
    assert queued.status["phase"] == "Queued"
    assert queued.status["run"] == 1
    assert queued.status["attempts"] == 0
    assert queued.status["nextRunTime"] is None
    assert queued.status["completionTime"] is None
    assert queued.status["adapterRevision"] == DIGEST  # the last published revision stays shown
    assert [e.reason for e in queued.events] == ["ScheduledRun"]
    assert queued.create_attempt is None  # waits for capacity like any queued job
    # once admitted: attempt 0 of run 1, which has its own Job name and checkpoint folder
    admitted = plan(done.status, due, finished(), node="n1")
    assert admitted.create_attempt == 0
    assert admitted.node == "n1"
    assert admitted.status["phase"] == "Running"
    assert admitted.status["run"] == 1
    ref = TrainingJobRef("tj", "ns", "uid", 1, admitted.status["run"])
    first = TrainingJobRef("tj", "ns", "uid", 1)
    store = Store.parse("file:///store")
    assert attempt_name(ref, 0) == "tj-r1-a0" != attempt_name(first, 0)
    assert checkpoint_uri(ref, store) == "file:///store/checkpoints/ns/uid/g1-r1"
    assert checkpoint_uri(first, store) == "file:///store/checkpoints/ns/uid/g1"
    # the rerun then succeeds with a new revision that is published, and the next time is set again
    later = due + timedelta(minutes=10)
    redone = plan(admitted.status, later, finished("tj-r1-a0"))
    assert redone.status["phase"] == "Succeeded"
    assert redone.publish is not None
    assert redone.status["completionTime"] == "2026-01-01T11:10:00Z"
    assert redone.status["nextRunTime"] == "2026-01-01T12:00:00Z"
    assert redone.status["run"] == 1


def test_no_second_run_while_one_is_in_flight() -> None:
    done = succeed(T0)
    due = datetime(2026, 1, 1, 11, tzinfo=UTC)
    running = plan(done.status, due, finished(), node="n1").status
    # hours pass while run 1 trains: it is followed, never started again
    training = JobView("tj-r1-a0", "n1", pods=(PodView("tj-r1-a0-x", "n1", "Running"),))
    for hours in (1, 2, 5):
        step = plan(running, due + timedelta(hours=hours), training, node="n2")
        assert step.create_attempt is None
        assert step.status["run"] == 1
        assert step.status["phase"] == "Running"
        assert step.status["placement"]["node"] == "n1"
        running = step.status
    # a re-plan of the queued status with the same (pre-write) view starts the same run, not run 2
    again = plan(done.status, due + timedelta(seconds=1), finished())
    assert again.status["run"] == 1


def test_a_run_missed_while_the_operator_was_down_runs_once() -> None:
    done = succeed(T0)
    back = T0 + timedelta(days=3, minutes=7)  # 70-odd hourly runs were missed
    queued = plan(done.status, back, finished(), node="n1")
    assert queued.status["run"] == 1
    assert queued.create_attempt == 0
    redone = plan(queued.status, back + timedelta(minutes=5), finished("tj-r1-a0"))
    # the next time counts from this success, not from the missed ones: no catch-up burst
    assert redone.status["nextRunTime"] == "2026-01-04T11:00:00Z"
    assert plan(redone.status, back + timedelta(minutes=6), finished("tj-r1-a0")).create_attempt is None


def test_a_succeeded_job_without_next_run_time_gets_one_from_its_completion() -> None:
    done = succeed(T0).status
    done.pop("nextRunTime")  # e.g. it succeeded before it had a schedule
    step = plan(done, T0 + timedelta(minutes=1), finished())
    assert step.status["nextRunTime"] == "2026-01-01T11:00:00Z"
    assert step.status["phase"] == "Succeeded"


def test_without_a_schedule_a_success_is_final() -> None:
    plain = spec(None)
    done = succeed(T0, plain)
    assert done.status.get("nextRunTime") is None
    later = plan(done.status, T0 + timedelta(days=30), finished(), job_spec=plain)
    assert later.status == done.status
    assert later.create_attempt is None


def test_a_schedule_cron_cannot_read_fails_the_job_before_its_first_run() -> None:
    bad = spec("0 0 30 2 *")  # admitted (the pattern cannot count days), but it names no time
    step = plan({}, T0, node="n1", job_spec=bad)
    assert step.status["phase"] == "Failed"
    assert step.create_attempt is None  # nothing runs
    ready = next(c for c in step.status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], "spec.schedule" in ready["message"]) == ("ScheduleInvalid", True)

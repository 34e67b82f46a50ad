"""The training pass's pure parts: TrainingJob bodies parsed, the queue, the GPU picture, the throttle."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loraplex.operator.training_admission import Node, ServingDemand
from loraplex.operator.training_capacity import cluster
from loraplex.operator.training_jobs import (
    admission_queue,
    attempt_view,
    created,
    parse_job,
    plan_job,
    trainer_usage,
    unfinished,
)
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_status import JobView, PodView, Step
from loraplex.operator.training_throttle import PassThrottle, RecentStatuses
from loraplex.operator.training_workload import Store

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = {
    "baseModel": "tiny",
    "dataset": {"uri": "file:///data/x.jsonl"},
    "output": {"adapterName": "sql"},
    "training": {"steps": 10},
    "resources": {"gpu": 2},
}
BASES: dict[Any, list[tuple[str, dict[str, Any]]]] = {
    ("ns", "tiny"): [("uid-tiny", {"model": {"uri": "/m"}, "nodeSelector": {"pool": "a"}})]
}
STORE = Store.parse("pvc://store/training")
ROOTS = parse_roots(["file:///data"])


def body(name: str = "tj", **metadata: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, **metadata}
    return {"metadata": meta, "spec": SPEC, "status": {}}


def test_a_job_is_parsed_with_its_base_model_and_left_alone_when_deleted_or_invalid() -> None:
    job = parse_job("ns", body(), {"attempts": 2, "run": 1}, BASES)
    assert job is not None
    assert job.base is not None
    assert (job.base_uid, job.ref.run, job.attempt) == ("uid-tiny", 1, "tj-r1-a2")
    orphan = parse_job("ns", {**body(), "spec": {**SPEC, "baseModel": "gone"}}, {}, BASES)
    assert orphan is not None
    assert orphan.base is None
    assert parse_job("ns", body(deletionTimestamp="2026-01-01T00:00:00Z"), {}, BASES) is None
    assert parse_job("ns", {**body(), "spec": {"baseModel": "tiny"}}, {}, BASES) is None


def test_an_attempt_view_carries_its_pods_by_name() -> None:
    pods = [PodView("b", "n1", "Running"), PodView("a", "n1", "Failed")]
    view = attempt_view([JobView("tj-a0", "n1")], pods)
    assert view is not None
    assert [p.name for p in view.pods] == ["a", "b"]
    assert attempt_view([], pods) is None


def test_waiting_jobs_are_queued_and_running_ones_hold_their_gpus() -> None:
    early, late = (parse_job("ns", body(n, creationTimestamp=t), {}, BASES) for n, t in
                   [("a", "2026-01-01T00:00:00Z"), ("b", "2026-01-02T00:00:00Z")])  # fmt: skip
    assert early is not None
    assert late is not None
    waiting = plan_job(early, None, NOW, 3, STORE, ROOTS)
    running = plan_job(late, "n1", NOW, 3, STORE, ROOTS)
    assert running.status["checkpointUri"].startswith("pvc://store/training/")
    (queued,) = admission_queue([(early, waiting), (late, running)])
    assert (queued.key, queued.gpus, queued.created, dict(queued.node_selector)) == (
        "ns/a", 2, datetime(2026, 1, 1, tzinfo=UTC), {"pool": "a"},
    )  # fmt: skip
    assert trainer_usage([(early, waiting), (late, running)]) == {"n1": {"nvidia.com/gpu": 2}}
    assert created({"metadata": {}}) == datetime.min.replace(tzinfo=UTC)


def test_finished_jobs_have_no_timer_unless_they_run_again_or_can_be_fixed() -> None:
    assert unfinished({}, {"phase": "Running"})
    assert not unfinished({}, {"phase": "Succeeded"})
    assert unfinished({"schedule": "@daily"}, {"phase": "Succeeded"})
    assert unfinished(
        {}, {"phase": "Failed", "conditions": [{"type": "Ready", "reason": "UnknownBaseModel"}]}
    )
    assert not unfinished(
        {}, {"phase": "Failed", "conditions": [{"type": "Ready", "reason": "ConfigInvalid"}]}
    )


def test_the_gpu_picture_adds_up_what_pods_hold_on_each_node() -> None:
    nodes = [Node("n1", {"nvidia.com/gpu": 8}), Node("n2", {"nvidia.com/gpu": 8})]
    held = {"n1": [{"nvidia.com/gpu": 2}, {"nvidia.com/gpu": 1}]}
    serving = [ServingDemand("ns/tiny", "nvidia.com/gpu", 1, 1)]
    picture = cluster(nodes, held, {"n2": {"nvidia.com/gpu": 4}}, serving)
    assert picture.serving_used == {"n1": {"nvidia.com/gpu": 3}, "n2": {}}
    assert picture.trainer_used == {"n2": {"nvidia.com/gpu": 4}}
    assert list(picture.serving) == serving


def test_one_pass_per_interval_unless_forced() -> None:
    throttle = PassThrottle(10.0)
    assert throttle.due(100.0)
    assert not throttle.due(105.0)
    assert throttle.due(105.0, force=True)
    assert throttle.due(114.0)  # 9 s later: within a tenth of the interval counts as on time


def test_a_status_just_written_outranks_a_stale_index_for_a_few_seconds() -> None:
    recent = RecentStatuses(keep_seconds=5.0)
    recent.remember("uid", {"phase": "Running"}, now=100.0)
    assert recent.status("uid", {"phase": "Queued"}) == {"phase": "Running"}
    assert recent.status("other", {"phase": "Queued"}) == {"phase": "Queued"}
    recent.expire(now=106.0)
    assert recent.status("uid", {"phase": "Queued"}) == {"phase": "Queued"}


def test_a_step_that_is_not_running_gets_no_checkpoint_folder() -> None:
    job = parse_job("ns", body(), {}, BASES)
    assert job is not None
    step: Step = plan_job(job, None, NOW, 3, STORE, ROOTS)
    assert step.status["phase"] == "Queued"
    assert "checkpointUri" not in step.status

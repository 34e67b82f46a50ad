"""The progress the operator reads from a trainer's log: parsing, when it is written, how often it is read."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.indexes import Indexes
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_handlers import TrainingLoop
from loraplex.operator.training_logs import ProgressReader
from loraplex.operator.training_progress import final_progress, parse_progress, with_progress
from loraplex.operator.training_status import JobView, PodView
from loraplex.worker.trainer.progress import Event, JsonLines


def line(**event: Any) -> str:
    return json.dumps(event)


def trainer_log(*events: Event) -> str:
    """What the trainer prints on stdout for `events` (its JsonLines sink, as in a pod)."""
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    sink = JsonLines(Stream())  # type: ignore[arg-type]
    for event in events:
        sink(event)
    return "".join(lines)


def test_the_last_progress_event_of_each_adapter_wins() -> None:
    log = trainer_log(
        Event("started", "sql", step=0, total_steps=100),
        Event("progress", "sql", step=10, total_steps=100, loss=2.5, tokens_per_second=300.0),
        Event("progress", "chat", step=5, total_steps=50, loss=1.0, tokens_per_second=100.0),
        Event("checkpoint", "sql", step=20, total_steps=100, uri="file:///store/c"),
        Event("progress", "sql", step=20, total_steps=100, loss=2.0, tokens_per_second=310.5),
        Event("finished", exit_code=0, step=70),
    )
    assert parse_progress(log) == {
        "sql": {"step": 20, "totalSteps": 100, "loss": 2.0, "tokensPerSecond": 310.5},
        "chat": {"step": 5, "totalSteps": 50, "loss": 1.0, "tokensPerSecond": 100.0},
    }


def test_a_resumed_adapters_start_counts_before_its_first_report() -> None:
    log = trainer_log(Event("started", "sql", step=40, total_steps=100, uri="file:///store/c"))
    assert parse_progress(log) == {"sql": {"step": 40, "totalSteps": 100}}


@pytest.mark.parametrize(
    "garbage",
    [
        "Traceback (most recent call last):",
        "/usr/lib/python3/site-packages/torch/x.py:12: UserWarning: TF32 is off",
        '{"event":"progress","adapter":"sql","step":30,"totalSt',  # a line cut by the tail or a write
        line(event="progress", adapter="sql", step=-1, totalSteps=100),
        line(event="progress", adapter="sql", step="30", totalSteps=100),
        line(event="progress", adapter="sql", step=True, totalSteps=100),
        line(event="progress", step=30, totalSteps=100),
        line(event="progress", adapter="sql", step=30, totalSteps=100, tokensPerSecond=-2.0),
        '{"event":"progress","adapter":"sql","step":30,"totalSteps":100,"loss":NaN}',
        "[1, 2, 3]",
        "",
    ],
)
def test_lines_that_are_not_a_progress_event_are_skipped(garbage: str) -> None:
    before = trainer_log(Event("progress", "sql", step=20, total_steps=100, loss=2.0, tokens_per_second=3.0))
    assert parse_progress(before + garbage + "\n") == parse_progress(before)
    assert parse_progress(before + garbage) == {
        "sql": {"step": 20, "totalSteps": 100, "loss": 2.0, "tokensPerSecond": 3.0}
    }
    assert parse_progress(garbage) == {}


def test_a_changed_progress_is_written_and_an_unchanged_one_is_not() -> None:
    written = {"phase": "Running", "progress": {"step": 20, "totalSteps": 100, "loss": 2.0}}
    same = with_progress(dict(written), {"step": 20, "totalSteps": 100, "loss": 2.0})
    assert not status_changed(written, same)  # no write per pass while the trainer is between reports
    moved = with_progress(dict(written), {"step": 30, "totalSteps": 100, "loss": 1.8})
    assert status_changed(written, moved)
    assert moved["progress"] == {"step": 30, "totalSteps": 100, "loss": 1.8}
    assert with_progress(written, None) == written  # nothing read: the last progress stays


def test_the_final_progress_takes_the_summarys_step_and_keeps_the_rest() -> None:
    last = {"step": 90, "totalSteps": 100, "loss": 0.4, "tokensPerSecond": 250.0}
    assert final_progress(last, {"name": "sql", "step": 100, "totalSteps": 100}) == {**last, "step": 100}
    assert final_progress(None, {"name": "sql", "step": 100, "totalSteps": 100}) == {
        "step": 100, "totalSteps": 100,
    }  # fmt: skip
    assert final_progress(last, {"name": "sql", "phase": "Failed"}) == last
    assert final_progress(None, {"name": "sql"}) is None


def test_a_success_shows_its_final_loss_not_the_last_one_the_operator_happened_to_read() -> None:
    last = {"step": 20, "totalSteps": 30, "loss": 5.87, "tokensPerSecond": 250.0}
    entry = {"name": "sql", "phase": "Succeeded", "step": 30, "totalSteps": 30, "loss": 5.61}
    assert final_progress(last, entry) == {**last, "step": 30, "loss": 5.61}


class Logs:
    """A trainer pod's log as the operator would read it; `broken`: reading it fails."""

    def __init__(self) -> None:
        self.text = ""
        self.broken = False
        self.reads = 0

    def __call__(self, namespace: str, pod: str) -> str:
        self.reads += 1
        if self.broken:
            raise RuntimeError("container is waiting to start")
        return self.text


def test_the_reader_reads_each_pod_at_most_once_per_interval_and_keeps_the_last_progress() -> None:
    logs = Logs()
    reader = ProgressReader(logs, min_interval=5.0)
    logs.text = trainer_log(Event("progress", "sql", step=10, total_steps=100, loss=2.5))
    assert reader.progress("ns", "sql-a0-x", "sql", now=0.0) == {"step": 10, "totalSteps": 100, "loss": 2.5}
    logs.text = trainer_log(Event("progress", "sql", step=20, total_steps=100, loss=2.0))
    assert reader.progress("ns", "sql-a0-x", "sql", now=4.0)["step"] == 10  # type: ignore[index]
    assert logs.reads == 1
    assert reader.progress("ns", "sql-a0-x", "sql", now=5.0)["step"] == 20  # type: ignore[index]
    # A log that cannot be read keeps the last progress, and is not asked again at once.
    logs.broken = True
    assert reader.progress("ns", "sql-a0-x", "sql", now=10.0)["step"] == 20  # type: ignore[index]
    assert reader.progress("ns", "sql-a0-x", "sql", now=15.0)["step"] == 20  # type: ignore[index]
    assert logs.reads == 3
    # A tail that no longer holds a progress line (stderr filled it) keeps the last one too.
    logs.broken, logs.text = False, "warning\n" * 5
    assert reader.progress("ns", "sql-a0-x", "sql", now=100.0)["step"] == 20  # type: ignore[index]
    assert reader.progress("ns", "sql-a0-x", "other", now=100.0) is None


def test_the_reader_forgets_pods_that_stopped_running() -> None:
    logs = Logs()
    logs.text = trainer_log(Event("progress", "sql", step=10, total_steps=100))
    reader = ProgressReader(logs, min_interval=5.0)
    reader.progress("ns", "old", "sql", now=0.0)
    reader.progress("ns", "new", "sql", now=0.0)
    reader.forget_all_but([("ns", "new")])
    logs.text = ""
    assert reader.progress("ns", "old", "sql", now=1.0) is None  # read afresh: nothing kept of it
    assert reader.progress("ns", "new", "sql", now=1.0) == {"step": 10, "totalSteps": 100}


class Patches:
    """Stands in for CustomObjectsApi: keeps each TrainingJob status patch the pass writes."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        self.bodies.append(args[5]["status"])


def test_a_pass_writes_the_progress_a_running_trainers_log_shows_only_when_it_moved() -> None:
    settings = OperatorSettings(image="loraplex:test")
    spec = {
        "baseModel": "tiny",
        "dataset": {"uri": "pvc://loraplex-store/datasets/x.jsonl"},
        "output": {"adapterName": "sql"},
        "training": {"steps": 100},
    }
    pod = PodView("tj-a0-x", "n1", "Running")
    running = {
        "phase": "Running", "attempts": 0, "observedGeneration": 1,
        "placement": {"node": "n1", "pod": pod.name},
    }  # fmt: skip
    body = {"metadata": {"name": "tj", "uid": "uid-tj", "generation": 1}, "spec": spec, "status": running}
    indexes = Indexes(
        base_models={("ns", "tiny"): [("uid-b", {"model": {"uri": "/models/tiny"}})]},  # type: ignore[dict-item]
        training_jobs={("ns", "tj"): [body]},  # type: ignore[dict-item]
        trainer_jobs={("ns", "tj-a0"): [JobView("tj-a0", "n1")]},  # type: ignore[dict-item]
        pods={("attempt", "ns", "tj-a0"): [pod]},  # type: ignore[dict-item]
    )
    logs, patches = Logs(), Patches()
    reader = ProgressReader(logs, min_interval=0.0)
    loop = TrainingLoop(settings, patches, None, FleetTargets(), reader)  # type: ignore[arg-type]

    def one_pass() -> list[dict[str, Any]]:
        before = len(patches.bodies)
        loop.run(indexes, logging.getLogger("test"), force=True)
        return patches.bodies[before:]

    logs.text = trainer_log(
        Event("progress", "tj", step=10, total_steps=100, loss=2.5, tokens_per_second=9.0)
    )
    (first,) = one_pass()
    assert first["progress"] == {"step": 10, "totalSteps": 100, "loss": 2.5, "tokensPerSecond": 9}
    assert one_pass() == []  # the log shows nothing new: no write
    logs.text += trainer_log(
        Event("progress", "tj", step=20, total_steps=100, loss=2.0, tokens_per_second=9.5)
    )
    assert one_pass() == [{"progress": {"step": 20, "totalSteps": 100, "loss": 2, "tokensPerSecond": 9.5}}]
    logs.broken = True  # the log cannot be read: the last progress stays, nothing is written
    assert one_pass() == []
    assert logs.reads == 4

"""The TrainingJob status sink: progress events become status.progress patches, throttled, never fatal."""

from __future__ import annotations

from typing import Any

from loraplex.worker.trainer.progress import Event, JsonLines
from loraplex.worker.trainer.status_sink import TrainingJobStatusSink, with_status


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_patched_at_most_once_per_interval_plus_start_and_last_step() -> None:
    patches: list[tuple[str, str, dict[str, Any]]] = []
    clock = Clock()
    sink = TrainingJobStatusSink("team", lambda ns, name, body: patches.append((ns, name, body)), 5.0, clock)
    sink(Event("started", adapter="sql", step=0, total_steps=30))
    for step in (10, 20):
        clock.now += 1
        sink(Event("progress", adapter="sql", step=step, total_steps=30, loss=1.5, tokens_per_second=900.0))
    clock.now += 1
    sink(Event("progress", adapter="sql", step=30, total_steps=30, loss=1.2, tokens_per_second=800.0))
    sink(Event("checkpoint", adapter="sql", step=30, total_steps=30, uri="file:///x"))
    assert [p[2]["progress"]["step"] for p in patches] == [0, 30]
    assert patches[-1] == (
        "team",
        "sql",
        {"progress": {"step": 30, "totalSteps": 30, "loss": 1.2, "tokensPerSecond": 800.0}},
    )


def test_a_failed_patch_does_not_stop_training(capsys: Any) -> None:
    def broken(namespace: str, name: str, body: dict[str, Any]) -> None:
        raise RuntimeError("apiserver unreachable")

    TrainingJobStatusSink("team", broken)(Event("started", adapter="sql", step=0, total_steps=3))
    assert "apiserver unreachable" in capsys.readouterr().err


def test_only_operator_made_pods_report_to_the_api() -> None:
    stdout = JsonLines()
    assert with_status(stdout, {}) is stdout
    assert with_status(stdout, {"POD_NAMESPACE": "team"}) is stdout

"""Checkpoints: a preempted or killed run resumes where its last checkpoint left it, to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from loraplex.api.trainer import EXIT_PREEMPTED
from loraplex.worker.trainer import checkpoint
from loraplex.worker.trainer.config import TrainerConfig, local_path
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.training import AdapterResult, Trainer
from tests.trainer.conftest import adapter_job


def _jobs(dataset: Callable[..., Path], out: Path) -> tuple[dict[str, object], ...]:
    # Dropout on, so the generators' saved states matter; different steps, batch sizes and intervals.
    return (
        adapter_job("sql", dataset("sql"), out, steps=12, interval=4, lora={"dropout": 0.1}),
        adapter_job("greet", dataset("greet"), out, steps=9, batchSize=3, interval=3, lora={"rank": 4}),
    )


@pytest.fixture
def uninterrupted(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> dict[str, AdapterResult]:
    config = make_config(*_jobs(dataset, tmp_path / "ref-out"), checkpointUri=(tmp_path / "ref-ck").as_uri())
    result = Trainer(config, Recorder()).run()
    assert result.exit_code == 0
    return result.by_name()


def test_resume_after_a_hard_kill_redoes_at_most_one_interval_and_gives_the_same_weights(
    tmp_path: Path,
    dataset: Callable[..., Path],
    make_config: Callable[..., TrainerConfig],
    uninterrupted: dict[str, AdapterResult],
) -> None:
    config = make_config(*_jobs(dataset, tmp_path / "out"))
    # Killed after 7 steps with no final checkpoint (SIGKILL, node loss).
    first = Trainer(config, Recorder()).run(max_steps=7, checkpoint_on_stop=False)
    assert first.exit_code == EXIT_PREEMPTED
    assert {a.name: a.step for a in first.adapters} == {"sql": 4, "greet": 6}

    events = Recorder()
    second = Trainer(config, events).run()
    assert second.exit_code == 0
    started = {e.adapter: e.step for e in events.of("started")}
    assert started == {"sql": 4, "greet": 6}  # redone: 3 of sql's interval 4, 1 of greet's interval 3
    assert {a.name: a.step for a in second.adapters} == {"sql": 12, "greet": 9}
    # The same weights as the uninterrupted run. Not bitwise here: after the restart sql's
    # steps 5-9 share their batch with other greet rows than before, so padding widths and
    # with them float rounding differ (a preemption that stops both at once is bitwise: below).
    for adapter in second.adapters:
        got = load_file(local_path(adapter.uri or "", "uri") / "adapter_model.safetensors")
        want = load_file(
            local_path(uninterrupted[adapter.name].uri or "", "uri") / "adapter_model.safetensors"
        )
        assert got.keys() == want.keys()
        for key in got:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6)


def test_graceful_preemption_checkpoints_every_adapter_and_resumes_exactly(
    tmp_path: Path,
    dataset: Callable[..., Path],
    make_config: Callable[..., TrainerConfig],
    uninterrupted: dict[str, AdapterResult],
) -> None:
    config = make_config(*_jobs(dataset, tmp_path / "out"))
    first = Trainer(config, Recorder()).run(max_steps=5)
    assert first.exit_code == EXIT_PREEMPTED
    assert {a.name: (a.phase, a.step) for a in first.adapters} == {
        "sql": ("Preempted", 5),
        "greet": ("Preempted", 5),
    }
    folder = config.checkpoint_root / "sql"
    assert checkpoint.latest(folder) == folder / "step-000000005"
    assert not list(folder.glob(".tmp-*"))

    events = Recorder()
    second = Trainer(config, events).run()
    assert {e.adapter: e.step for e in events.of("started")} == {"sql": 5, "greet": 5}
    assert {a.name: a.sha256 for a in second.adapters} == {a.name: a.sha256 for a in uninterrupted.values()}
    # Only the newest `keepCheckpoints` (2) are kept.
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000000005", "step-000000008"]


def test_a_published_adapter_is_reported_again_not_retrained(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    config = make_config(adapter_job("sql", dataset("sql"), tmp_path / "out", steps=2))
    first = Trainer(config, Recorder()).run()
    events = Recorder()
    again = Trainer(config, events).run()
    assert again.adapters == first.adapters
    assert again.steps == 0
    assert [e.sha256 for e in events.of("published")] == [first.adapters[0].sha256]


def test_a_checkpoint_from_other_settings_is_refused(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    data = dataset("sql")
    Trainer(make_config(adapter_job("sql", data, tmp_path / "out", steps=4, interval=2)), Recorder()).run(
        max_steps=2
    )
    changed = make_config(adapter_job("sql", data, tmp_path / "out", steps=4, interval=2, learningRate=0.5))
    result = Trainer(changed, Recorder()).run()
    assert result.exit_code == 3
    assert result.adapters[0].reason == "CheckpointMismatch"


def test_sigterm_writes_a_final_checkpoint_and_exits_75(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    config = make_config(
        adapter_job("sql", dataset("sql"), tmp_path / "out", steps=100_000, interval=100_000),
        progressEverySteps=1,
        threads=1,
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    with subprocess.Popen(
        [sys.executable, "-m", "loraplex.cli", "trainer", "--config", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stdout is not None
        try:
            deadline = time.monotonic() + 120
            for line in process.stdout:  # wait until it has trained a few steps
                event = json.loads(line)
                if event["event"] == "progress" and event["step"] >= 3:
                    break
                assert time.monotonic() < deadline
            process.send_signal(signal.SIGTERM)
            rest = [json.loads(line) for line in process.stdout]
            assert process.wait(timeout=60) == EXIT_PREEMPTED
        finally:
            process.kill()
    preempted = [e for e in rest if e["event"] == "preempted"]
    assert len(preempted) == 1
    step = preempted[0]["step"]
    assert step >= 3
    assert checkpoint.latest(
        config.checkpoint_root / "sql"
    ) == config.checkpoint_root / "sql" / checkpoint.step_name(step)
    assert rest[-1]["event"] == "finished"
    assert rest[-1]["exitCode"] == EXIT_PREEMPTED
    assert not (tmp_path / "out" / "sql").exists()  # nothing published

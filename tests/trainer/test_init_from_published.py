"""`initRevision`: a run starts from the weights an earlier run published (continual learning)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraplex.worker.trainer.config import TrainerConfig, local_path
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.training import AdapterResult, Trainer
from tests.trainer.conftest import adapter_job


def _weights(result: AdapterResult) -> dict[str, torch.Tensor]:
    return load_file(local_path(result.uri or "", "uri") / "adapter_model.safetensors")


def _train(
    make_config: Callable[..., TrainerConfig], checkpoints: Path, job: dict[str, object]
) -> AdapterResult:
    config = make_config(job, checkpointUri=checkpoints.as_uri())
    return Trainer(config, Recorder()).run().adapters[0]


def test_a_run_starts_from_the_published_revision_not_from_scratch(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    data, out = dataset("sql"), tmp_path / "out"
    first = _train(make_config, tmp_path / "ck1", adapter_job("sql", data, out, steps=6))
    assert first.phase == "Succeeded"
    assert first.sha256

    # One step at a negligible learning rate: what is published is what the run started from.
    still = {"steps": 1, "learningRate": 1e-9}
    events = Recorder()
    config = make_config(
        {**adapter_job("sql", data, out, **still), "initRevision": first.sha256},
        checkpointUri=(tmp_path / "ck2").as_uri(),
    )
    continued = Trainer(config, events).run().adapters[0]
    assert continued.phase == "Succeeded"
    assert [e.message for e in events.of("started")] == [
        f"started from published revision {first.sha256[:12]}"
    ]
    trained, resumed = _weights(first), _weights(continued)
    assert resumed.keys() == trained.keys()
    for key in trained:
        torch.testing.assert_close(resumed[key], trained[key], rtol=0, atol=1e-6)

    scratch = _train(make_config, tmp_path / "ck3", adapter_job("sql", data, tmp_path / "out3", **still))
    lora_b = [key for key in trained if "lora_B" in key]
    assert all(_weights(scratch)[key].abs().max() < 1e-6 for key in lora_b)  # fresh B is zero
    assert any(trained[key].abs().max() > 1e-3 for key in lora_b)


def test_a_missing_or_mismatched_revision_fails_the_adapter_naming_the_cause(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    data, out = dataset("sql"), tmp_path / "out"
    first = _train(make_config, tmp_path / "ck1", adapter_job("sql", data, out, steps=2))
    assert first.sha256

    other_rank = {**adapter_job("sql", data, out, steps=2, lora={"rank": 4}), "initRevision": first.sha256}
    mismatched = _train(make_config, tmp_path / "ck2", other_rank)
    assert (mismatched.phase, mismatched.reason) == ("Failed", "InitRevisionMismatch")

    missing = {**adapter_job("sql", data, out, steps=2), "initRevision": "0" * 64}
    gone = _train(make_config, tmp_path / "ck3", missing)
    assert (gone.phase, gone.reason) == ("Failed", "InitRevisionNotFound")
    assert "spec.initFrom: scratch" in (gone.message or "")

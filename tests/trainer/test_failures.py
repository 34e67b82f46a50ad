"""Bad input and diverging training fail with a specific reason and publish nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from loraplex.api.trainer import EXIT_CONFIG, EXIT_FAILED
from loraplex.cli import main
from loraplex.worker.trainer.config import ConfigError, TrainerConfig
from loraplex.worker.trainer.multi_lora import AdapterWeights, BatchLosses, MultiLoraModel
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.training import Trainer
from tests.trainer.conftest import adapter_job


def test_non_finite_loss_fails_that_adapter_only_and_publishes_nothing(
    tmp_path: Path,
    dataset: Callable[..., Path],
    make_config: Callable[..., TrainerConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    config = make_config(
        adapter_job("wild", dataset("sql"), out, steps=20, interval=2),
        adapter_job("calm", dataset("greet"), out, steps=20),
    )
    # A loss that turns NaN at the 5th step (as an overflowing fp16 activation would).
    real_losses = MultiLoraModel.losses
    calls = 0

    def losses(
        self: MultiLoraModel, adapters: Sequence[AdapterWeights], *args: Any, **kwargs: Any
    ) -> BatchLosses:
        nonlocal calls
        calls += 1
        out = real_losses(self, adapters, *args, **kwargs)
        if calls == 5:
            wild = [adapter.name for adapter in adapters].index("wild")
            out.losses[wild] = out.losses[wild] * float("nan")
        return out

    monkeypatch.setattr(MultiLoraModel, "losses", losses)
    events = Recorder()
    result = Trainer(config, events).run()

    assert result.exit_code == EXIT_FAILED
    wild, calm = result.adapters
    assert (wild.phase, wild.reason) == ("Failed", "NonFiniteLoss")
    assert wild.step == 4
    assert not (out / "wild").exists() or not any((out / "wild").iterdir())
    assert calm.phase == "Succeeded"  # its neighbour's divergence did not touch it
    assert [e.reason for e in events.of("failed")] == ["NonFiniteLoss"]
    # Run again: the failure is reported at once, not retrained into a retry storm.
    again = Trainer(config, Recorder()).run()
    assert again.exit_code == EXIT_FAILED
    assert again.steps == 0
    assert again.adapters[0].reason == "NonFiniteLoss"


def test_missing_dataset_fails_with_dataset_not_found_before_loading_the_base(
    tmp_path: Path, make_config: Callable[..., TrainerConfig]
) -> None:
    config = make_config(adapter_job("a", tmp_path / "nowhere.jsonl", tmp_path / "out"))
    trainer = Trainer(config, Recorder())
    result = trainer.run()
    assert result.exit_code == EXIT_FAILED
    assert result.adapters[0].reason == "DatasetNotFound"
    assert trainer.model is None
    assert not (tmp_path / "out").exists()


def test_malformed_dataset_fails_with_dataset_invalid(
    tmp_path: Path, make_config: Callable[..., TrainerConfig]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "no usable field"}\n')
    result = Trainer(make_config(adapter_job("a", data, tmp_path / "out")), Recorder()).run()
    assert result.adapters[0].reason == "DatasetInvalid"
    assert "prompt" in (result.adapters[0].message or "")


def test_missing_base_model_fails_every_adapter(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    config = make_config(adapter_job("a", dataset("sql"), tmp_path / "out"), baseModel=str(tmp_path / "none"))
    result = Trainer(config, Recorder()).run()
    assert [a.reason for a in result.adapters] == ["BaseModelNotFound"]


def test_unknown_target_module_fails_with_config_invalid(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    config = make_config(
        adapter_job("a", dataset("sql"), tmp_path / "out", lora={"targetModules": ["c_attn"]})
    )
    result = Trainer(config, Recorder()).run()
    assert result.adapters[0].reason == "ConfigInvalid"
    assert "c_attn" in (result.adapters[0].message or "")


@pytest.mark.parametrize(
    ("training", "needle"),
    [
        ({"learningRate": 0.1}, "exactly one of training.steps and training.epochs"),
        ({"steps": 3, "epochs": 1}, "exactly one of training.steps and training.epochs"),
        ({"steps": 0}, "adapters.0.training.steps"),
    ],
)
def test_bad_training_settings_are_refused_naming_the_field(
    tmp_path: Path, training: dict[str, object], needle: str
) -> None:
    data = {
        "baseModel": "/models/base",
        "checkpointUri": "file:///ck",
        "adapters": [
            {
                "name": "a",
                "dataset": {"uri": "file:///d.jsonl"},
                "training": training,
                "outputUri": "file:///o",
            }
        ],
    }
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        TrainerConfig.parse(data)


def test_duplicate_adapter_names_are_refused() -> None:
    job = {"name": "a", "dataset": {"uri": "file:///d"}, "training": {"steps": 1}, "outputUri": "file:///o"}
    with pytest.raises(ConfigError, match="repeated: a"):
        TrainerConfig.parse({"baseModel": "/m", "checkpointUri": "file:///c", "adapters": [job, job]})


def test_cli_exits_2_on_an_unreadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job.yaml").write_text("adapters: []\n")
    assert main(["trainer", "--config", str(tmp_path / "job.yaml")]) == EXIT_CONFIG
    assert '"reason":"ConfigInvalid"' in capsys.readouterr().out
    assert main(["trainer", "--config", str(tmp_path / "missing.yaml")]) == EXIT_CONFIG

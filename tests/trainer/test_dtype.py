"""`dtype: auto` picks the frozen base's dtype from the device: bfloat16 where it is native."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from loraplex.worker.trainer.config import TrainerConfig
from loraplex.worker.trainer.training import resolve_dtype
from tests.trainer.conftest import adapter_job

CPU = torch.device("cpu")


def with_cpu_features(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_on_cpu_is_bfloat16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch,
    make_config: Callable[..., TrainerConfig],
    tmp_path: Path,
    avx512_bf16: bool,
    amx: bool,
    expected: torch.dtype,
) -> None:
    with_cpu_features(monkeypatch, avx512_bf16, amx)
    config = make_config(adapter_job("a", tmp_path / "data.jsonl", tmp_path / "out"))
    assert config.dtype == "auto"
    assert resolve_dtype(config, CPU) == expected
    assert resolve_dtype(config, torch.device("cuda")) == torch.bfloat16


def test_an_explicit_dtype_wins(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    with_cpu_features(monkeypatch, True, True)
    config = make_config(adapter_job("a", tmp_path / "data.jsonl", tmp_path / "out"))
    assert resolve_dtype(config.model_copy(update={"dtype": "float32"}), CPU) == torch.float32
    assert resolve_dtype(config.model_copy(update={"dtype": "float16"}), CPU) == torch.float16

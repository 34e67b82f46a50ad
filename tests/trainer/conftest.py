"""Trainer test fixtures: the tiny Llama, small generated datasets, and config builders.

Two datasets that a LoRA adapter of the random tiny Llama can learn in a few
dozen steps and that differ from each other: `sql` (prompt/completion records,
trained on the completion) and `greet` (text records).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplex.e2e.tiny_model import tiny_llama
from loraplex.worker.trainer.config import TrainerConfig
from loraplex.worker.trainer.data import Record

# The trainer's device in these tests; LORAPLEX_TEST_DEVICE=cuda runs them on a GPU where there is one.
DEVICE = os.environ.get("LORAPLEX_TEST_DEVICE", "cpu")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"]


def records(kind: str, count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"{kind}:{seed}")
    if kind == "sql":
        return [
            {
                "prompt": f"user {rng.choice(NAMES)}:",
                "completion": f" select name from users where id = {rng.randint(1, 99)};",
            }
            for _ in range(count)
        ]
    return [{"text": f"bonjour le monde, hallo welt, hello world {rng.choice(NAMES)}."} for _ in range(count)]


def as_records(rows: list[dict[str, str]]) -> list[Record]:
    return [Record(r.get("prompt", ""), r.get("completion", r.get("text", ""))) for r in rows]


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(1)  # 2 cores shared with other work: one thread avoids OpenMP stalls


@pytest.fixture(scope="session")
def base_model() -> Path:
    return tiny_llama()


@pytest.fixture
def dataset(tmp_path: Path) -> Callable[..., Path]:
    """Write a generated dataset as JSON Lines; returns its path."""

    def write(kind: str, count: int = 64, seed: int = 0) -> Path:
        path = tmp_path / "data" / f"{kind}-{seed}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records(kind, count, seed)))
        return path

    return write


def adapter_job(name: str, data: Path, out: Path, **training: Any) -> dict[str, Any]:
    lora = training.pop("lora", {})
    interval = training.pop("interval", 100)
    settings = {"steps": 10, "batchSize": 4, "learningRate": 1e-2, "maxSequenceLength": 64, "seed": 1}
    settings.update(training)
    return {
        "name": name,
        "dataset": {"uri": data.as_uri()},
        "lora": {"targetModules": ALL_LINEAR, "dropout": 0.0, **lora},
        "training": settings,
        "checkpoint": {"intervalSteps": interval},
        "outputUri": (out / name).as_uri(),
    }


@pytest.fixture
def make_config(tmp_path: Path, base_model: Path) -> Callable[..., TrainerConfig]:
    def build(*adapters: dict[str, Any], **extra: Any) -> TrainerConfig:
        return TrainerConfig.parse(
            {
                "baseModel": str(base_model),
                "checkpointUri": (tmp_path / "checkpoints").as_uri(),
                "adapters": list(adapters),
                "device": DEVICE,
                **extra,
            }
        )

    return build

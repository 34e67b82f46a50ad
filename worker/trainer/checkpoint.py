"""Atomic checkpoints of one adapter's training, and finding the last one to resume from.

Each adapter checkpoints on its own, under `<checkpoint root>/<adapter name>/`:

    step-000000120/
        adapter.safetensors   LoRA A/B matrices (float32), keyed <module>.lora_A.weight
        optimizer.pt          AdamW state and the adapter's dropout-generator state
        state.json            step, data position, fingerprint, last loss (written last)
    latest                    name of the newest complete checkpoint folder
    result.json               written once the adapter is published (see publish.py)

A checkpoint is written into a hidden temporary folder beside its final name,
every file fsync'ed, then renamed into place and `latest` replaced the same
way: a preemption at any moment leaves either the old or the new checkpoint,
never half of one. Older checkpoints beyond `keep` are deleted afterwards.
Because adapters checkpoint separately, an operator may regroup adapters into
different trainer processes between attempts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from loraplex.worker.durable import fsync_dir, fsync_tree, write_atomic

WEIGHTS = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
LATEST = "latest"
PREFIX = "step-"


@dataclass(frozen=True)
class CheckpointState:
    """The small, human-readable part of a checkpoint."""

    step: int
    total_steps: int
    position: int  # examples consumed from the adapter's data stream
    fingerprint: str  # of the settings and data this run was started with
    loss: float | None


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: CheckpointState
    weights: dict[str, Tensor]
    optimizer: dict[str, Any]
    generator: Tensor


def step_name(step: int) -> str:
    return f"{PREFIX}{step:09d}"


def save(
    folder: Path,
    state: CheckpointState,
    weights: dict[str, Tensor],
    optimizer: dict[str, Any],
    generator: Tensor,
    keep: int,
) -> Path:
    """Write one checkpoint atomically into the adapter's `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_name(state.step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=folder))
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, tmp / WEIGHTS)
        torch.save({"optimizer": optimizer, "generator": generator.to("cpu")}, tmp / OPTIMIZER)
        (tmp / STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        fsync_tree(tmp)
        if final.exists():  # the same step again (a resumed run that redid it): replace
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(folder / LATEST, final.name + "\n")
    _prune(folder, keep)
    return final


def complete(folder: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def _prune(folder: Path, keep: int) -> None:
    for old in complete(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, or None."""
    pointer = folder / LATEST
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if (candidate / STATE).is_file():
            return candidate
    found = complete(folder) if folder.is_dir() else []
    return found[-1] if found else None


def load(path: Path, device: torch.device) -> Checkpoint:
    state = CheckpointState(**json.loads((path / STATE).read_text()))
    weights = load_file(path / WEIGHTS, device=str(device))
    blob = torch.load(path / OPTIMIZER, map_location=device, weights_only=True)
    return Checkpoint(path, state, weights, blob["optimizer"], blob["generator"].to("cpu"))

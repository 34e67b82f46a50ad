"""Training data: read a local dataset, tokenise it, and batch it deterministically.

A dataset is JSON Lines (each record either `{"prompt", "completion"}`, trained
on the completion only, or a text field, `text` unless the job names another)
or plain text with one example per line. The `uri` may name one file or a
folder, whose regular files are read in name order.

Batches come from an endless stream: epoch `e` is a permutation of the
examples drawn from `(seed, e)`, the epochs follow each other, and batch `k`
is stream items `[k*batch, (k+1)*batch)`. So where training is in the data is
one integer (`position`: examples consumed), which a checkpoint saves and a
resumed run restores, and the order does not depend on which other adapters
share the trainer.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loraplex.api.trainingjob import Dataset
from loraplex.worker.trainer.config import ConfigError, local_path
from loraplex.worker.trainer.failures import PreparationCancelled, TrainingFailure

IGNORE = -100  # label of a token the loss skips (prompt and padding), as in transformers


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class SerialTokenizer:
    """A tokenizer whose encode calls take turns: a warm trainer reads joining tenants' datasets on
    several threads, and a Rust-backed tokenizer is not promised to be safe to share across them."""

    def __init__(self, inner: Tokenizer) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.bos_token_id = inner.bos_token_id
        self.eos_token_id = inner.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._lock:
            return self._inner.encode(text, add_special_tokens=add_special_tokens)


@dataclass(frozen=True)
class Example:
    """One tokenised example: token ids and their labels (IGNORE where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class Record:
    """One example before tokenising: prompt (no loss) and target (loss)."""

    prompt: str
    target: str


@dataclass(frozen=True)
class LoadedDataset:
    examples: tuple[Example, ...]
    sha256: str  # of the raw files, so a checkpoint is not resumed on different data
    dropped: int  # examples left out because nothing was left to train on after truncation


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if root.is_dir():
        return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return []


def _records(path: Path, spec: Dataset) -> Iterator[Record]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if spec.format == "text":
                yield Record("", line.rstrip("\n"))
                continue
            try:
                item: Any = json.loads(line)
            except ValueError as error:
                raise TrainingFailure(
                    "DatasetInvalid", f"{path}:{number}: not a JSON object ({error})"
                ) from error
            if isinstance(item, dict) and isinstance(item.get("completion"), str):
                prompt = item.get("prompt", "")
                if not isinstance(prompt, str):
                    raise TrainingFailure("DatasetInvalid", f"{path}:{number}: 'prompt' is not a string")
                yield Record(prompt, item["completion"])
            elif isinstance(item, dict) and isinstance(item.get(spec.text_field), str):
                yield Record("", item[spec.text_field])
            else:
                raise TrainingFailure(
                    "DatasetInvalid",
                    f"{path}:{number}: needs string fields 'prompt' and 'completion', or '{spec.text_field}'",
                )


def tokenise(record: Record, tokenizer: Tokenizer, max_length: int) -> Example:
    """BOS + prompt + target + EOS, truncated to `max_length`; the loss covers target and EOS."""
    prompt = tokenizer.encode(record.prompt, add_special_tokens=False) if record.prompt else []
    target = tokenizer.encode(record.target, add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [*bos, *prompt, *target, *eos][:max_length]
    labels = ([IGNORE] * (len(bos) + len(prompt)) + target + eos)[:max_length]
    return Example(tuple(ids), tuple(labels))


def confined(files: list[Path], root: str | None) -> list[Path]:
    """`files` with symlinks resolved, each checked to lie under `root` (resolved too); a file that a
    link (in its name or in a folder above it) takes out of the root fails with DatasetOutsideRoots."""
    if root is None:
        return files
    top = Path(root).resolve()
    real = [path.resolve() for path in files]
    for path, target in zip(files, real, strict=True):
        if not target.is_relative_to(top):
            raise TrainingFailure(
                "DatasetOutsideRoots", f"{path} resolves to {target}, outside the dataset root {root}"
            )
    return real


def load_dataset(
    spec: Dataset,
    tokenizer: Tokenizer,
    max_length: int,
    root: str | None = None,
    cancel: threading.Event | None = None,
) -> LoadedDataset:
    """Read and tokenise a dataset (every file under `root` once links are resolved, if given);
    DatasetNotFound, DatasetInvalid or DatasetOutsideRoots when it cannot be used, and
    PreparationCancelled as soon as `cancel` is set."""
    try:
        location = local_path(spec.uri, "dataset.uri")
    except ConfigError as error:
        raise TrainingFailure("DatasetNotFound", str(error)) from error
    files = confined(_files(location), root)
    if not files:
        raise TrainingFailure("DatasetNotFound", f"no dataset file at {spec.uri}")
    digest = hashlib.sha256()
    examples: list[Example] = []
    dropped = 0
    for path in files:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        for record in _records(path, spec):
            if cancel is not None and cancel.is_set():
                raise PreparationCancelled(spec.uri)
            example = tokenise(record, tokenizer, max_length)
            # A label predicts the next token, so the first position's label never counts.
            if any(label != IGNORE for label in example.labels[1:]):
                examples.append(example)
            else:
                dropped += 1
    if not examples:
        raise TrainingFailure(
            "DatasetInvalid", f"{spec.uri}: no example has tokens to train on (dropped {dropped})"
        )
    return LoadedDataset(tuple(examples), digest.hexdigest(), dropped)


class BatchStream:
    """Deterministic batches over endless seeded epochs; `position` is all the state there is."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, position: int = 0) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.position = position
        self._epoch = -1
        self._order: list[int] = []

    def _order_of(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            order = list(range(len(self.examples)))
            random.Random(f"loraplex-data:{self.seed}:{epoch}").shuffle(order)
            self._epoch, self._order = epoch, order
        return self._order

    def next_batch(self) -> list[Example]:
        size = len(self.examples)
        batch = []
        for index in range(self.position, self.position + self.batch_size):
            epoch, offset = divmod(index, size)
            batch.append(self.examples[self._order_of(epoch)[offset]])
        self.position += self.batch_size
        return batch

"""Datasets: tokenising with the prompt masked, and batches that a position alone reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.api.trainingjob import Dataset
from loraplex.worker.trainer.data import IGNORE, BatchStream, Example, Record, load_dataset, tokenise
from loraplex.worker.trainer.failures import TrainingFailure


class _Tokenizer:
    bos_token_id = 1
    eos_token_id = 2

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [10 + len(word) for word in text.split()]


def test_prompt_tokens_carry_no_loss_and_completion_ends_with_eos() -> None:
    example = tokenise(Record("ab c", "dddd e"), _Tokenizer(), max_length=64)
    assert example.input_ids == (1, 12, 11, 14, 11, 2)
    assert example.labels == (IGNORE, IGNORE, IGNORE, 14, 11, 2)
    assert tokenise(Record("ab c", "dddd e"), _Tokenizer(), max_length=4).input_ids == (1, 12, 11, 14)


def test_a_stream_restarted_at_its_position_gives_the_same_batches() -> None:
    examples = [Example((i,), (i,)) for i in range(7)]
    whole = BatchStream(examples, batch_size=3, seed=4)
    batches = [whole.next_batch() for _ in range(6)]  # crosses epoch boundaries
    resumed = BatchStream(examples, batch_size=3, seed=4, position=9)
    assert [resumed.next_batch() for _ in range(3)] == batches[3:]
    # Every epoch is a permutation of all examples, and epochs differ.
    flat = [e.input_ids[0] for batch in batches for e in batch]
    assert sorted(flat[:7]) == sorted(flat[7:14]) == list(range(7))
    assert flat[:7] != flat[7:14]


def _dataset(path: Path) -> Dataset:
    return Dataset(uri=path.as_uri(), format="text")


def test_a_symlink_out_of_the_dataset_root_fails_the_adapter(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret"
    root.mkdir()
    outside.write_text("the secret\n")
    (root / "train.txt").symlink_to(outside)
    with pytest.raises(TrainingFailure) as failure:
        load_dataset(_dataset(root / "train.txt"), _Tokenizer(), 64, str(root))
    assert failure.value.reason == "DatasetOutsideRoots"
    (root / "folder").symlink_to(tmp_path, target_is_directory=True)  # a linked folder above the root
    with pytest.raises(TrainingFailure, match="outside the dataset root"):
        load_dataset(_dataset(root / "folder" / "secret"), _Tokenizer(), 64, str(root))


def test_a_dataset_inside_its_root_is_read_through_links_that_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "train.txt").write_text("a b c\nd e f\n")
    (root / "link").symlink_to(root / "real", target_is_directory=True)
    loaded = load_dataset(_dataset(root / "link"), _Tokenizer(), 64, str(root))
    assert len(loaded.examples) == 2

"""Training moves each adapter toward its own data, several adapters at once, and peft loads the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraplex.worker.trainer.config import TrainerConfig
from loraplex.worker.trainer.data import Example, Record, tokenise
from loraplex.worker.trainer.multi_lora import Kernel, MultiLoraModel
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.publish import PEFT_PREFIX
from loraplex.worker.trainer.training import Trainer
from tests.trainer.conftest import adapter_job, as_records, records


def _peft_model(base_model: Path, adapter: Path | None) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _examples(base_model: Path, rows: list[Record]) -> list[Example]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    return [tokenise(row, tokenizer, 64) for row in rows]


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: list[Example]) -> float:
    """Mean next-token loss over the examples' trained tokens."""
    total, count = 0.0, 0
    for example in examples:
        ids = torch.tensor([example.input_ids])
        labels = torch.tensor([example.labels])
        logits = model(input_ids=ids).logits[0, :-1]
        target = labels[0, 1:]
        keep = target != -100
        total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


def test_concurrent_adapters_each_learn_their_own_data(
    tmp_path: Path, base_model: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    out = tmp_path / "out"
    config = make_config(
        adapter_job("sql", dataset("sql"), out, steps=40, batchSize=8),
        adapter_job("greet", dataset("greet"), out, steps=30, batchSize=4, lora={"rank": 4, "alpha": 8}),
    )
    events = Recorder()
    result = Trainer(config, events).run()

    assert result.exit_code == 0
    # One process, one shared base: the two adapters took 40 combined steps, not 40 + 30.
    assert result.steps == 40
    published = result.by_name()
    assert {a.phase for a in published.values()} == {"Succeeded"}
    assert published["sql"].sha256 != published["greet"].sha256

    held_out = {
        kind: _examples(base_model, as_records(records(kind, 24, seed=99))) for kind in ("sql", "greet")
    }
    base = _peft_model(base_model, None)
    losses = {
        name: {
            kind: mean_loss(_peft_model(base_model, Path(published[name].uri[7:])), held_out[kind])
            for kind in held_out
        }
        for name in ("sql", "greet")
    }
    for kind in ("sql", "greet"):
        before = mean_loss(base, held_out[kind])
        # Held-out loss on its own kind of data drops by at least 30% ...
        assert losses[kind][kind] <= 0.7 * before, (kind, before, losses)
    # ... and each adapter fits its own data better than the other adapter does.
    assert losses["sql"]["sql"] < losses["greet"]["sql"]
    assert losses["greet"]["greet"] < losses["sql"]["greet"]
    progress = events.of("progress", "sql")
    assert progress
    assert (progress[-1].tokens_per_second or 0) > 0


@pytest.mark.parametrize("kernel", ["stacked", "segments"])
def test_published_adapter_loads_in_peft_with_the_trainers_logits(
    tmp_path: Path,
    base_model: Path,
    dataset: Callable[..., Path],
    make_config: Callable[..., TrainerConfig],
    kernel: Kernel,
) -> None:
    out = tmp_path / "out"
    config = make_config(
        adapter_job(
            "a",
            dataset("sql"),
            out,
            steps=3,
            lora={"rank": 4, "alpha": 16, "targetModules": ["q_proj", "v_proj"]},
        ),
        adapter_job("b", dataset("greet"), out, steps=3, lora={"rank": 8, "alpha": 8}),
    )
    result = Trainer(config, Recorder()).run().by_name()

    # The trainer's own forward path (one mixed batch: adapter a, adapter b, the bare base)
    # with the published weights loaded back ...
    from transformers import AutoModelForCausalLM

    model = MultiLoraModel(
        AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32), torch.device("cpu"), kernel
    )
    examples = _examples(base_model, as_records(records("sql", 2, seed=5) + records("greet", 1, seed=5)))
    adapters = []
    for job in config.adapters:
        weights = model.new_adapter(job.name, job.lora, seed=0)
        path = Path(result[job.name].uri[7:])
        saved = load_file(path / "adapter_model.safetensors")
        weights.load_state_dict({k.removeprefix(PEFT_PREFIX): v for k, v in saved.items()})
        adapters.append(weights)
    with torch.no_grad():
        logits, _ = model.logits([adapters[0], adapters[1], None], [examples] * 3, training=False)
    rows = len(examples)
    # ... gives, row for row, the logits peft computes from the published files.
    for group, name in enumerate(["a", "b", None]):
        reference = _peft_model(base_model, Path(result[name].uri[7:]) if name else None)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            with torch.no_grad():
                expected = reference(input_ids=torch.tensor([example.input_ids])).logits[0]
            got = logits[group * rows + row, :n]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The adapters changed the outputs (a zero adapter would pass the check above trivially).
    assert not torch.allclose(logits[:rows], logits[2 * rows :], atol=1e-3)

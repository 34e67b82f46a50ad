"""A tiny Llama and real peft LoRA adapters, made on the spot (no model hub).

The engine tests, the local fleet and the benchmarks need a model vLLM's CPU
backend can serve in seconds: 2 layers, hidden size 128, head_dim 64 (the CPU
attention kernels refuse smaller), a BPE tokenizer trained here on a small
built-in corpus. Adapters are peft LoRA files with random (not zero) B
matrices, so each one changes the model's outputs. Everything is seeded, so
the same call gives the same files, and cached under `$LORAPLEX_CACHE/models`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loraplex.worker.digest import tree_digest

MODEL_VERSION = "tiny-llama-v1"
CORPUS = (
    "the quick brown fox jumps over the lazy dog. "
    "adapters change what a model says; a worker holds many of them. "
    "select name from users where id = 42; "
    "def add(a, b): return a + b. "
    "bonjour le monde, hello world, hallo welt. "
    "one two three four five six seven eight nine ten. "
)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def cache_root() -> Path:
    return Path(os.environ.get("LORAPLEX_CACHE", Path.home() / ".cache" / "loraplex")) / "models"


@dataclass(frozen=True)
class AdapterFiles:
    name: str
    path: Path
    sha256: str
    rank: int


def _build_tokenizer(dest: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([CORPUS] * 50, trainer=trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    wrapped.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    wrapped.save_pretrained(dest)


def _build_model(dest: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)  # type: ignore[arg-type]


def _locked_build(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build `dest` once across processes: a lock, a temporary sibling, an atomic rename."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            build(tmp)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def tiny_llama(root: Path | None = None) -> Path:
    """The tiny Llama's directory (weights, config, tokenizer), made on first use."""

    def build(tmp: Path) -> None:
        _build_tokenizer(tmp)
        vocab = len(json.loads((tmp / "tokenizer.json").read_text())["model"]["vocab"])
        _build_model(tmp, vocab)

    return _locked_build((root or cache_root()) / MODEL_VERSION, build)


def lora_adapter(
    name: str, seed: int, *, rank: int = 8, base: Path | None = None, root: Path | None = None
) -> AdapterFiles:
    """A peft LoRA adapter for the tiny Llama, with weights drawn from `seed`."""
    base = base or tiny_llama(root)

    def build(tmp: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=list(TARGET_MODULES),
            init_lora_weights=False,
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for param_name, param in peft_model.named_parameters():
                if "lora_" in param_name:
                    param.mul_(4.0)  # big enough that greedy outputs differ per adapter
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        # Name the base by its version, not its path, and drop peft's model card, so that the same seed
        # gives the same files (and digest) on every machine: the examples pin these digests.
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = MODEL_VERSION
        config["target_modules"] = sorted(config["target_modules"])  # peft keeps a set: order varies
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").unlink(missing_ok=True)

    path = _locked_build(
        (root or cache_root()) / "adapters" / f"{MODEL_VERSION}-{name}-s{seed}-r{rank}-v2", build
    )
    return AdapterFiles(name=name, path=path, sha256=tree_digest(path), rank=rank)

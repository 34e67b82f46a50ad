"""Publish a trained adapter: peft's file format, content-addressed, all or nothing.

The adapter is written as peft writes one (`adapter_config.json` and
`adapter_model.safetensors` with keys like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so vLLM's
`--lora-modules` / `/v1/load_lora_adapter` and peft's
`PeftModel.from_pretrained` load it as they load any other. The files go into
a hidden temporary folder inside the output folder, are fsync'ed, digested
with `tree_digest` (the LoRAAdapter's `source.sha256`), and the folder is then
renamed to `<output>/<sha256>/`. A reader never sees a half-written adapter,
and a new revision never overwrites one that workers may still be serving.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from loraplex.api.trainingjob import LoraHyperparameters
from loraplex.worker.digest import tree_digest
from loraplex.worker.durable import fsync_dir, fsync_tree

PEFT_PREFIX = "base_model.model."
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's name for the LoRA matrices


@dataclass(frozen=True)
class Published:
    path: Path
    sha256: str

    @property
    def uri(self) -> str:
        return self.path.resolve().as_uri()


def peft_state_dict(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our `<module>.lora_A.weight` keys under peft's `base_model.model.` prefix, on CPU."""
    return {PEFT_PREFIX + key: value.detach().to("cpu").contiguous() for key, value in weights.items()}


def write_peft_adapter(
    dest: Path, weights: dict[str, Tensor], lora: LoraHyperparameters, base_model: str
) -> None:
    from peft import LoraConfig

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=int(lora.alpha) if lora.alpha.is_integer() else lora.alpha,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        inference_mode=True,
        base_model_name_or_path=base_model,
    )
    # peft keeps target_modules as a set; sort it (and the keys) so the digest is reproducible.
    fields = config.to_dict()  # type: ignore[no-untyped-call]
    fields = {k: sorted(v) if isinstance(v, set) else v for k, v in fields.items()}
    (dest / "adapter_config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    save_file(peft_state_dict(weights), dest / WEIGHTS_FILE, metadata={"format": "pt"})


def publish(
    output: Path, weights: dict[str, Tensor], lora: LoraHyperparameters, base_model: str
) -> Published:
    """Write the adapter into `output/<sha256>/` atomically; publishing the same files twice is a no-op."""
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=output))
    try:
        write_peft_adapter(tmp, weights, lora, base_model)
        fsync_tree(tmp)
        sha256 = tree_digest(tmp)
        final = output / sha256
        if final.is_dir() and tree_digest(final) == sha256:
            shutil.rmtree(tmp)
        else:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Published(final, sha256)

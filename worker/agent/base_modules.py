"""Which modules a base model has, and whether an adapter's `target_modules` name any of them.

vLLM loads a LoRA adapter whose target modules the base model lacks and then
silently answers with the base model's output (vLLM issue 34186). So before an
adapter is registered, the agent compares its `adapter_config.json`
`target_modules` with the base model's module names, and refuses it with
`TargetModulesNotInBase`.

The base's module names come from its weights' names, read without loading a
tensor: a sharded checkpoint's `model.safetensors.index.json` (its
`weight_map`), else each `*.safetensors` file's header: the format's
length-prefixed JSON block, read as the format's spec describes (the
`safetensors` package opens a file only with numpy or torch at hand, which
the agent's slim image does not carry). A weight `model.layers.0.self_attn.q_proj.weight`
belongs to the module `model.layers.0.self_attn.q_proj`. `target_modules` is
matched as peft matches it: a list names modules by their last name(s)
(`q_proj` matches `...self_attn.q_proj`), a string is a regular expression
that must match a module's whole name. The adapter's own weights are
checked too (`adapter_model.safetensors`' header): peft names each LoRA weight
after the module it attaches to (`base_model.model.<module>.lora_A.weight`),
and an adapter made for another architecture can name the same short
modules (`q_proj`) at paths the base does not have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER = 100_000_000  # the safetensors format's own limit on a header's size
# peft's name of a LoRA weight: base_model.model.<module>.lora_A.weight (lora_B, the embedding pair too).
_LORA_WEIGHT = re.compile(
    r"base_model\.model\.(.+)\.lora_(?:A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?"
)
CONSEQUENCE = (
    "vLLM would load the adapter and answer with the base model's output; use an adapter trained for "
    "this base model"
)


class UnreadableBase(Exception):
    """The base model's module names cannot be read (no safetensors weights, say): nothing is checked."""


def module_names(weight_names: Iterable[str]) -> frozenset[str]:
    """The modules that hold the named weights (each name less its last part)."""
    return frozenset(name.rsplit(".", 1)[0] for name in weight_names if "." in name)


def base_module_names(model_dir: Path) -> frozenset[str]:
    """The base model's module names, from its safetensors index or headers; UnreadableBase if none."""
    index = model_dir / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if isinstance(weight_map, dict) and weight_map:
            return module_names(weight_map)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnreadableBase(f"no safetensors weights in {model_dir}")
    names: list[str] = []
    for path in files:
        names += safetensors_names(path)
    if not names:
        raise UnreadableBase(f"the safetensors files in {model_dir} name no weights")
    return module_names(names)


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header (8 bytes little-endian length, then JSON)."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length <= MAX_HEADER:
            raise UnreadableBase(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise UnreadableBase(f"{path}: not a safetensors file")
    return [name for name in header if name != "__metadata__"]


def missing_targets(target_modules: object, modules: frozenset[str]) -> list[str]:
    """The entries of `target_modules` (a list, or a regular expression string) no base module matches."""
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error:
            return [target_modules]
        return [] if any(pattern.fullmatch(module) for module in modules) else [target_modules]
    if not isinstance(target_modules, list):
        return []  # none named (peft's defaults for the architecture): nothing to compare
    missing = []
    for target in target_modules:
        target = str(target)
        if not any(module == target or module.endswith("." + target) for module in modules):
            missing.append(target)
    return missing


def lora_weight_modules(weight_names: Iterable[str]) -> frozenset[str]:
    """The base modules an adapter's LoRA weights attach to: peft's
    `base_model.model.<module>.lora_A.weight` -> `<module>`."""
    modules = set()
    for name in weight_names:
        match = _LORA_WEIGHT.fullmatch(name)
        if match is not None:
            modules.add(match.group(1))
    return frozenset(modules)


def adapter_targets_problem(adapter_dir: Path, modules: frozenset[str]) -> str | None:
    """Why the adapter in `adapter_dir` would not change the base's output as trained (its
    `target_modules`, or the modules its weights attach to, are not the base's); None when it would."""
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        return None  # vLLM refuses an adapter without its config itself (LoadFailed)
    try:
        config = json.loads(config_path.read_text())
    except ValueError:
        return None
    targets = config.get("target_modules") if isinstance(config, dict) else None
    missing = missing_targets(targets, modules)
    if missing:
        return (
            f"adapter_config.json target_modules {', '.join(repr(m) for m in missing)} match no module "
            f"of the base model: {CONSEQUENCE}"
        )
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return None
    try:
        absent = sorted(lora_weight_modules(safetensors_names(weights)) - modules)
    except (UnreadableBase, OSError, ValueError):
        return None  # vLLM judges a weights file it cannot read itself
    if not absent:
        return None
    more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
    return (
        f"the adapter's weights attach to modules the base model does not have: "
        f"{', '.join(absent[:3])}{more}: {CONSEQUENCE}"
    )

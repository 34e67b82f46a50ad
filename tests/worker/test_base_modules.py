"""Adapters whose target modules the base model lacks are refused (TargetModulesNotInBase), never loaded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loraplex.api.agent import EnsureStatus
from loraplex.worker.agent.agent import Agent, _refusal_of
from loraplex.worker.agent.base_modules import (
    UnreadableBase,
    adapter_targets_problem,
    base_module_names,
    missing_targets,
)
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.residency import Slots, WantedAdapter
from loraplex.worker.digest import tree_digest
from tests.worker.test_agent_reports import Clock, FakeVllm

LLAMA_WEIGHTS = [
    "model.embed_tokens.weight",
    *(f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")),
    "model.layers.0.mlp.gate_proj.weight",
    "lm_head.weight",
]


def write_safetensors(path: Path, names: list[str]) -> None:
    """A safetensors file whose header names `names` (one float each)."""
    header = {
        name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, name in enumerate(names)
    }
    header["__metadata__"] = {"format": "pt"}  # type: ignore[assignment]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(names)))


def base_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    write_safetensors(folder / "model-00001-of-00002.safetensors", LLAMA_WEIGHTS[:4])
    write_safetensors(folder / "model-00002-of-00002.safetensors", LLAMA_WEIGHTS[4:])
    return folder


def test_module_names_come_from_the_safetensors_headers(tmp_path: Path) -> None:
    modules = base_module_names(base_dir(tmp_path))
    assert "model.layers.1.self_attn.v_proj" in modules
    assert "lm_head" in modules
    assert "__metadata__" not in modules


def test_a_sharded_index_is_read_when_there_is_one(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.layers.0.self_attn.o_proj.weight": "x.safetensors"}})
    )
    assert base_module_names(tmp_path) == {"model.layers.0.self_attn.o_proj"}


def test_a_base_without_safetensors_cannot_be_checked(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnreadableBase):
        base_module_names(tmp_path)


@pytest.mark.parametrize(
    ("targets", "missing"),
    [
        (["q_proj", "v_proj"], []),
        (["self_attn.q_proj"], []),
        (["q_proj", "query_key_value"], ["query_key_value"]),
        (["c_attn"], ["c_attn"]),
        (["proj"], ["proj"]),  # a whole last name, not a suffix of one
        (r".*\.(q_proj|v_proj)", []),  # peft's regular-expression form must match a whole name
        (r"q_proj", [r"q_proj"]),
        (r".*\.c_attn", [r".*\.c_attn"]),
        ("(", ["("]),
        (None, []),
    ],
)
def test_target_modules_match_as_peft_matches_them(targets: object, missing: list[str]) -> None:
    modules = base_module_names_of(LLAMA_WEIGHTS)
    assert missing_targets(targets, modules) == missing


def base_module_names_of(weights: list[str]) -> frozenset[str]:
    return frozenset(name.rsplit(".", 1)[0] for name in weights)


def adapter(tmp_path: Path, targets: object) -> tuple[Path, str]:
    folder = tmp_path / "adapters" / "a"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": targets}))
    return folder, tree_digest(folder)


def test_the_problem_names_the_missing_modules(tmp_path: Path) -> None:
    folder, _ = adapter(tmp_path, ["q_proj", "c_attn"])
    problem = adapter_targets_problem(folder, base_module_names_of(LLAMA_WEIGHTS))
    assert problem is not None
    assert "'c_attn'" in problem
    assert "'q_proj'" not in problem


def test_weights_attached_at_paths_the_base_lacks_are_found_though_the_names_match(tmp_path: Path) -> None:
    folder, _ = adapter(tmp_path, ["q_proj", "v_proj"])  # short names the base has...
    write_safetensors(
        folder / "adapter_model.safetensors",
        [
            "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight",  # ...at OPT's paths
            "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_B.weight",
        ],
    )
    problem = adapter_targets_problem(folder, base_module_names_of(LLAMA_WEIGHTS))
    assert problem is not None
    assert "model.decoder.layers.0.self_attn.q_proj" in problem
    write_safetensors(
        folder / "adapter_model.safetensors",
        [
            "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
        ],
    )
    assert adapter_targets_problem(folder, base_module_names_of(LLAMA_WEIGHTS)) is None


def agent(tmp_path: Path, vllm: FakeVllm, modules: frozenset[str] | None) -> Agent:
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    made = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=4),
        clock=Clock(), wall_clock=Clock(), base_modules=modules,
    )  # fmt: skip
    made.engine_ready = True
    return made


async def test_the_agent_refuses_such_an_adapter_before_vllm_loads_it(tmp_path: Path) -> None:
    folder, digest = adapter(tmp_path, ["c_attn"])
    vllm = FakeVllm()
    checked = agent(tmp_path, vllm, base_module_names(base_dir(tmp_path)))
    checked.set_wanted([WantedAdapter("gpt2-style", f"file://{folder}", digest, "CPU")])
    await checked.converge()
    assert vllm.loaded == {}
    (failure,) = checked.report()["failures"]
    assert (failure["name"], failure["reason"]) == ("gpt2-style", "TargetModulesNotInBase")
    # The router's ensure of it is refused (422), not retried as if the engine were busy.
    assert _refusal_of("TargetModulesNotInBase") is EnsureStatus.REFUSED


async def test_an_adapter_of_this_base_loads(tmp_path: Path) -> None:
    folder, digest = adapter(tmp_path, ["q_proj", "v_proj"])
    vllm = FakeVllm()
    checked = agent(tmp_path, vllm, base_module_names(base_dir(tmp_path)))
    checked.set_wanted([WantedAdapter("llama-style", f"file://{folder}", digest, "CPU")])
    await checked.converge()
    assert set(vllm.loaded) == {"llama-style"}
    assert checked.report()["failures"] == []

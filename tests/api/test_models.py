"""The example manifests parse with the API models; the models refuse what the CRDs refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec

ROOT = Path(__file__).resolve().parents[2]
SPECS: dict[str, type[Any]] = {
    "BaseModel": BaseModelSpec,
    "LoRAAdapter": LoRAAdapterSpec,
    "TrainingJob": TrainingJobSpec,
}


def _examples(folder: str = "production") -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "examples" / folder).glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_examples_hold_every_kind() -> None:
    kinds = [doc["kind"] for doc in _examples()]
    assert kinds.count("BaseModel") == 1
    assert kinds.count("LoRAAdapter") >= 3
    assert kinds.count("TrainingJob") >= 1


@pytest.mark.parametrize(
    "doc", _examples() + _examples("."), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_example_spec_parses(doc: dict[str, Any]) -> None:
    spec = SPECS[doc["kind"]].model_validate(doc["spec"])
    assert spec.model_dump(by_alias=True, exclude_unset=True) == doc["spec"]


@pytest.mark.parametrize("folder", ["production", "."])
def test_example_adapters_name_the_example_base_model(folder: str) -> None:
    docs = _examples(folder)
    base = next(d["metadata"]["name"] for d in docs if d["kind"] == "BaseModel")
    assert {d["spec"]["baseModel"] for d in docs if d["kind"] != "BaseModel"} == {base}


def test_defaults_fill_the_engine() -> None:
    spec = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}})
    assert (spec.engine.max_loras, spec.engine.max_cpu_loras, spec.engine.max_lora_rank) == (4, 16, 16)
    assert spec.engine.shm_size == "2Gi"
    assert spec.replicas.effective_max == 1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"uri": "ftp://x/y"}}, "model.uri"),
        ({"model": {"uri": "/m"}, "engine": {"maxLoras": 0}}, "engine.maxLoras"),
        ({"model": {"uri": "/m"}, "surprise": 1}, "surprise"),
        ({"model": {"uri": "/m"}, "engine": {"shmSize": "lots"}}, "engine.shmSize"),
        ({"model": {"uri": "/m"}, "engine": {"shmSize": "2 Gi"}}, "engine.shmSize"),
    ],
)
def test_base_model_spec_refuses(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BaseModelSpec.model_validate(spec)
    assert field in str(caught.value)


def test_training_settings_need_steps_or_epochs_only_in_cel() -> None:
    # The one-of rule is CEL-only (admission); the model accepts either and the operator trusts admission.
    spec = TrainingJobSpec.model_validate(
        {
            "baseModel": "b",
            "dataset": {"uri": "file:///d.jsonl"},
            "output": {"adapterName": "a"},
            "training": {"steps": 10},
        }
    )
    assert spec.training.steps == 10


def test_the_flags_the_operator_manages_are_refused_in_engine_args_in_every_spelling() -> None:
    import re

    from loraplex.api.basemodel import MANAGED_FLAG

    for arg in ["--max-loras", "--max_loras=64", "--api-key=x", "-tp", "--port=1", "--lora-modules"]:
        assert re.fullmatch(MANAGED_FLAG, arg), arg
    for arg in ["--max-num-seqs=8", "--dtype", "bfloat16", "--max-loras-extra", "--enforce-eager"]:
        assert not re.fullmatch(MANAGED_FLAG, arg), arg


def test_engine_images_follow_the_reference_grammar() -> None:
    import pydantic

    from loraplex.api.basemodel import EngineSettings

    for image in [
        "vllm/vllm-openai:v0.11.0-RC1",
        "registry.example.com:5000/team/vllm:v1",
        "vllm",
        "a/b@sha256:" + "0" * 64,
    ]:
        assert EngineSettings(image=image).image == image
    for image in ["Registry/VLLM:latest", "vllm:", "vllm/vllm openai", "-vllm", "vllm/:tag"]:
        with pytest.raises(pydantic.ValidationError):
            EngineSettings(image=image)

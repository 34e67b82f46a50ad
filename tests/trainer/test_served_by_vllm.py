"""A trained adapter is served by the real vLLM engine (CPU backend) and says what it learned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loraplex.e2e.http_probe import http_json
from loraplex.e2e.worker_processes import VllmProcess
from loraplex.worker.trainer.config import TrainerConfig, local_path
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.training import Trainer
from tests.trainer.conftest import adapter_job

pytestmark = pytest.mark.engine

SQL_WORDS = {"select", "name", "from", "users", "where", "id"}


def test_trained_adapter_is_served_by_vllm_and_completes_like_its_data(
    tmp_path: Path,
    dataset: Callable[..., Path],
    make_config: Callable[..., TrainerConfig],
    vllm: VllmProcess,
) -> None:
    config = make_config(adapter_job("sql-gen", dataset("sql"), tmp_path / "out", steps=40, batchSize=8))
    published = Trainer(config, Recorder()).run().adapters[0]
    assert published.phase == "Succeeded"
    path = local_path(published.uri or "", "uri")

    status, body = http_json(
        f"{vllm.url}/v1/load_lora_adapter",
        {"lora_name": "sql-gen", "lora_path": str(path)},
        api_key=vllm.api_key,
    )
    assert status == 200, body
    try:
        prompt = "user ada:"
        base = vllm.text("base", prompt)
        tuned = vllm.text("sql-gen", prompt)
        assert tuned != base
        assert SQL_WORDS & set(tuned.replace(";", " ").split()), tuned
    finally:
        http_json(f"{vllm.url}/v1/unload_lora_adapter", {"lora_name": "sql-gen"}, api_key=vllm.api_key)

"""Checkpoints and published adapters in an S3 store (moto's S3 server on loopback).

Each trainer run gets its own empty scratch folder, as a new pod would: resuming
and reporting a published adapter must work from what is in the bucket alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loraplex.api.trainer import EXIT_PREEMPTED
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.digest import tree_digest
from loraplex.worker.s3 import store_credential
from loraplex.worker.trainer.config import TrainerConfig
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.training import Trainer
from tests.trainer.conftest import adapter_job

BUCKET = "training"


@pytest.fixture
def bucket(s3_bucket: Callable[[str], Any]) -> Any:
    return s3_bucket(BUCKET)


def keys(client: Any, prefix: str) -> list[str]:
    return sorted(o.object_name for o in client.list_objects(BUCKET, prefix=prefix, recursive=True))


def s3_config(
    tmp_path: Path, make_config: Callable[..., TrainerConfig], job: dict[str, Any], run: str
) -> TrainerConfig:
    job = {**job, "outputUri": f"s3://{BUCKET}/{tmp_path.name}/out/sql"}
    return make_config(
        job, checkpointUri=f"s3://{BUCKET}/{tmp_path.name}/ckpt", scratchDir=str(tmp_path / run)
    )


async def test_a_preempted_job_resumes_from_the_bucket_and_publishes_there(
    tmp_path: Path, bucket: Any, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    job = adapter_job("sql", dataset("sql"), tmp_path, steps=8, interval=2)
    prefix = f"{tmp_path.name}/"

    first = Trainer(s3_config(tmp_path, make_config, job, "pod-1"), Recorder()).run(max_steps=5)
    assert first.exit_code == EXIT_PREEMPTED
    assert first.adapters[0].checkpoint == f"s3://{BUCKET}/{prefix}ckpt/sql/step-000000005/"
    # Two checkpoints kept (the final one of the preemption and step 4); step 2 was pruned remotely too.
    steps = {k.split("/")[3] for k in keys(bucket, f"{prefix}ckpt/sql/step-")}
    assert steps == {"step-000000004", "step-000000005"}

    events = Recorder()
    second = Trainer(s3_config(tmp_path, make_config, job, "pod-2"), events).run()
    assert second.exit_code == 0
    assert [e.step for e in events.of("started")] == [5]
    result = second.adapters[0]
    assert result.uri == f"s3://{BUCKET}/{prefix}out/sql/{result.sha256}/"
    assert keys(bucket, f"{prefix}out/sql/") == [
        f"{prefix}out/sql/{result.sha256}/adapter_config.json",
        f"{prefix}out/sql/{result.sha256}/adapter_model.safetensors",
    ]
    # What a worker's agent fetches from the bucket is the adapter, digest checked.
    assert result.sha256 is not None
    fetched = await Fetcher(DiskCache(tmp_path / "agent-cache", 1 << 26)).fetch(result.uri, result.sha256)
    assert tree_digest(fetched) == result.sha256

    # A third pod finds the result in the bucket and reports it again without training.
    again = Recorder()
    third = Trainer(s3_config(tmp_path, make_config, job, "pod-3"), again).run()
    assert third.adapters[0].sha256 == result.sha256
    assert not again.of("started")
    assert [e.uri for e in again.of("published")] == [result.uri]


def test_store_keys_are_read_from_their_files_before_the_environment(tmp_path: Path) -> None:
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("from-file\n")
    environ = {
        "LORAPLEX_STORE_CREDENTIALS_DIR": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "from-env",
        "AWS_REGION": "r",
    }
    assert store_credential("AWS_ACCESS_KEY_ID", environ) == "from-file"
    assert store_credential("AWS_REGION", environ) == "r"  # no file: the environment, for local runs
    assert store_credential("AWS_SESSION_TOKEN", environ) is None

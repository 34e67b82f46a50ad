"""Fetching adapters and base models from an S3-compatible store (moto's S3 server on loopback)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher, FetchError, RetryPolicy
from loraplex.worker.agent.model_fetch import fetch_model
from loraplex.worker.digest import tree_digest

FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"s3" * 4000}


@pytest.fixture
def bucket(s3_bucket: Callable[[str], Any]) -> Any:
    client = s3_bucket("adapters")
    for name, data in FILES.items():
        client.put_object("adapters", f"team/sql/{name}", io.BytesIO(data), len(data))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    client.put_object("adapters", "team/sql.tar.gz", io.BytesIO(archive.getvalue()), len(archive.getvalue()))
    return client


def expected_digest(tmp_path: Path) -> str:
    root = tmp_path / "expected"
    root.mkdir()
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    return tree_digest(root)


@pytest.mark.parametrize(
    "uri", ["s3://adapters/team/sql", "s3://adapters/team/sql/", "s3://adapters/team/sql.tar.gz"]
)
async def test_an_adapter_comes_from_an_s3_prefix_or_archive(tmp_path: Path, bucket: Any, uri: str) -> None:
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    digest = expected_digest(tmp_path)
    path = await Fetcher(cache).fetch(uri, digest)
    assert tree_digest(path) == digest


async def test_a_missing_s3_adapter_and_wrong_credentials_have_reasons(
    tmp_path: Path, bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    with pytest.raises(FetchError) as caught:
        await Fetcher(cache).fetch("s3://adapters/team/nothing-here", "0" * 64)
    assert caught.value.reason == "SourceNotFound"
    with pytest.raises(FetchError) as missing_bucket:
        await Fetcher(cache, retry=RetryPolicy(attempts=1)).fetch("s3://no-such-bucket/x.tar", "0" * 64)
    assert missing_bucket.value.reason == "SourceNotFound"


async def test_fetch_model_copies_an_s3_prefix_into_place_once(tmp_path: Path, bucket: Any) -> None:
    dest = tmp_path / "model"
    await fetch_model("s3://adapters/team/sql", dest, pvc_root=tmp_path)
    assert {p.name for p in dest.iterdir()} == {*FILES, ".loraplex-complete"}
    (dest / "adapter_config.json").write_text("kept")
    await fetch_model("s3://adapters/team/sql", dest, pvc_root=tmp_path)  # complete: not fetched again
    assert (dest / "adapter_config.json").read_text() == "kept"

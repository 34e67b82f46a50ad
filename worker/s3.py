"""The adapter store's S3 client and prefix download, shared by the agent and the trainer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def s3_client_from_env() -> Any:
    """An S3 client for the adapter store, configured like the AWS tools (from the store Secret).

    AWS_ENDPOINT_URL (e.g. http://minio.storage:9000; default https://s3.amazonaws.com),
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION.
    """
    from minio import Minio

    endpoint = urlsplit(os.environ.get("AWS_ENDPOINT_URL", "https://s3.amazonaws.com"))
    return Minio(
        endpoint.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region=os.environ.get("AWS_REGION"),
        secure=endpoint.scheme != "http",
    )


def inside(root: Path, relative: str) -> Path:
    """`root/relative`, refusing a key that would land outside `root` (or on it)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()) or target == root.resolve():
        raise ValueError(f"refused {relative!r}: it would land outside {root}")
    return target


def download_prefix(
    client: Any, bucket: str, prefix: str, dest: Path, place: Callable[[Path, str], Path] = inside
) -> int:
    """Download every object under `prefix/` into `dest`, keeping relative paths; returns how many.

    `place` maps (dest, relative key) to the local path and refuses keys that would escape.
    """
    prefix = prefix.rstrip("/") + "/"
    keys = [
        item.object_name
        for item in client.list_objects(bucket, prefix=prefix, recursive=True)
        if not item.object_name.endswith("/")
    ]
    for key in keys:
        target = place(dest, key[len(prefix) :])
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket, key, str(target))
    return len(keys)

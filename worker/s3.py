"""The adapter store's S3 client and prefix download, shared by the agent and the trainer."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loraplex.api.trainer import STORE_CREDENTIALS_ENV


def store_credential(key: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """One key of the store Secret: the file named after it in $LORAPLEX_STORE_CREDENTIALS_DIR (how
    trainer pods get them), else the environment variable of that name (local runs, the agent)."""
    folder = environ.get(STORE_CREDENTIALS_ENV)
    if folder:
        path = Path(folder, key)
        if path.is_file():
            return path.read_text().strip()
    return environ.get(key)


def s3_client_from_env() -> Any:
    """An S3 client for the adapter store, configured like the AWS tools (from the store Secret).

    AWS_ENDPOINT_URL (e.g. http://minio.storage:9000; default https://s3.amazonaws.com),
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION: each read by
    `store_credential` (a file, else the environment).
    """
    from minio import Minio

    endpoint = urlsplit(store_credential("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com")
    return Minio(
        endpoint.netloc,
        access_key=store_credential("AWS_ACCESS_KEY_ID"),
        secret_key=store_credential("AWS_SECRET_ACCESS_KEY"),
        session_token=store_credential("AWS_SESSION_TOKEN"),
        region=store_credential("AWS_REGION"),
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

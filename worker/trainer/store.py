"""Where the trainer's checkpoints and published adapters live: a local folder, or an S3 prefix.

The trainer always works in a local folder (checkpoint.py and publish.py write
atomically there). A `file://` store (a mounted PVC included) is that folder.
An `s3://bucket/prefix` store is mirrored through a local scratch folder:

- `pull(name)` brings an adapter's `result.json`, `latest` and the checkpoint
  `latest` names down before the trainer looks for them (resume);
- `push(path)` uploads a file or a folder the trainer just finished writing;
  a checkpoint is pushed before the `latest` that names it, so a reader (a
  resumed attempt) never follows `latest` to a half-uploaded checkpoint;
- `remove(path)` deletes what pruning deleted locally.

Remote layout and names are those of the local store, so `uri(path)` of a
published adapter folder is `s3://bucket/prefix/.../<sha256>/`, which the
agent fetches as a prefix and checks against the same tree digest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from loraplex.worker.s3 import download_prefix, s3_client_from_env
from loraplex.worker.trainer.config import ConfigError, local_path


class Store(Protocol):
    root: Path  # the local folder the trainer writes in

    def pull(self, relative: str) -> None: ...
    def push(self, path: Path) -> str: ...
    def remove(self, path: Path) -> None: ...
    def uri(self, path: Path) -> str: ...
    def has_folder(self, uri: str) -> bool: ...
    def pull_folder(self, relative: str) -> Path: ...


class LocalStore:
    """A local (or mounted) folder: nothing to mirror."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def pull(self, relative: str) -> None:
        pass

    def push(self, path: Path) -> str:
        return self.uri(path)

    def remove(self, path: Path) -> None:
        pass

    def uri(self, path: Path) -> str:
        return path.resolve().as_uri()

    def has_folder(self, uri: str) -> bool:
        return local_path(uri, "uri").is_dir()

    def pull_folder(self, relative: str) -> Path:
        return self.root / relative


class S3Store:
    """An S3 prefix mirrored through a local scratch folder."""

    def __init__(self, uri: str, scratch: Path, client: Any) -> None:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise ConfigError(f"{uri!r}: an S3 store is s3://<bucket>/<prefix>")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.root = scratch
        self.client = client
        scratch.mkdir(parents=True, exist_ok=True)

    def _key(self, relative: str) -> str:
        relative = relative.strip("/")
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def uri(self, path: Path) -> str:
        key = self._key(self._relative(path))
        return f"s3://{self.bucket}/{key}" + ("/" if path.is_dir() else "")

    def pull(self, relative: str) -> None:
        """Bring down `<relative>/result.json`, `<relative>/latest` and the checkpoint it names."""
        folder = self.root / relative
        for name in ("result.json", "latest"):
            self._download(f"{relative}/{name}", folder / name)
        pointer = folder / "latest"
        if pointer.is_file():
            step = pointer.read_text().strip()
            if step and "/" not in step and step not in (".", ".."):
                download_prefix(self.client, self.bucket, self._key(f"{relative}/{step}"), folder / step)

    def push(self, path: Path) -> str:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            self.client.fput_object(self.bucket, self._key(self._relative(file)), str(file))
        return self.uri(path)

    def remove(self, path: Path) -> None:
        from minio.deleteobjects import DeleteObject

        prefix = self._key(self._relative(path)) + "/"
        listed = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        doomed = [DeleteObject(item.object_name) for item in listed]
        for error in self.client.remove_objects(self.bucket, doomed):
            raise OSError(f"s3://{self.bucket}/{error.object_name}: {error.message}")

    def has_folder(self, uri: str) -> bool:
        parts = urlsplit(uri)
        prefix = parts.path.strip("/") + "/"
        return any(True for _ in self.client.list_objects(parts.netloc, prefix=prefix))

    def pull_folder(self, relative: str) -> Path:
        """Bring down every object under `<relative>/`; returns its local folder."""
        folder = self.root / relative
        download_prefix(self.client, self.bucket, self._key(relative), folder)
        return folder

    def _download(self, relative: str, target: Path) -> None:
        """Fetch one object; a missing one leaves `target` absent."""
        from minio.error import S3Error

        try:
            self.client.fget_object(self.bucket, self._key(relative), str(target))
        except S3Error as error:
            if error.code not in ("NoSuchKey", "NoSuchObject"):
                raise


def open_store(
    uri: str, field: str, scratch: Path | None = None, s3_client: Callable[[], Any] = s3_client_from_env
) -> Store:
    """The store behind `uri`: file:// (or a plain path) is used in place; s3:// is mirrored.

    `s3_client` makes the S3 client, called only for an s3:// store (pass a cached one to share it).
    """
    if uri.startswith("s3://"):
        local = scratch or Path(tempfile.mkdtemp(prefix="loraplex-trainer-"))
        return S3Store(uri, local, s3_client())
    return LocalStore(local_path(uri, field))

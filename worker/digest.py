"""The adapter digest: one sha256 over an adapter's files, whatever carried them.

An adapter is a directory of files (peft's `adapter_config.json`,
`adapter_model.safetensors`, ...). Its digest is the sha256 of a manifest with
one line per regular file, sorted by relative path, in `sha256sum`'s format:
`<hex sha256 of the file>  <relative/path>\\n`. A directory on a PVC, the same
files packed in a tar archive on an HTTP server, or objects under an S3 prefix
all give the same digest, so a LoRAAdapter's `sha256` does not depend on the
store. `loraplex agent digest DIR` prints it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(entries: Iterable[tuple[str, str]]) -> str:
    """Digest of (relative path, file sha256) pairs; order does not matter."""
    manifest = "".join(f"{sha}  {name}\n" for name, sha in sorted(entries))
    return hashlib.sha256(manifest.encode()).hexdigest()


def tree_digest(root: Path) -> str:
    """The adapter digest of the directory `root` (symbolic links are not followed)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return manifest_digest((p.relative_to(root).as_posix(), file_sha256(p)) for p in files)

"""The local disk tier: adapter revisions by digest, a byte budget, LRU eviction.

Layout under the cache directory:
- `adapters/<sha256>/`: one verified revision (the adapter's files). It
  appears only by an atomic rename of a fully written and verified staging
  directory, so a present directory is always complete.
- `staging/`: work in progress; emptied at start (a crash leaves nothing half
  served).

Content addressing lets revisions be shared (two names, one revision) and
makes "which revision is this path" a lookup. Eviction removes least recently
used revisions until the cache fits its byte budget, never one that is
protected (registered in vLLM or wanted by the operator).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from loraplex.worker.digest import tree_digest
from loraplex.worker.durable import fsync_tree


def directory_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


class DigestMismatch(Exception):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the adapter's files have sha256 {actual}, but {expected} was expected")
        self.expected = expected
        self.actual = actual

    def without_actual(self) -> str:
        """The refusal without the digest the files have (for files the reader may not see)."""
        return f"the adapter's files do not have the expected sha256 {self.expected}"


class DiskCache:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.adapters_dir = root / "adapters"
        self.staging_dir = root / "staging"
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, least recently used first
        self._scan()

    def _scan(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        entries = [p for p in self.adapters_dir.iterdir() if p.is_dir()]
        entries.sort(key=lambda p: p.stat().st_mtime)
        for path in entries:
            self._sizes[path.name] = directory_bytes(path)

    def path(self, sha256: str) -> Path:
        return self.adapters_dir / sha256

    def revision_of(self, path: str | Path) -> str | None:
        """The digest of a cached revision from its path, or None if the path is not in the cache."""
        candidate = Path(path)
        if candidate.parent == self.adapters_dir and candidate.name in self._sizes:
            return candidate.name
        return None

    def has(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._sizes

    def revisions(self) -> set[str]:
        with self._lock:
            return set(self._sizes)

    def size(self, sha256: str) -> int | None:
        with self._lock:
            return self._sizes.get(sha256)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def touch(self, sha256: str) -> None:
        """Mark a revision as just used (LRU order survives restarts through mtime)."""
        with self._lock:
            if sha256 in self._sizes:
                self._sizes.move_to_end(sha256)
        path = self.path(sha256)
        if path.exists():
            os.utime(path)

    def new_staging(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.staging_dir))

    def commit(self, staging: Path, expected_sha256: str) -> Path:
        """Verify a staged revision and move it into the cache atomically (or raise DigestMismatch)."""
        try:
            actual = tree_digest(staging)
            if actual != expected_sha256:
                raise DigestMismatch(expected_sha256, actual)
            final = self.path(expected_sha256)
            size = directory_bytes(staging)
            with self._lock:
                if final.exists():
                    shutil.rmtree(staging)
                else:
                    fsync_tree(staging)
                    staging.rename(final)
                self._sizes[expected_sha256] = size
                self._sizes.move_to_end(expected_sha256)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def evict(self, protected: set[str], on_evict: Callable[[str, int], None] | None = None) -> list[str]:
        """Remove least recently used, unprotected revisions until the cache fits its budget."""
        evicted: list[str] = []
        with self._lock:
            used = sum(self._sizes.values())
            for sha256 in list(self._sizes):
                if used <= self.budget_bytes:
                    break
                if sha256 in protected:
                    continue
                size = self._sizes.pop(sha256)
                shutil.rmtree(self.path(sha256), ignore_errors=True)
                used -= size
                evicted.append(sha256)
                if on_evict is not None:
                    on_evict(sha256, size)
        return evicted

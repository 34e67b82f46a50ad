"""API keys: the hashed keys in one or more folders (mounted Secrets), re-read when they change.

Each file of each folder is one key's `ApiKeyEntry` (YAML or JSON: its sha256,
subject and groups); a Secret mounted as a volume is such a folder, one file
per data entry, and the kubelet swaps in new contents when the Secret changes.
`reload()` (run every few seconds by `run()`) re-reads the folders when any
file's name, size or modification time changed, so a key added, rotated or
revoked takes effect without a restart. A presented key is hashed and looked
up by its digest, then compared with `hmac.compare_digest`. A file that is not
an entry is skipped with a warning naming it (never its content).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loraplex.api.access import ApiKeyEntry, key_digest
from loraplex.router.principal import Principal

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, tuple[int, int]], ...]  # (path, (size, mtime)) of every file


class ApiKeyStore:
    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)
        self._entries: dict[str, ApiKeyEntry] = {}
        self._fingerprint: Fingerprint | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal a key authenticates, or None when no entry holds its digest."""
        digest = key_digest(key)
        entry = self._entries.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None
        return Principal(entry.subject, frozenset(entry.groups))

    def reload(self) -> bool:
        """Re-read the folders if anything in them changed; whether it did."""
        files = self._files()
        fingerprint = tuple(sorted(files.items()))
        if fingerprint == self._fingerprint:
            return False
        entries: dict[str, ApiKeyEntry] = {}
        for path in sorted(files):
            entry = _read_entry(Path(path))
            if entry is None:
                continue
            if entry.sha256 in entries:
                log.warning("Skipped API key file %s: its key is already in another file", path)
                continue
            entries[entry.sha256] = entry
        self._entries = entries
        self._fingerprint = fingerprint
        log.info("Loaded %d API keys from %s", len(entries), ", ".join(map(str, self.folders)))
        return True

    def _files(self) -> dict[str, tuple[int, int]]:
        """Every entry file (path -> size, mtime), skipping the kubelet's `..data` bookkeeping."""
        files: dict[str, tuple[int, int]] = {}
        for folder in self.folders:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                log.warning("API key folder %s does not exist (yet): no keys from it", folder)
                continue
            for name in names:
                if name.startswith("."):
                    continue
                path = folder / name
                try:
                    stat = path.stat()  # follows the kubelet's symlinks into its current ..data
                except FileNotFoundError:
                    continue
                if path.is_file():
                    files[str(path)] = (stat.st_size, stat.st_mtime_ns)
        return files

    async def run(self, interval: float) -> None:
        """Reload every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.reload)
            except OSError as error:
                log.warning("Kept the API keys loaded before: reading them failed (%s)", error)


def _read_entry(path: Path) -> ApiKeyEntry | None:
    try:
        data: Any = yaml.safe_load(path.read_text())
        return ApiKeyEntry.model_validate(data)
    except OSError as error:
        log.warning("Skipped API key file %s: %s", path, error.strerror)
    except (yaml.YAMLError, ValidationError, UnicodeDecodeError):
        log.warning(
            "Skipped API key file %s: not an entry {sha256, subject, groups} (`loraplex api-key new`)", path
        )
    return None

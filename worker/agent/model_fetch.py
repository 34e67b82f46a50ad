"""`loraplex agent fetch-model`: bring the base model's files into the worker pod.

Runs as the worker's init container when the BaseModel's weights live in an
object store or behind HTTPS: an S3 prefix (every object under it) or an
HTTPS tar archive is copied into the model volume. The copy lands in a
temporary sibling and is renamed into place, so vLLM never starts on a half
copy; an existing complete copy is kept (a restarted pod does not fetch again).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher

COMPLETE_MARKER = ".loraplex-complete"


async def fetch_model(uri: str, dest: Path, *, pvc_root: Path) -> Path:
    if (dest / COMPLETE_MARKER).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-model-", dir=dest.parent))
    try:
        cache = DiskCache(work / "cache", budget_bytes=0)
        files = await Fetcher(cache, pvc_root=pvc_root).fetch_tree(uri, work / "files")
        await asyncio.to_thread(_move_into_place, files, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _move_into_place(files: Path, dest: Path) -> None:
    (files / COMPLETE_MARKER).touch()
    if dest.exists():
        shutil.rmtree(dest)
    files.rename(dest)

"""`loraplex agent fetch-model`: bring the base model's files into the worker pod.

Runs as the worker's init container when the BaseModel's weights live in an
object store or behind HTTPS: an S3 prefix (every object under it) or an
HTTPS tar archive is copied into the model volume. In the pod `dest` is that
volume's mount point, the only place the container may write (the root file
system is read-only), so the copy lands in a work folder inside it and then
moves into place entry by entry; a marker written last says it is complete. An
existing complete copy is kept (a restarted pod does not fetch again); a
restarted container that finds no marker drops the interrupted copy's work
folder and copies again. vLLM starts only after the init container succeeded.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher

COMPLETE_MARKER = ".loraplex-complete"
WORK_PREFIX = ".fetch-model-"


async def fetch_model(uri: str, dest: Path, *, pvc_root: Path) -> Path:
    if (dest / COMPLETE_MARKER).exists():
        return dest
    work = await asyncio.to_thread(_work_folder, dest)
    try:
        cache = DiskCache(work / "cache", budget_bytes=0)
        files = await Fetcher(cache, pvc_root=pvc_root).fetch_tree(uri, work / "files")
        await asyncio.to_thread(_move_into_place, files, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _work_folder(dest: Path) -> Path:
    """A fresh work folder inside `dest`, after removing any an interrupted copy left there."""
    dest.mkdir(parents=True, exist_ok=True)
    for leftover in dest.glob(f"{WORK_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=dest))


def _move_into_place(files: Path, dest: Path) -> None:
    """Move the copy's entries into `dest` (replacing what an interrupted move left), then the marker."""
    for entry in files.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.rename(target)
    (dest / COMPLETE_MARKER).touch()

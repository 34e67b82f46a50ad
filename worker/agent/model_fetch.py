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

A copy of many gigabytes takes minutes: every `progress_seconds` the container logs how much it has
written so far (`kubectl logs <worker pod> -c fetch-model`), and what it copied when done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher

COMPLETE_MARKER = ".loraplex-complete"
WORK_PREFIX = ".fetch-model-"
PROGRESS_SECONDS = 10.0


async def fetch_model(
    uri: str,
    dest: Path,
    *,
    pvc_root: Path,
    report: Callable[[str], None] = lambda line: print(line, flush=True),  # the pod's log, as it goes
    progress_seconds: float = PROGRESS_SECONDS,
) -> Path:
    if (dest / COMPLETE_MARKER).exists():
        report(f"fetch-model: {dest} already holds a complete copy; nothing to fetch")
        return dest
    started = time.monotonic()
    work = await asyncio.to_thread(_work_folder, dest)
    report(f"fetch-model: copying {uri} into {dest}")
    progress = asyncio.create_task(_report_progress(work, started, report, progress_seconds))
    try:
        cache = DiskCache(work / "cache", budget_bytes=0)
        files = await Fetcher(cache, pvc_root=pvc_root).fetch_tree(uri, work / "files")
        count, size = await asyncio.to_thread(_files_and_bytes, files)
        await asyncio.to_thread(_move_into_place, files, dest)
    finally:
        progress.cancel()
        shutil.rmtree(work, ignore_errors=True)
    report(f"fetch-model: copied {count} files, {_size(size)}, in {time.monotonic() - started:.0f} s")
    return dest


async def _report_progress(work: Path, started: float, report: Callable[[str], None], every: float) -> None:
    """Log what the copy has written so far, every `every` seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        _, size = await asyncio.to_thread(_files_and_bytes, work)
        report(f"fetch-model: {_size(size)} written so far ({time.monotonic() - started:.0f} s)")


def _files_and_bytes(folder: Path) -> tuple[int, int]:
    """Files under `folder` and their bytes (files that vanish while counted are skipped)."""
    count = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue
            count += 1
    return count, size


def _size(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


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

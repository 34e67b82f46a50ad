"""`loraplex agent fetch-model` as the worker pod's init container runs it: its one writable place is
the model volume it fills (the pod's root file system is read-only)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.model_fetch import COMPLETE_MARKER, fetch_model

FILES = {"config.json": '{"model_type": "llama"}', "model.safetensors": "weights"}
# Root without the capabilities that override file permissions: a folder it may not write in stays so.
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="drops root's override with setpriv"
)
def test_fetch_model_fills_the_volume_writing_nothing_beside_it(tmp_path: Path) -> None:
    source = tmp_path / "store" / "models" / "tiny"
    source.mkdir(parents=True)
    for name, text in FILES.items():
        (source / name).write_text(text)
    volume = tmp_path / "models"  # the emptyDir's mount point: writable, unlike the folder it is in
    volume.mkdir()
    (volume / ".fetch-model-interrupted").mkdir()  # what a copy killed halfway leaves, and a file it moved
    (volume / "config.json").write_text("{")
    tmp_path.chmod(0o555)
    try:
        fetched = subprocess.run(
            [*NO_OVERRIDE, str(Path(sys.executable).parent / "loraplex"), "agent", "fetch-model",
             "--uri", "pvc://store/models/tiny", "--dest", str(volume)],
            env={**os.environ, "LORAPLEX_PVC_ROOT": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        tmp_path.chmod(0o755)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.splitlines()[0] == f"fetch-model: copying pvc://store/models/tiny into {volume}"
    assert fetched.stdout.splitlines()[-1].startswith("fetch-model: copied 2 files, 0.0 MiB, in ")
    assert {p.name: p.read_text() for p in volume.iterdir()} == {**FILES, COMPLETE_MARKER: ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "store"]


def write_mib(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w" * 2**20)


async def test_fetch_model_logs_its_progress_while_it_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    first_reported = asyncio.Event()

    def report(line: str) -> None:
        lines.append(line)
        if "written so far" in line and not line.startswith("fetch-model: 0.0 MiB"):
            first_reported.set()

    async def slow_copy(self: Fetcher, uri: str, dest: Path) -> Path:
        """A copy of two 1 MiB files whose second waits until the first showed in the log."""
        await asyncio.to_thread(write_mib, dest / "model-1.safetensors")
        await asyncio.wait_for(first_reported.wait(), 30)
        await asyncio.to_thread(write_mib, dest / "model-2.safetensors")
        return dest

    monkeypatch.setattr(Fetcher, "fetch_tree", slow_copy)
    dest = tmp_path / "models"
    await fetch_model("s3://models/tiny", dest, pvc_root=tmp_path, report=report, progress_seconds=0.01)
    assert lines[0] == f"fetch-model: copying s3://models/tiny into {dest}"
    assert any(line.startswith("fetch-model: 1.0 MiB written so far (") for line in lines)
    assert lines[-1].startswith("fetch-model: copied 2 files, 2.0 MiB, in ")
    lines.clear()
    await fetch_model("s3://models/tiny", dest, pvc_root=tmp_path, report=report)
    assert lines == [f"fetch-model: {dest} already holds a complete copy; nothing to fetch"]

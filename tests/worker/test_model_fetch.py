"""`loraplex agent fetch-model` as the worker pod's init container runs it: its one writable place is
the model volume it fills (the pod's root file system is read-only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.worker.agent.model_fetch import COMPLETE_MARKER

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
    assert {p.name: p.read_text() for p in volume.iterdir()} == {**FILES, COMPLETE_MARKER: ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "store"]

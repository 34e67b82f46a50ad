"""`--kind`: the same fleet on a kind cluster, for machines where Docker runs.

kind runs the control plane in a container; the simulated GPU nodes are still
KWOK's, driven by the pinned `kwok` binary as a local process pointed at the
kind cluster. Without a working Docker engine this refuses early and says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from loraplex.e2e.binaries import cache_root, ensure_binaries, ensure_kind
from loraplex.e2e.cluster import ensure_gpu_nodes
from loraplex.e2e.gpu_nodes import KWOK_ANNOTATION, GpuNodeShape


class KindError(RuntimeError):
    """kind could not be used here."""


def _state(name: str) -> Path:
    return cache_root() / "kind" / name


def docker_works() -> tuple[bool, str]:
    """Whether a Docker engine answers, and if not, its last word on why."""
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    lines = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else ""


def exists(name: str) -> bool:
    return (_state(name) / "kubeconfig.yaml").is_file()


def up(name: str, nodes: int, shape: GpuNodeShape) -> Path:
    ok, why = docker_works()
    if not ok:
        raise KindError(f"--kind needs a working Docker engine, and `docker info` failed: {why}")
    kind = ensure_kind()
    binaries = ensure_binaries()
    state = _state(name)
    state.mkdir(parents=True, exist_ok=True)
    kubeconfig = state / "kubeconfig.yaml"
    if not kubeconfig.is_file():
        result = subprocess.run(
            [
                str(kind),
                "create",
                "cluster",
                "--name",
                name,
                "--kubeconfig",
                str(kubeconfig),
                "--wait",
                "180s",
            ],
            check=False,
            text=True,
            capture_output=True,
        )
        if result.returncode != 0:
            raise KindError(f"kind create cluster failed:\n{result.stderr}")
    pid_file = state / "kwok.pid"
    if not pid_file.is_file():
        with (state / "kwok.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    str(binaries.kwok),
                    "--kubeconfig",
                    str(kubeconfig),
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        pid_file.write_text(str(process.pid))
    ensure_gpu_nodes(str(kubeconfig), name, nodes, shape)
    return kubeconfig


def down(name: str) -> None:
    state = _state(name)
    pid_file = state / "kwok.pid"
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    subprocess.run([str(ensure_kind()), "delete", "cluster", "--name", name], check=False)
    shutil.rmtree(state, ignore_errors=True)

"""What Argo CD and Flux make of a loraplex object: the shipped health.lua run in real Lua, and kstatus.

`argo_health` runs gitops/argocd/loraplex.dev/<Kind>/health.lua in Lua 5.1 (lupa's embedded
interpreter) with the object as the global `obj`, as Argo CD does; `argo_health_in_gopher_lua`
runs it in gopher-lua itself, the interpreter Argo CD embeds, with the libraries Argo CD opens
(tests/gitops/argolua). `kstatus` runs objects through sigs.k8s.io/cli-utils' kstatus (the library
Flux's health checks use; tests/gitops/kstatus). Each Go checker is built once with `go build`
(its go.mod and go.sum pin the versions) into the cache outside the repository. The cases
(fixtures and what each tool must say) are the Argo CD-style `health_test.yaml` beside each
script; `kstatus:` in each case is ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua51
import yaml

from loraplex.e2e.binaries import cache_root

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "gitops" / "argocd" / "loraplex.dev"
KINDS = ("BaseModel", "LoRAAdapter", "TrainingJob")
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    """One fixture and what Argo CD (status, message) and kstatus must make of it."""

    kind: str
    name: str  # the fixture's file stem: ready, reconciling, stalled, stale-generation, ...
    status: str
    message: str | None
    kstatus: str

    @property
    def path(self) -> Path:
        return ARGOCD / self.kind / "testdata" / f"{self.name}.yaml"

    def fixture(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.path.read_text())
        return loaded


def cases(kind: str) -> list[Case]:
    listed = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())["tests"]
    return [
        Case(
            kind=kind,
            name=Path(entry["inputPath"]).stem,
            status=entry["healthStatus"]["status"],
            message=entry["healthStatus"].get("message"),
            kstatus=entry["kstatus"],
        )
        for entry in listed
    ]


def all_cases() -> list[Case]:
    return [case for kind in KINDS for case in cases(kind)]


def argo_health(obj: dict[str, Any]) -> dict[str, str]:
    """The health.lua of the object's kind run on it: {"status": ..., "message": ...}."""
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=False)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    returned = lua.execute((ARGOCD / obj["kind"] / "health.lua").read_text())
    return {str(key): str(value) for key, value in returned.items()}


def argo_health_in_gopher_lua(kind: str, objects: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The health.lua of `kind` run on each object in gopher-lua, as Argo CD runs it."""
    return _run(_checker("argolua"), [str(ARGOCD / kind / "health.lua")], objects)


def kstatus(objects: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus's status and message for each object."""
    return _run(_checker("kstatus"), [], objects)


def _run(binary: Path, args: list[str], objects: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    result = subprocess.run(
        [str(binary), *args], input=json.dumps(list(objects)), capture_output=True, text=True, check=True
    )
    computed: list[dict[str, str]] = json.loads(result.stdout)
    return computed


def _checker(name: str) -> Path:
    """tests/gitops/<name> built, once per version of its sources."""
    folder = HERE / name
    sources = b"".join((folder / file).read_bytes() for file in ("go.mod", "go.sum", "main.go"))
    binary = cache_root() / "gitops-checkers" / hashlib.sha256(sources).hexdigest()[:16] / name
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
        subprocess.run(["go", "build", "-trimpath", "-o", str(partial), "."], cwd=folder, env=env, check=True)
        partial.rename(binary)
    return binary


def as_fixture(obj: dict[str, Any]) -> dict[str, Any]:
    """A live object reduced to what a fixture keeps: kind, name, generation, spec, status."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": meta["name"], "namespace": "default", "generation": meta["generation"]},
        "spec": obj["spec"],
        "status": obj.get("status") or {},
    }

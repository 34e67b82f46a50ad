"""Builds the pinned Kubernetes, etcd and KWOK binaries from the Go module proxy.

Nothing is downloaded from a release page: each component is compiled with
`go build` from its Go module, in a throwaway wrapper module, into a cache
outside the repository keyed by version (`$LORAPLEX_CACHE`, default
`~/.cache/loraplex`). A later call finds the binaries there and returns at once.

`k8s.io/kubernetes` replaces its staging modules (`k8s.io/api`, ...) with
`./staging/...` paths, which a module that depends on it cannot see; the
wrapper maps each of them to the matching `v0.Y.Z` release, read from the
kubernetes module's own go.mod, so the list is never written by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
KIND_VERSION = "v0.31.0"
HELM_VERSION = "v3.22.0"
KUBECONFORM_VERSION = "v0.8.0"

KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    # a real node (`loraplex dev node`): the kubelet and the Service proxy
    "kubelet",
    "kube-proxy",
)
KWOK_COMMANDS = ("kwok", "kwokctl")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local control plane runs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwokctl: Path

    @property
    def bin_dirs(self) -> list[Path]:
        return sorted({p.parent for p in self.__dict__.values()})


def cache_root() -> Path:
    return Path(os.environ.get("LORAPLEX_CACHE", Path.home() / ".cache" / "loraplex"))


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_binaries(log: Log = _stderr_log) -> Binaries:
    """Return the pinned binaries, building whichever are missing from the cache."""
    with _build_lock():
        kube_dir = _ensure_kubernetes(log)
        etcd_dir = _ensure_etcd(log)
        kwok_dir = _ensure_kwok(log)
    return Binaries(
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kubectl=kube_dir / "kubectl",
        etcd=etcd_dir / "etcd",
        kwok=kwok_dir / "kwok",
        kwokctl=kwok_dir / "kwokctl",
    )


def cached_binaries() -> Binaries | None:
    """The binaries if all are already cached, else None (never builds)."""
    root = cache_root() / "bin"
    kube_dir = root / f"kubernetes-{KUBERNETES_VERSION}"
    binaries = Binaries(
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kubectl=kube_dir / "kubectl",
        etcd=root / f"etcd-{ETCD_VERSION}" / "etcd",
        kwok=root / f"kwok-{KWOK_VERSION}" / "kwok",
        kwokctl=root / f"kwok-{KWOK_VERSION}" / "kwokctl",
    )
    return binaries if all(p.is_file() for p in binaries.__dict__.values()) else None


def staging_replacements(kubernetes_go_mod: str, version: str) -> dict[str, str]:
    """Map each `./staging/...` replace of kubernetes' go.mod to its v0.Y.Z release."""
    staging_version = "v0." + version.removeprefix("v").split(".", 1)[1]
    pattern = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)
    return {module: staging_version for module in pattern.findall(kubernetes_go_mod)}


def _version_ldflags(version: str) -> str:
    major, minor = version.removeprefix("v").split(".")[:2]
    package = "k8s.io/component-base/version"
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = " ".join(f"-X {package}.{key}={value}" for key, value in values.items())
    return f"-s -w {flags}"


def _ensure_kubernetes(log: Log) -> Path:
    out = cache_root() / "bin" / f"kubernetes-{KUBERNETES_VERSION}"
    if all((out / name).is_file() for name in KUBERNETES_COMMANDS):
        return out
    log(f"Building Kubernetes {KUBERNETES_VERSION} ({', '.join(KUBERNETES_COMMANDS)}); first time only")
    work = _fresh_module("kubernetes", KUBERNETES_VERSION)
    info = json.loads(
        _go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], work, capture=True)
    )
    replacements = staging_replacements(Path(info["GoMod"]).read_text(), KUBERNETES_VERSION)
    go_mod = work / "go.mod"
    go_mod.write_text(
        go_mod.read_text()
        + "\nreplace (\n"
        + "".join(f"\t{module} => {module} {ver}\n" for module, ver in sorted(replacements.items()))
        + ")\n"
    )
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_COMMANDS]
    _go(["get", *(f"{p}@{KUBERNETES_VERSION}" for p in packages)], work)
    _build(work, out, packages, _version_ldflags(KUBERNETES_VERSION))
    return out


def _ensure_etcd(log: Log) -> Path:
    return _ensure_one("etcd", ETCD_VERSION, "go.etcd.io/etcd/server/v3", "-s -w", log).parent


def _ensure_kwok(log: Log) -> Path:
    out = cache_root() / "bin" / f"kwok-{KWOK_VERSION}"
    if all((out / name).is_file() for name in KWOK_COMMANDS):
        return out
    log(f"Building KWOK {KWOK_VERSION}; first time only")
    work = _fresh_module("kwok", KWOK_VERSION)
    packages = [f"sigs.k8s.io/kwok/cmd/{name}" for name in KWOK_COMMANDS]
    _go(["get", *(f"{p}@{KWOK_VERSION}" for p in packages)], work)
    ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"
    _build(work, out, packages, ldflags)
    return out


def ensure_helm(log: Log = _stderr_log) -> Path:
    """The helm binary (for chart lint and template tests), built like the rest."""
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    with _build_lock():
        return _ensure_one("helm", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", ldflags, log)


def ensure_kubeconform(log: Log = _stderr_log) -> Path:
    """The kubeconform binary (validates the chart's objects against Kubernetes' schemas)."""
    with _build_lock():
        return _ensure_one(
            "kubeconform", KUBECONFORM_VERSION, "github.com/yannh/kubeconform/cmd/kubeconform", "-s -w", log
        )


def ensure_kind(log: Log = _stderr_log) -> Path:
    """The kind binary (only for `--kind`), built like the rest."""
    with _build_lock():
        return _ensure_one("kind", KIND_VERSION, "sigs.k8s.io/kind", "-s -w", log)


def _ensure_one(name: str, version: str, package: str, ldflags: str, log: Log) -> Path:
    """One binary built from one main package of a module at `version` (caller holds the lock)."""
    out = cache_root() / "bin" / f"{name}-{version}"
    if not (out / name).is_file():
        log(f"Building {name} {version}; first time only")
        work = _fresh_module(name, version)
        _go(["get", f"{package}@{version}"], work)
        _build(work, out, [package], ldflags, output_name=name)
    return out / name


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache: concurrent callers wait, then find the result."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with (cache_root() / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh_module(name: str, version: str) -> Path:
    work = cache_root() / "build" / f"{name}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _go(["mod", "init", f"loraplex.dev/build/{name}"], work)
    return work


def _build(work: Path, out: Path, packages: list[str], ldflags: str, output_name: str | None = None) -> None:
    """Build into a temporary folder, then move into place, so the cache is never half-written."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    target = staging / output_name if output_name else staging
    _go(
        [
            "build",
            "-trimpath",
            "-ldflags",
            ldflags,
            "-o",
            f"{target}{'' if output_name else os.sep}",
            *packages,
        ],
        work,
    )
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _go(args: list[str], cwd: Path, capture: bool = False) -> str:
    """Run go; its chatter (a line per downloaded module) is shown only when it fails."""
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    result = subprocess.run(["go", *args], cwd=cwd, env=env, check=False, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"go {' '.join(args[:2])} failed in {cwd} (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout if capture else ""


if __name__ == "__main__":
    for path in ensure_binaries().__dict__.values():
        print(path)

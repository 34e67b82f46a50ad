"""Builds loraplex's container images here, with buildah, from a Debian base made by mmdebstrap.

No container registry is reachable from this kind of machine, so the base is
made from Debian's packages (`mmdebstrap` into a tar, imported into buildah's
storage as `localhost/loraplex/debian:bookworm`), and each image of `IMAGES`
is built from its `images/<name>/Containerfile` with `buildah bud`, exactly
as `docker build` would build it from `debian:bookworm-slim` elsewhere
(docs/images.md). Each image is exported as an OCI archive that containerd
imports (`ctr -n k8s.io images import`).

An image is rebuilt only when its content key changes: a sha256 over its
Containerfile, every file its `COPY` lines take from the build context, its
build arguments and the keys of what it is built on (the Debian base, the
torch image). Archives live in `$LORAPLEX_CACHE/images` (default
`~/.cache/loraplex/images`), named `<name>-<key>.tar`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from loraplex.api.engine_version import VLLM_VERSION
from loraplex.api.release import __version__
from loraplex.e2e.binaries import cache_root
from loraplex.e2e.debian_packages import ensure_packages

Log = Callable[[str], None]

ROOT = Path(__file__).resolve().parents[1]

BASE_IMAGE = "localhost/loraplex/debian:bookworm"
BASE_SUITE = "bookworm"
MIRROR = "http://deb.debian.org"
KEY_LABEL = "dev.loraplex.build-key"
KEY_LENGTH = 16

# Caches inside a copied folder: .containerignore keeps them out of the context, so out of the key.
_UNHASHED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_UNHASHED_SUFFIXES = (".pyc", ".egg-info")


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Containerfile, the reference it is tagged with, and what it is built on."""

    name: str
    containerfile: str  # relative to the repository root
    ref: str
    context: str = "."  # relative to the repository root
    build_args: tuple[tuple[str, str], ...] = ()
    depends_on: tuple[str, ...] = ()  # names of other IMAGES it is built FROM


def pinned_version(constraints: str, package: str) -> str:
    """The `package==X` pin of a constraints file."""
    wanted = re.sub(r"[-_.]+", "-", package).lower()
    for line in constraints.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and re.sub(r"[-_.]+", "-", name.strip()).lower() == wanted:
            return version.strip()
    raise ValueError(f"constraints pin no version of {package}")


TORCH_VERSION = pinned_version((ROOT / "constraints.txt").read_text(), "torch")

CONTROL_IMAGE = f"ghcr.io/loraplex/loraplex:{__version__}"
TORCH_IMAGE = f"ghcr.io/loraplex/torch:{TORCH_VERSION}"
TRAINER_IMAGE = f"ghcr.io/loraplex/loraplex-trainer:{__version__}"
VLLM_CPU_IMAGE = f"ghcr.io/loraplex/vllm-cpu:v{VLLM_VERSION}"
PAUSE_IMAGE = "localhost/loraplex/pause:3.10"
BUILD_PACKAGES = {"buildah": "buildah", "mmdebstrap": "mmdebstrap"}  # command -> Debian package

IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("pause", "images/pause/Containerfile", PAUSE_IMAGE, context="images/pause"),
    ImageSpec(
        "control",
        "images/control/Containerfile",
        CONTROL_IMAGE,
        build_args=(("VERSION", __version__),),
    ),
    ImageSpec("torch", "images/torch/Containerfile", TORCH_IMAGE, build_args=(("VERSION", TORCH_VERSION),)),
    ImageSpec(
        "trainer",
        "images/trainer/Containerfile",
        TRAINER_IMAGE,
        build_args=(("TORCH_IMAGE", TORCH_IMAGE), ("VERSION", __version__)),
        depends_on=("torch",),
    ),
    ImageSpec(
        "vllm-cpu",
        "images/vllm-cpu/Containerfile",
        VLLM_CPU_IMAGE,
        build_args=(("TORCH_IMAGE", TORCH_IMAGE), ("VLLM_VERSION", VLLM_VERSION)),
        depends_on=("torch",),
    ),
)


def images_dir() -> Path:
    return cache_root() / "images"


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- pure parts: Containerfile reading, keys, plans, command lines -------------------------------


def instructions(containerfile: str) -> list[str]:
    """The Containerfile's instructions, continuation lines joined, comments and blanks dropped."""
    joined: list[str] = []
    current = ""
    for raw in containerfile.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        joined.append(current.strip())
        current = ""
    if current.strip():
        joined.append(current.strip())
    return joined


def copied_sources(containerfile: str) -> tuple[str, ...]:
    """The build-context paths the Containerfile's COPY/ADD lines take (not those `--from` a stage)."""
    sources: list[str] = []
    for instruction in instructions(containerfile):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        words = json.loads(rest) if rest.lstrip().startswith("[") else shlex.split(rest)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(path.rstrip("/") for path in paths[:-1])
    return tuple(dict.fromkeys(sources))


def declared_args(containerfile: str) -> dict[str, str | None]:
    """Every ARG the Containerfile declares, with its default (None when it has none)."""
    declared: dict[str, str | None] = {}
    for instruction in instructions(containerfile):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "ARG":
            name, sep, default = rest.strip().partition("=")
            declared.setdefault(name, default if sep else None)
    return declared


def _hash_path(digest: hashlib._Hash, root: Path, relative: str) -> None:
    path = root / relative
    if path.is_symlink():
        digest.update(f"link {relative} -> {os.readlink(path)}\n".encode())
    elif path.is_file():
        digest.update(f"file {relative} {path.stat().st_mode & 0o111:o}\n".encode())
        digest.update(path.read_bytes())
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name in _UNHASHED_DIRS or child.name.endswith(_UNHASHED_SUFFIXES):
                continue
            _hash_path(digest, root, f"{relative}/{child.name}")
    else:
        raise FileNotFoundError(f"{relative} (copied by a Containerfile) is missing under {root}")


def content_key(spec: ImageSpec, root: Path, upstream_keys: Iterable[str]) -> str:
    """Sha256 over what decides the image: Containerfile, copied sources, build args, upstream keys."""
    digest = hashlib.sha256()
    containerfile = (root / spec.containerfile).read_text()
    digest.update(f"containerfile {spec.containerfile}\n{containerfile}\n".encode())
    context = (root / spec.context).resolve()
    for source in copied_sources(containerfile):
        _hash_path(digest, context, source)
    for name, value in sorted(spec.build_args):
        digest.update(f"arg {name}={value}\n".encode())
    for key in upstream_keys:
        digest.update(f"upstream {key}\n".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def image_keys(specs: Iterable[ImageSpec], root: Path, base_key: str) -> dict[str, str]:
    """Each image's key, in dependency order (an image's upstream keys are its base's and deps')."""
    keys: dict[str, str] = {}
    for spec in specs:
        upstream = [base_key, *(keys[name] for name in spec.depends_on)]
        keys[spec.name] = content_key(spec, root, upstream)
    return keys


def select(specs: Iterable[ImageSpec], only: Iterable[str] | None) -> list[ImageSpec]:
    """The specs named in `only` (all when None) plus what they depend on, in `IMAGES` order."""
    by_name = {spec.name: spec for spec in specs}
    wanted = set(by_name) if only is None else set(only)
    unknown = wanted - set(by_name)
    if unknown:
        raise ValueError(f"unknown images: {', '.join(sorted(unknown))} (known: {', '.join(by_name)})")
    pending = list(wanted)
    while pending:
        for dependency in by_name[pending.pop()].depends_on:
            if dependency not in wanted:
                wanted.add(dependency)
                pending.append(dependency)
    return [spec for spec in by_name.values() if spec.name in wanted]


def archive_path(spec: ImageSpec, key: str, folder: Path) -> Path:
    return folder / f"{spec.name}-{key}.tar"


def host_volumes(pip_cache: Path, candidates: Mapping[str, str] | None = None) -> list[str]:
    """`--volume` values for RUN steps: the pip cache, and this machine's pip/CA settings if present."""
    extra = candidates if candidates is not None else _HOST_FILES
    volumes = [f"{pip_cache}:/root/.cache/pip"]
    volumes.extend(f"{host}:{inside}:ro" for host, inside in extra.items() if Path(host).is_file())
    return volumes


# This machine reaches PyPI through an egress proxy with its own CA: RUN steps
# need its pip.conf and CA bundle. They are a property of the machine, not of
# the recipe, so they are mounted at build time and never copied into a layer.
_HOST_FILES = {
    "/etc/pip.conf": "/etc/pip.conf",
    "/etc/ssl/certs/ca-certificates.crt": "/etc/ssl/certs/ca-certificates.crt",
}


def bud_command(spec: ImageSpec, root: Path, key: str, volumes: Iterable[str], revision: str) -> list[str]:
    """The `buildah bud` command line for one image."""
    declared = declared_args((root / spec.containerfile).read_text())
    args = dict(spec.build_args)
    machine = {"BASE": BASE_IMAGE, "PIP_CACHE_DIR": "/root/.cache/pip", "REVISION": revision}
    args.update({name: value for name, value in machine.items() if name in declared})
    command = ["buildah", "bud", "--isolation", "chroot", "--layers", "--label", f"{KEY_LABEL}={key}"]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    for volume in volumes:
        command += ["--volume", volume]
    return [*command, "-f", str(root / spec.containerfile), "-t", spec.ref, str(root / spec.context)]


def base_recipe_key() -> str:
    """A key of the base's recipe (the mmdebstrap command): a changed recipe makes a new base."""
    recipe = json.dumps(mmdebstrap_command(Path("TARGET")))
    return hashlib.sha256(recipe.encode()).hexdigest()[:KEY_LENGTH]


def mmdebstrap_command(target: Path) -> list[str]:
    """A minimal Debian root (like debian:bookworm-slim: no docs, man pages or locales) as a tar."""
    excludes = [
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
    ]
    sources = [
        f"deb {MIRROR}/debian {BASE_SUITE} main",
        f"deb {MIRROR}/debian {BASE_SUITE}-updates main",
        f"deb {MIRROR}/debian-security {BASE_SUITE}-security main",
    ]
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        # merged /usr set up by mmdebstrap's hook, not by the usrmerge package (which pulls in perl)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--include=ca-certificates",
        "--components=main",
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt={option}" for option in excludes),
        BASE_SUITE,
        str(target),
        *sources,
    ]


# --- I/O: tools, base, builds, archives ----------------------------------------------------------


def ensure_images(log: Log = _stderr_log, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Build whichever of the images (default: all) are missing or stale; map each ref to its archive.

    Each returned image is also in buildah's storage, tagged with its ref.
    """
    specs = select(IMAGES, only)
    folder = images_dir()
    with _build_lock(log):
        ensure_tools(log)
        base_key = ensure_base(log)
        keys = image_keys(specs, ROOT, base_key)
        revision = _revision()
        archives: dict[str, Path] = {}
        rebuilt = False
        for spec in specs:
            key = keys[spec.name]
            archive = archive_path(spec, key, folder)
            if archive.is_file():
                _ensure_in_storage(spec, key, archive, log)
            else:
                _build(spec, key, archive, revision, log)
                rebuilt = True
            archives[spec.ref] = archive
        if rebuilt:  # the layers of the images' earlier builds, tagged no more
            _run(["buildah", "rmi", "--prune"], log_file=None, check=False)
    return archives


def ensure_tools(log: Log) -> None:
    """Install buildah and mmdebstrap from Debian when they are missing (needs root)."""
    ensure_packages(BUILD_PACKAGES, log)


def ensure_base(log: Log) -> str:
    """The Debian base, made once by mmdebstrap and imported into buildah; returns its key.

    The tar is named by its recipe's key, its key is its sha256: a new recipe, or a tar made
    afresh, gives every image a new key.
    """
    folder = images_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tar = folder / f"debian-{BASE_SUITE}-{base_recipe_key()}.tar"
    digest_file = tar.with_suffix(".sha256")
    if not tar.is_file() or not digest_file.is_file():
        started = time.monotonic()
        log(f"Making the Debian {BASE_SUITE} base with mmdebstrap; first time only")
        partial = tar.with_suffix(".partial.tar")  # mmdebstrap picks the format by the extension
        partial.unlink(missing_ok=True)
        _run(mmdebstrap_command(partial), log_file=None)
        digest_file.write_text(_file_sha256(partial) + "\n")
        partial.rename(tar)
        for stale in folder.glob(f"debian-{BASE_SUITE}*.tar"):
            if stale != tar:
                stale.unlink()
                stale.with_suffix(".sha256").unlink(missing_ok=True)
        log(f"Made {tar.name} ({_size(tar)}) in {time.monotonic() - started:.0f} s")
    key = digest_file.read_text().strip()[:KEY_LENGTH]
    if _stored_key(BASE_IMAGE) != key:
        log(f"Importing {tar.name} into buildah as {BASE_IMAGE}")
        container = _run(["buildah", "from", "scratch"], log_file=None).strip()
        try:
            _run(["buildah", "add", "--quiet", container, str(tar), "/"], log_file=None)
            config = ["--cmd", '["/bin/bash"]', "--label", f"{KEY_LABEL}={key}"]
            _run(["buildah", "config", *config, container], log_file=None)
            _run(["buildah", "commit", "--quiet", container, BASE_IMAGE], log_file=None)
        finally:
            subprocess.run(["buildah", "rm", container], check=False, capture_output=True)
    return key


def _build(spec: ImageSpec, key: str, archive: Path, revision: str, log: Log) -> None:
    logs = images_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{spec.name}-{key}.log"
    pip_cache = cache_root() / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"Building {spec.ref} (key {key}; log {log_file})")
    _run(bud_command(spec, ROOT, key, host_volumes(pip_cache), revision), log_file=log_file)
    built = time.monotonic()
    log(f"Built {spec.ref} in {built - started:.0f} s; exporting to {archive}")
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    destination = f"oci-archive:{partial}:{spec.ref}"
    # gzip layers: buildah 1.28 compresses oci-archive layers even with --disable-compression
    _run(["buildah", "push", "--quiet", spec.ref, destination], log_file=log_file)
    partial.rename(archive)
    for stale in archive.parent.glob(f"{spec.name}-*.tar"):
        if stale != archive and re.fullmatch(rf"{re.escape(spec.name)}-[0-9a-f]+\.tar", stale.name):
            stale.unlink()
    log(f"Exported {archive.name} ({_size(archive)}) in {time.monotonic() - built:.0f} s")


def _ensure_in_storage(spec: ImageSpec, key: str, archive: Path, log: Log) -> None:
    """An image whose archive is cached is loaded back into buildah if its storage lost it."""
    if _stored_key(spec.ref) == key:
        return
    log(f"Loading {spec.ref} into buildah from {archive.name}")
    image_id = _run(["buildah", "pull", "--quiet", f"oci-archive:{archive}"], log_file=None).strip()
    _run(["buildah", "tag", image_id, spec.ref], log_file=None)


def _stored_key(ref: str) -> str | None:
    """The build key label of `ref` in buildah's storage, or None when it is not there."""
    result = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}
    value = labels.get(KEY_LABEL)
    return value if isinstance(value, str) else None


def _revision() -> str:
    """The commit the images are labelled with (not part of the key: same content, same image)."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=False, capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _run(command: list[str], log_file: Path | None, check: bool = True) -> str:
    """Run a command; its output goes to `log_file` (appended) or is captured and returned."""
    if log_file is not None:
        with log_file.open("a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            result = subprocess.run(command, check=False, stdout=out, stderr=subprocess.STDOUT)
        if check and result.returncode != 0:
            tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
            raise RuntimeError(f"{command[0]} {command[1]} failed (exit {result.returncode}):\n{tail}")
        return ""
    captured = subprocess.run(command, check=False, capture_output=True, text=True)
    if check and captured.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command[:3])} failed (exit {captured.returncode}):\n{captured.stderr[-4000:]}"
        )
    return captured.stdout


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


@contextlib.contextmanager
def _build_lock(log: Log) -> Iterator[None]:
    """One image build at a time per cache: concurrent callers wait, then find the archives."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / "build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"Waiting for another image build to finish ({images_dir() / 'build.lock'})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraplex.e2e.images",
        description="Build loraplex's container images with buildah and export them as OCI archives.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[spec.name for spec in IMAGES],
        help="build only this image (and what it is built on); repeatable",
    )
    args = parser.parse_args(argv)
    for ref, archive in ensure_images(only=args.only).items():
        print(f"{ref} {archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

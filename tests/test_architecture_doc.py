"""docs/architecture.md's module map lists every module once, in the layer the contracts give it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP_ROW = re.compile(r"^\| `(?P<path>[\w/]+\.py)` \| (?P<layer>[^|]+?) \| (?P<job>.+) \|$")
SOURCE_FOLDERS = [
    "loraplex",
    "loraplex/api",
    "operator",
    "worker",
    "worker/agent",
    "worker/trainer",
    "router",
    "e2e",
]
# The operator contract's layers, top to bottom, as the map names them.
OPERATOR_LAYER_NAMES = ["wiring", "kopf handlers", "cluster I/O", "controllers", "planning"]


def module_map() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        if match := MAP_ROW.match(line):
            assert match["path"] not in rows, f"{match['path']} is listed twice"
            assert match["job"].strip(), f"{match['path']} has no job"
            rows[match["path"]] = match["layer"]
    return rows


def source_modules() -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for folder in SOURCE_FOLDERS
        for path in (ROOT / folder).glob("*.py")
        if not path.parent.is_symlink()
    }


def operator_layers() -> dict[str, str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["name"].startswith("Operator layers")]
    assert len(layers) == len(OPERATOR_LAYER_NAMES)
    return {
        f"operator/{module.strip()}.py": name
        for line, name in zip(layers, OPERATOR_LAYER_NAMES, strict=True)
        for module in re.split(r"[|:]", line)
    }


def test_the_module_map_lists_every_module_and_nothing_else() -> None:
    listed = module_map().keys()
    assert sorted(source_modules() - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - source_modules()) == [], "docs/architecture.md lists modules that do not exist"


def test_each_operator_module_is_in_the_layer_the_contract_gives_it() -> None:
    documented = {path: layer for path, layer in module_map().items() if path.startswith("operator/")}
    assert documented == operator_layers()

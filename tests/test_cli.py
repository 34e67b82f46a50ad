"""The `loraplex` command where only some extras are installed, as in the trainer image.

The trainer image installs `loraplex[worker]` only: no aiohttp, PyJWT or limits
(the router's and agent's `[serving]` dependencies). Its pods run `loraplex
trainer`, so the command must parse and run there; a command whose
dependencies are missing says what to install instead of failing on import.
"""

from __future__ import annotations

import subprocess
import sys

SERVING_ONLY = ("aiohttp", "jwt", "limits")  # the [serving] extra's imports (pyproject.toml)


def run_without(modules: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    """`loraplex *argv` in a fresh interpreter where importing any of `modules` fails."""
    code = (
        "import sys\n"
        f"for name in {modules!r}: sys.modules[name] = None  # import raises ModuleNotFoundError\n"
        "from loraplex.cli import main\n"
        f"raise SystemExit(main({list(argv)!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_trainer_command_runs_without_the_serving_extras() -> None:
    result = run_without(SERVING_ONLY, "trainer", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: loraplex trainer" in result.stdout


def test_a_command_whose_extras_are_missing_says_what_to_install() -> None:
    result = run_without(SERVING_ONLY, "router", "--base-model", "tiny", "--port", "8000")
    assert result.returncode == 2
    assert "loraplex router: this installation lacks" in result.stderr
    assert "loraplex[serving]" in result.stderr


def test_with_every_extra_the_router_parses_its_own_flags() -> None:
    result = run_without((), "router", "--help")
    assert result.returncode == 0, result.stderr
    assert "--base-model" in result.stdout

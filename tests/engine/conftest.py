"""Fixtures for tests of the agent with the real vLLM engine (the `vllm` fixture is in tests/conftest.py).

Each test starts its own agent with its own disk cache,
which on start unloads whatever earlier tests left registered (adapters of
unknown origin), so tests do not see each other's adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.e2e.tiny_model import AdapterFiles
from loraplex.e2e.worker_processes import AgentProcess, VllmProcess


def wanted_entry(adapter: AdapterFiles, tier: str = "CPU", name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or adapter.name,
        "uri": f"file://{adapter.path}",
        "sha256": adapter.sha256,
        "rank": adapter.rank,
        "tier": tier,
    }


def write_wanted(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the agent's wanted file atomically (the agent polls it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"adapters": entries}))
    tmp.replace(path)


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(vllm: VllmProcess, tmp_path: Path) -> Iterator[AgentFactory]:
    agents: list[AgentProcess] = []

    def start(entries: list[dict[str, Any]] | None = None, **options: Any) -> AgentProcess:
        wanted_file = tmp_path / "wanted.yaml"
        if entries is not None or not wanted_file.exists():
            write_wanted(wanted_file, entries or [])
        options.setdefault("cache_dir", tmp_path / "cache")
        agent = AgentProcess(
            vllm, log_path=tmp_path / f"agent-{len(agents)}.log", wanted_file=wanted_file, **options
        )
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()

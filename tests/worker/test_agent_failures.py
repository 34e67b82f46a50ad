"""The failures an agent reports are current: an adapter's failure goes once it left the worker or loaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from loraplex.worker.agent.agent import Agent
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.residency import Slots, Tier, WantedAdapter
from loraplex.worker.agent.vllm_client import EngineAdapter, VllmClient, VllmError
from loraplex.worker.digest import tree_digest


class FakeVllm(VllmClient):
    """A double of vLLM's runtime LoRA API; `refuse` makes the next loads fail as vLLM would."""

    def __init__(self) -> None:
        super().__init__("http://vllm.invalid", None)
        self.loaded: dict[str, str] = {}
        self.refuse = False

    async def adapters(self) -> list[EngineAdapter]:
        return [EngineAdapter(name, path) for name, path in self.loaded.items()]

    async def load(self, name: str, path: str, *, inplace: bool = False) -> None:
        if self.refuse:
            raise VllmError(400, "rank 64 is above max_lora_rank 16")
        self.loaded[name] = path

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)

    async def warm(self, name: str) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def adapter_files(root: Path) -> tuple[Path, str]:
    """An adapter directory outside the source location, and its digest."""
    files = root / "built" / "sql-gen"
    files.mkdir(parents=True)
    (files / "adapter_config.json").write_text('{"r": 8}')
    return files, tree_digest(files)


def agent_on(tmp_path: Path, vllm: FakeVllm, clock: Clock) -> Agent:
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    agent = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=4), clock=clock
    )
    agent.engine_ready = True
    return agent


def failures(agent: Agent) -> list[tuple[str, str]]:
    return [(f["name"], f["reason"]) for f in agent.report()["failures"]]


def sql_gen(source: Path, digest: str, tier: Tier = "CPU") -> WantedAdapter:
    return WantedAdapter("sql-gen", f"file://{source}", digest, tier)


async def test_the_failure_of_an_adapter_moved_off_the_worker_is_no_longer_reported(tmp_path: Path) -> None:
    _, digest = adapter_files(tmp_path)
    agent = agent_on(tmp_path, FakeVllm(), Clock())
    agent.set_wanted([sql_gen(tmp_path / "missing", digest)])
    await agent.converge()
    assert failures(agent) == [("sql-gen", "SourceNotFound")]
    agent.set_wanted([])  # the operator placed it elsewhere
    await agent.converge()
    assert failures(agent) == []


async def test_a_disk_tier_adapter_whose_source_came_back_is_reported_without_its_failure(
    tmp_path: Path,
) -> None:
    files, digest = adapter_files(tmp_path)
    clock = Clock()
    agent = agent_on(tmp_path, FakeVllm(), clock)
    source = tmp_path / "store" / "sql-gen"
    agent.set_wanted([sql_gen(source, digest, "Disk")])
    await agent.converge()
    assert failures(agent) == [("sql-gen", "SourceNotFound")]
    source.parent.mkdir()
    shutil.copytree(files, source)
    clock.now += 60  # past the backoff
    await agent.converge()
    report: dict[str, Any] = agent.report()
    assert [(a["name"], a["tier"]) for a in report["adapters"]] == [("sql-gen", "Disk")]
    assert report["failures"] == []


async def test_a_load_failure_goes_once_that_revision_loads(tmp_path: Path) -> None:
    files, digest = adapter_files(tmp_path)
    vllm, clock = FakeVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    agent.set_wanted([sql_gen(files, digest)])
    vllm.refuse = True
    await agent.converge()
    assert failures(agent) == [("sql-gen", "LoadFailed")]
    vllm.refuse = False
    clock.now += 60
    await agent.converge()
    assert failures(agent) == []
    assert "sql-gen" in vllm.loaded

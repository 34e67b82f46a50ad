"""A new revision of an adapter vLLM serves is swapped in beside the old one, never loaded in place.

vLLM's `load_inplace` keeps the flag on the adapter, so every later request for it reloads its files
(vLLM issue 33791). The agent registers the new revision under an engine name of its own, reports
it, and unloads the old copy only once a report naming the new one is out and the drain after it
has passed; requests for the old name vLLM already took finish.
"""

from __future__ import annotations

from pathlib import Path

from loraplex.api.agent import AgentResidency
from loraplex.api.tiers import Tier
from loraplex.worker.agent.agent import Agent
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.residency import Slots, WantedAdapter
from loraplex.worker.agent.vllm_client import EngineAdapter, VllmClient
from loraplex.worker.digest import tree_digest
from tests.worker.clock import Clock

RETIRE_AFTER = 10.0


class RecordingVllm(VllmClient):
    """A double of vLLM's runtime LoRA API that records every call the agent makes."""

    def __init__(self) -> None:
        super().__init__("http://vllm.invalid", None)
        self.loaded: dict[str, str] = {}  # engine name -> path
        self.calls: list[tuple[str, str]] = []
        self.exposition = ""

    async def adapters(self) -> list[EngineAdapter]:
        return [EngineAdapter(name, path) for name, path in self.loaded.items()]

    async def load(self, name: str, path: str) -> None:
        assert name not in self.loaded, f"{name} is registered already: vLLM refuses it without load_inplace"
        self.calls.append(("load", name))
        self.loaded[name] = path

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.pop(name, None)

    async def warm(self, name: str) -> None:
        self.calls.append(("warm", name))

    async def metrics_text(self) -> str:
        return self.exposition


def revision(root: Path, rank: int) -> tuple[Path, str]:
    files = root / f"r{rank}" / "sql-gen"
    files.mkdir(parents=True)
    (files / "adapter_config.json").write_text(f'{{"r": {rank}}}')
    return files, tree_digest(files)


def sql_gen(files: Path, digest: str, tier: Tier = Tier.GPU) -> WantedAdapter:
    return WantedAdapter("sql-gen", f"file://{files}", digest, tier)


def agent_on(tmp_path: Path, vllm: RecordingVllm, clock: Clock) -> Agent:
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    agent = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=2), clock=clock,
        wall_clock=clock, retire_after=RETIRE_AFTER,
    )  # fmt: skip
    agent.engine_ready = True
    return agent


def served(agent: Agent) -> list[tuple[str, str | None, str | None]]:
    """(name, revision, engine name) of each copy the agent reports in vLLM."""
    return [(a.name, a.sha256, a.engine_name) for a in agent.residency().adapters if a.tier != Tier.DISK]


async def test_a_new_revision_is_loaded_under_its_own_name_and_the_old_one_goes_after_the_drain(
    tmp_path: Path,
) -> None:
    (old_files, old), (new_files, new) = revision(tmp_path, 8), revision(tmp_path, 16)
    vllm, clock = RecordingVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    agent.set_wanted([sql_gen(old_files, old)])
    await agent.converge()
    assert vllm.calls == [("load", "sql-gen"), ("warm", "sql-gen")]
    assert served(agent) == [("sql-gen", old, None)]  # a first revision: the adapter's own name

    vllm.calls.clear()
    agent.set_wanted([sql_gen(new_files, new)])
    await agent.converge()
    engine_name = f"sql-gen@{new[:12]}"
    assert vllm.calls == [("load", engine_name), ("warm", engine_name)]  # warmed before it is reported
    assert served(agent) == [("sql-gen", new, engine_name)]
    assert set(vllm.loaded) == {"sql-gen", engine_name}  # the old copy still serves whoever has not moved
    assert agent.metrics.swaps._value.get() == 1

    await agent.converge()
    assert "sql-gen" in vllm.loaded  # not before a report naming the new copy is out
    await agent.publish()  # without a WorkerPlacement the agent's own report is what routers read
    clock.now += RETIRE_AFTER - 1
    await agent.converge()
    assert "sql-gen" in vllm.loaded
    clock.now += 1
    await agent.converge()
    assert vllm.loaded == {engine_name: str(agent.cache.path(new))}
    assert vllm.calls[-1] == ("unload", "sql-gen")
    assert served(agent) == [("sql-gen", new, engine_name)]

    agent.set_wanted([sql_gen(old_files, old)])  # rolled back: the adapter's own name is free again
    await agent.converge()
    assert served(agent) == [("sql-gen", old, None)]
    assert set(vllm.loaded) == {"sql-gen", engine_name}


async def test_the_drain_starts_only_once_a_status_naming_the_new_copy_is_written(tmp_path: Path) -> None:
    (old_files, old), (new_files, new) = revision(tmp_path, 8), revision(tmp_path, 16)
    vllm, clock = RecordingVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    queued: list[AgentResidency] = []

    async def queue(report: AgentResidency) -> None:  # as the WorkerPlacement source does
        queued.append(report)

    agent.on_report = queue
    agent.set_wanted([sql_gen(old_files, old)])
    await agent.converge()
    await agent.publish()
    before_swap = queued[-1]
    agent.set_wanted([sql_gen(new_files, new)])
    await agent.converge()
    await agent.publish()  # queued, not written yet
    agent.reported(before_swap)  # a write of a report from before the swap: routers still use the old name
    clock.now += 10 * RETIRE_AFTER
    await agent.converge()
    assert "sql-gen" in vllm.loaded

    agent.reported(queued[-1])  # the status naming the new copy is written
    await agent.converge()
    assert "sql-gen" in vllm.loaded
    clock.now += RETIRE_AFTER
    await agent.converge()
    assert set(vllm.loaded) == {f"sql-gen@{new[:12]}"}


async def test_a_revision_wanted_again_while_its_copy_drains_serves_again_without_a_load(
    tmp_path: Path,
) -> None:
    (old_files, old), (new_files, new) = revision(tmp_path, 8), revision(tmp_path, 16)
    vllm = RecordingVllm()
    agent = agent_on(tmp_path, vllm, Clock())
    agent.set_wanted([sql_gen(old_files, old)])
    await agent.converge()
    agent.set_wanted([sql_gen(new_files, new)])
    await agent.converge()
    vllm.calls.clear()
    agent.set_wanted([sql_gen(old_files, old)])  # rolled back before the old copy went
    await agent.converge()
    assert vllm.calls == []
    assert served(agent) == [("sql-gen", old, None)]
    assert set(agent.retiring) == {f"sql-gen@{new[:12]}"}


async def test_a_restarted_agent_maps_engine_names_back_to_adapters_and_keeps_the_wanted_revision(
    tmp_path: Path,
) -> None:
    (old_files, old), (new_files, new) = revision(tmp_path, 8), revision(tmp_path, 16)
    vllm, clock = RecordingVllm(), Clock()
    first = agent_on(tmp_path, vllm, clock)
    first.set_wanted([sql_gen(old_files, old)])
    await first.converge()
    first.set_wanted([sql_gen(new_files, new)])
    await first.converge()  # the agent dies mid-swap: vLLM has both copies
    vllm.calls.clear()

    second = agent_on(tmp_path, vllm, clock)
    second.set_wanted([sql_gen(new_files, new)])
    await second.resync()
    engine_name = f"sql-gen@{new[:12]}"
    assert served(second) == [("sql-gen", new, engine_name)]
    assert set(second.retiring) == {"sql-gen"}
    labels = f'max_lora="1",running_lora_adapters="{engine_name}",waiting_lora_adapters=""'
    vllm.exposition = f"vllm:lora_requests_info{{{labels}}} {clock.now}\n"
    await second.read_activity()
    assert [a.active for a in second.residency().adapters] == [True]  # vLLM's use of the engine name counts
    await second.converge()
    await second.publish()
    clock.now += RETIRE_AFTER
    await second.converge()
    assert set(vllm.loaded) == {engine_name}
    assert [call for call, _ in vllm.calls if call == "load"] == []  # nothing reloaded

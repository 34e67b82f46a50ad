"""The agent's record of what vLLM holds survives a load that lands while it reads vLLM's list."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loraplex.worker.agent.agent import Agent
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.residency import Slots
from loraplex.worker.agent.vllm_client import EngineAdapter, VllmClient
from loraplex.worker.digest import tree_digest


class SlowListingVllm(VllmClient):
    """A double of vLLM's runtime LoRA API whose adapter list is answered only when released."""

    def __init__(self) -> None:
        super().__init__("http://vllm.invalid", None)
        self.loaded: dict[str, str] = {}
        self.listing = asyncio.Event()
        self.release = asyncio.Event()

    async def adapters(self) -> list[EngineAdapter]:
        snapshot = [EngineAdapter(name, path) for name, path in self.loaded.items()]  # as vLLM answered
        self.listing.set()
        await self.release.wait()
        return snapshot

    async def load(self, name: str, path: str) -> None:
        self.loaded[name] = path


async def test_a_catalog_adapter_ensured_while_vllm_lists_its_adapters_stays_in_the_report(
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog"
    (catalog / "user-7").mkdir(parents=True)
    (catalog / "user-7" / "adapter_config.json").write_text('{"r": 8}')
    (catalog / "user-7.sha256").write_text(tree_digest(catalog / "user-7"))
    vllm = SlowListingVllm()
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    agent = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=4),
        catalog_template=f"file://{catalog}/{{adapter}}",
    )  # fmt: skip
    agent.engine_ready = True  # vLLM answered an earlier pass
    resync = asyncio.create_task(agent.resync())
    await vllm.listing.wait()  # the pass is reading vLLM's list when the router's ensure comes
    ensure = asyncio.create_task(agent.ensure("user-7"))
    await asyncio.sleep(0.2)  # time for the ensure to fetch and load, unless the pass holds the engine
    vllm.release.set()
    await resync
    assert (await ensure).name == "user-7"
    assert "user-7" in vllm.loaded
    assert "user-7" in {entry["name"] for entry in agent.report()["adapters"]}

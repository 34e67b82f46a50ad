"""What an agent reports is current: an adapter's failure goes once it left the worker or loaded, and an
adapter counts as active only while vLLM ran it (or the router ensured it) within the active window. And
what it loads on demand: a named adapter placed elsewhere is read from its LoRAAdapter when the router
says it is named."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from loraplex.api.adapter import AdapterSource, live_source
from loraplex.worker.agent.activity import last_use
from loraplex.worker.agent.adapter_lookup import LookupFailed
from loraplex.worker.agent.agent import MAX_ATTEMPT_RECORDS, Agent, EnsureError
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher
from loraplex.worker.agent.residency import Slots, Tier, WantedAdapter
from loraplex.worker.agent.vllm_client import EngineAdapter, VllmClient, VllmError
from loraplex.worker.digest import tree_digest
from tests.worker.clock import Clock


class FakeVllm(VllmClient):
    """A double of vLLM's runtime LoRA API; `refuse` makes the next loads fail as vLLM would."""

    def __init__(self) -> None:
        super().__init__("http://vllm.invalid", None)
        self.loaded: dict[str, str] = {}
        self.refuse = False
        self.exposition = ""  # what GET /metrics answers

    async def adapters(self) -> list[EngineAdapter]:
        return [EngineAdapter(name, path) for name, path in self.loaded.items()]

    async def load(self, name: str, path: str) -> None:
        if self.refuse:
            raise VllmError(400, "rank 64 is above max_lora_rank 16")
        self.loaded[name] = path

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)

    async def warm(self, name: str) -> None:
        pass

    async def metrics_text(self) -> str:
        return self.exposition


def adapter_files(root: Path) -> tuple[Path, str]:
    """An adapter directory outside the source location, and its digest."""
    files = root / "built" / "sql-gen"
    files.mkdir(parents=True)
    (files / "adapter_config.json").write_text('{"r": 8}')
    return files, tree_digest(files)


def agent_on(tmp_path: Path, vllm: FakeVllm, clock: Clock) -> Agent:
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    agent = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=4), clock=clock,
        wall_clock=clock, active_window=300.0, activity_interval=10.0,
    )  # fmt: skip
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


def lora_info(*series: tuple[str, str, float]) -> str:
    """vLLM's exposition with one `vllm:lora_requests_info` series per (running, waiting, time)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="tiny"} 1.0',
        "# HELP vllm:lora_requests_info Running stats on lora requests.",
        "# TYPE vllm:lora_requests_info gauge",
    ]
    lines += [
        f'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="{running}",'
        f'waiting_lora_adapters="{waiting}"}} {when:.6e}'
        for running, waiting, when in series
    ]
    return "\n".join(lines) + "\n"


def test_an_adapters_last_use_is_the_newest_series_that_names_it_running_or_waiting() -> None:
    text = lora_info(("sql-gen,chat", "", 1000.0), ("sql-gen", "news", 1200.5), ("", "", 1300.0))
    assert last_use(text) == {"sql-gen": 1200.5, "chat": 1000.0, "news": 1200.5}
    assert last_use("") == {}


def active(agent: Agent) -> list[str]:
    return [a["name"] for a in agent.report()["adapters"] if a.get("active")]


async def test_an_adapter_is_active_while_used_within_the_window_and_idle_after(tmp_path: Path) -> None:
    files, digest = adapter_files(tmp_path)
    vllm, clock = FakeVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    agent.set_wanted([sql_gen(files, digest)])
    await agent.converge()
    assert active(agent) == []  # loaded, never asked for
    assert agent.report()["adapters"][0].get("active") is None  # idle: the field is left out

    vllm.exposition = lora_info(("sql-gen", "", clock.now - 5))
    await agent.read_activity()
    assert active(agent) == ["sql-gen"]
    assert agent.metrics.registry.get_sample_value("loraplex_agent_active_adapters") == 1
    vllm.exposition = lora_info(("sql-gen", "", clock.now + 5))
    clock.now += 5
    await agent.read_activity()  # within the interval: vLLM is not read again, this use is not seen
    clock.now += 297
    assert active(agent) == []  # 302 s since the use seen before, which the window has passed
    await agent.ensure("sql-gen")  # the router asked for it: a request is on its way
    assert active(agent) == ["sql-gen"]


async def test_an_adapter_the_router_has_loaded_on_demand_is_active(tmp_path: Path) -> None:
    files, digest = adapter_files(tmp_path)
    agent = agent_on(tmp_path, FakeVllm(), Clock())
    agent.set_wanted([sql_gen(files, digest, "Disk")])
    await agent.converge()
    assert active(agent) == []
    ensured = await agent.ensure("sql-gen")  # from disk into vLLM, for the request that follows
    assert (ensured.tier, active(agent)) == ("CPU", ["sql-gen"])


async def test_only_the_activity_of_adapters_held_is_kept(tmp_path: Path) -> None:
    """vLLM's series outlive the adapters they name: the record stays as small as what the worker holds."""
    files, digest = adapter_files(tmp_path)
    vllm, clock = FakeVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    agent.set_wanted([sql_gen(files, digest)])
    await agent.converge()
    vllm.exposition = lora_info(("sql-gen,user-1", "user-2", clock.now))
    await agent.read_activity()
    assert agent.activity.active(clock.now) == {"sql-gen"}
    agent.set_wanted([])
    await agent.converge()
    clock.now += 10
    await agent.read_activity()
    assert agent.activity.active(clock.now) == set()


async def test_a_copy_loaded_on_demand_that_vllm_keeps_running_outlasts_one_loaded_later_and_left_idle(
    tmp_path: Path,
) -> None:
    """The router sends requests for a copy vLLM holds straight to vLLM: only vLLM's activity says it is
    used, and the agent keeps its on-demand copies most recently used first, not in load order."""
    catalog = tmp_path / "catalog"
    for name in ("user-1", "user-2", "user-3"):
        (catalog / name).mkdir(parents=True)
        (catalog / name / "adapter_config.json").write_text(f'{{"r": 8, "name": "{name}"}}')
        (catalog / f"{name}.sha256").write_text(tree_digest(catalog / name))
    vllm, clock = FakeVllm(), Clock()
    cache = DiskCache(tmp_path / "cache", budget_bytes=1 << 20)
    agent = Agent(
        worker="w0", vllm=vllm, fetcher=Fetcher(cache), cache=cache, slots=Slots(gpu=1, cpu=2), clock=clock,
        wall_clock=lambda: clock.now + 5000.0, catalog_template=f"file://{catalog}/{{adapter}}",
    )  # fmt: skip
    agent.engine_ready = True
    agent.set_wanted([])  # no named adapters: both CPU slots are for copies loaded on demand
    await agent.ensure("user-1")
    clock.now += 10
    await agent.ensure("user-2")
    clock.now += 10
    vllm.exposition = lora_info(("user-1", "", clock.now + 5000.0 - 2))  # requests for user-1 ran in vLLM
    await agent.read_activity()
    clock.now += 10
    await agent.ensure("user-3")  # a third copy for two slots: the least recently used goes
    await agent.converge()
    assert sorted(vllm.loaded) == ["user-1", "user-3"]


async def test_the_backoff_record_of_failed_revisions_stays_bounded(tmp_path: Path) -> None:
    agent = agent_on(tmp_path, FakeVllm(), Clock())
    for i in range(MAX_ATTEMPT_RECORDS + 10):
        agent._fail(f"user-{i}", None, "SourceNotFound", "gone", on_demand=True)
    agent._fail("user-0", None, "SourceNotFound", "gone", on_demand=True)  # forgotten: backoff starts over
    assert agent.failures["user-0"].retry_at == agent.clock() + 5.0
    agent._fail("user-20", None, "SourceNotFound", "gone", on_demand=True)  # remembered: twice as long
    assert agent.failures["user-20"].retry_at == agent.clock() + 10.0
    assert len(agent._attempts) == MAX_ATTEMPT_RECORDS


def lora_adapter(base_model: str, uri: str, digest: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = (
        {"name": "sql-gen", "deletionTimestamp": "2026-11-23T00:00:00Z"} if deleting else {}
    )
    return {"metadata": meta, "spec": {"baseModel": base_model, "source": {"uri": uri, "sha256": digest}}}


def test_a_lora_adapter_is_a_source_only_for_its_own_base_model_and_while_it_is_not_being_deleted() -> None:
    assert live_source(lora_adapter("tiny", "file:///a", "d" * 64), "tiny") == AdapterSource(
        uri="file:///a", sha256="d" * 64
    )
    assert live_source(lora_adapter("other", "file:///a", "d" * 64), "tiny") is None
    assert live_source(lora_adapter("tiny", "file:///a", "d" * 64, deleting=True), "tiny") is None
    assert live_source({"metadata": {}, "spec": {"baseModel": "tiny"}}, "tiny") is None


async def test_a_named_adapter_placed_elsewhere_loads_from_its_lora_adapter_when_the_router_says_named(
    tmp_path: Path,
) -> None:
    files, digest = adapter_files(tmp_path)
    looked_up: list[str] = []

    async def lookup(name: str) -> AdapterSource | None:
        looked_up.append(name)
        return AdapterSource(uri=f"file://{files}", sha256=digest) if name == "sql-gen" else None

    vllm = FakeVllm()
    agent = agent_on(tmp_path, vllm, Clock())
    agent.adapter_lookup = lookup
    agent.set_wanted([])  # its WorkerPlacement does not list it
    with pytest.raises(EnsureError) as unnamed:
        await agent.ensure("sql-gen")  # a catalog name, as far as the agent knows: no catalog here
    assert (unnamed.value.status, looked_up) == (404, [])  # catalog traffic never asks the API server
    ensured = await agent.ensure("sql-gen", named=True)
    assert (ensured.tier, looked_up, list(vllm.loaded)) == ("CPU", ["sql-gen"], ["sql-gen"])
    assert [(a["name"], a.get("catalog", False)) for a in agent.report()["adapters"]] == [("sql-gen", False)]
    with pytest.raises(EnsureError) as unknown:
        await agent.ensure("gone", named=True)
    assert unknown.value.status == 404


async def test_a_named_adapter_held_on_demand_goes_when_its_worker_placement_says_unload_it(
    tmp_path: Path,
) -> None:
    files, digest = adapter_files(tmp_path)

    async def lookup(name: str) -> AdapterSource | None:
        return AdapterSource(uri=f"file://{files}", sha256=digest)

    vllm = FakeVllm()
    agent = agent_on(tmp_path, vllm, Clock())
    agent.adapter_lookup = lookup
    agent.set_wanted([])
    await agent.ensure("sql-gen", named=True)  # spilled here past its placement
    assert [(a["name"], a.get("onDemand")) for a in agent.report()["adapters"]] == [("sql-gen", True)]
    await agent.converge()
    assert "sql-gen" in vllm.loaded  # room to spare: it would stay until it aged out
    agent.set_wanted([], unload=["sql-gen"])  # its LoRAAdapter is being deleted
    await agent.converge()
    assert (vllm.loaded, agent.report()["adapters"]) == ({}, [])
    with pytest.raises(EnsureError) as refused:
        await agent.ensure("sql-gen", named=True)  # a router that has not seen the deletion yet
    assert refused.value.status == 404
    assert vllm.loaded == {}


async def test_a_failed_lookup_answers_503_so_the_router_retries_later(tmp_path: Path) -> None:
    async def lookup(name: str) -> AdapterSource | None:
        raise LookupFailed(f"reading LoRAAdapter {name} answered 500: Internal Server Error")

    agent = agent_on(tmp_path, FakeVllm(), Clock())
    agent.adapter_lookup = lookup
    agent.set_wanted([])
    with pytest.raises(EnsureError) as failed:
        await agent.ensure("sql-gen", named=True)
    assert (failed.value.status, failed.value.reason) == (503, "AdapterLookupFailed")


async def test_a_spilled_copy_of_another_revision_is_reloaded_and_a_router_behind_the_times_reloads_nothing(
    tmp_path: Path,
) -> None:
    old_files, old = adapter_files(tmp_path / "old")
    new_files = tmp_path / "new" / "sql-gen"
    new_files.mkdir(parents=True)
    (new_files / "adapter_config.json").write_text('{"r": 16}')  # retrained
    new = tree_digest(new_files)
    current = {"source": AdapterSource(uri=f"file://{old_files}", sha256=old)}
    lookups: list[str] = []

    async def lookup(name: str) -> AdapterSource | None:
        lookups.append(name)
        return current["source"]

    vllm = FakeVllm()
    agent = agent_on(tmp_path, vllm, Clock())
    agent.adapter_lookup = lookup
    agent.set_wanted([])
    await agent.ensure("sql-gen", named=True, sha256=old)  # spilled here
    await agent.ensure("sql-gen", named=True, sha256=old)  # the next request: a local compare only
    assert (len(lookups), agent.registered["sql-gen"].sha256) == (1, old)
    current["source"] = AdapterSource(
        uri=f"file://{new_files}", sha256=new
    )  # the TrainingJob published a revision
    ensured = await agent.ensure("sql-gen", named=True, sha256=new)
    assert (len(lookups), agent.registered["sql-gen"].sha256) == (2, new)
    # vLLM serves the new files under a name of their own, beside the old ones until routers moved
    assert ensured.engine_name == f"sql-gen@{new[:12]}"
    assert new in vllm.loaded[f"sql-gen@{new[:12]}"]
    assert old in vllm.loaded["sql-gen"]
    loaded = dict(vllm.loaded)
    await agent.ensure("sql-gen", named=True, sha256=old)  # a router that has not seen the new revision
    assert (len(lookups), agent.registered["sql-gen"].sha256, vllm.loaded) == (3, new, loaded)

"""What the agent reads of its wanted set: the adapters to hold and the adapters being deleted to drop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loraplex.worker.agent.placement_source import FileSource, WorkerPlacementSource
from loraplex.worker.agent.residency import WantedAdapter

SPEC = {
    "adapters": [{"name": "sql-gen", "uri": "file:///a/sql", "sha256": "1" * 64, "tier": "GPU"}],
    "unload": ["code-lazy"],
}


def test_a_worker_placement_delivers_its_adapters_generation_unload_list_and_load_report_wish() -> None:
    delivered: list[tuple[list[WantedAdapter], int | None, list[str], bool]] = []
    obj = {"metadata": {"generation": 3}, "spec": SPEC}
    WorkerPlacementSource._deliver(obj, lambda *args: delivered.append(args))
    asking = {"metadata": {"generation": 4}, "spec": {**SPEC, "reportRequests": True}}
    WorkerPlacementSource._deliver(asking, lambda *args: delivered.append(args))
    WorkerPlacementSource._deliver(None, lambda *args: delivered.append(args))  # the object is gone
    sql_gen = WantedAdapter("sql-gen", "file:///a/sql", "1" * 64, "GPU")
    assert delivered == [
        ([sql_gen], 3, ["code-lazy"], False),
        ([sql_gen], 4, ["code-lazy"], True),
        ([], None, [], False),
    ]


async def test_a_wanted_file_delivers_its_unload_list_too(tmp_path: Path) -> None:
    wanted = tmp_path / "wanted.yaml"
    wanted.write_text('{"adapters": [], "unload": ["code-lazy"]}')
    delivered: asyncio.Queue[tuple[list[WantedAdapter], int | None, list[str], bool]] = asyncio.Queue()
    source = FileSource(wanted, lambda *args: delivered.put_nowait(args), interval=0.01)
    task = asyncio.create_task(source.run())
    try:
        assert await asyncio.wait_for(delivered.get(), 5) == ([], None, ["code-lazy"], False)
    finally:
        task.cancel()


async def test_the_agent_hears_of_a_report_only_once_its_status_is_written() -> None:
    from kubernetes.client import ApiClient

    from loraplex.api.agent import AgentResidency

    source = WorkerPlacementSource(ApiClient(), "ns", "w0", lambda *args: None, min_interval=0.01)
    writes: list[AgentResidency] = []
    attempts = iter([RuntimeError("the API server did not answer"), None])

    def write(report: AgentResidency) -> None:
        failure = next(attempts)
        if failure is not None:
            raise failure
        writes.append(report)

    source._write = write  # type: ignore[method-assign]  # the patch of the status subresource
    written: asyncio.Queue[AgentResidency] = asyncio.Queue()
    source.on_written = written.put_nowait
    task = asyncio.create_task(source._write_loop())
    try:
        report = AgentResidency(worker="w0", engine_ready=True, observed_generation=1)
        await source.report(report)
        assert await asyncio.wait_for(written.get(), 5) == report
        assert writes == [report]  # heard of after the write that succeeded, not the one that failed
    finally:
        task.cancel()

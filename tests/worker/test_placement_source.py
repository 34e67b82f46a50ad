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


def test_a_worker_placement_delivers_its_adapters_generation_and_unload_list() -> None:
    delivered: list[tuple[list[WantedAdapter], int | None, list[str]]] = []
    obj = {"metadata": {"generation": 3}, "spec": SPEC}
    WorkerPlacementSource._deliver(obj, lambda *args: delivered.append(args))
    WorkerPlacementSource._deliver(None, lambda *args: delivered.append(args))  # the object is gone
    assert delivered == [
        ([WantedAdapter("sql-gen", "file:///a/sql", "1" * 64, "GPU")], 3, ["code-lazy"]),
        ([], None, []),
    ]


async def test_a_wanted_file_delivers_its_unload_list_too(tmp_path: Path) -> None:
    wanted = tmp_path / "wanted.yaml"
    wanted.write_text('{"adapters": [], "unload": ["code-lazy"]}')
    delivered: asyncio.Queue[tuple[list[WantedAdapter], int | None, list[str]]] = asyncio.Queue()
    source = FileSource(wanted, lambda *args: delivered.put_nowait(args), interval=0.01)
    task = asyncio.create_task(source.run())
    try:
        assert await asyncio.wait_for(delivered.get(), 5) == ([], None, ["code-lazy"])
    finally:
        task.cancel()

"""Adapters the agents report active rank above idle ones of equal priority: used copies take the GPU
slots of idle ones on their worker, and steady use or idleness moves nothing."""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.adapter_residency import active_adapters
from loraplex.operator.placement import Worker
from loraplex.operator.placement_pass import ParsedSpecs
from loraplex.operator.placement_pass import valid_adapters as _valid_adapters
from loraplex.operator.placement_pass import worker_reports as _reports
from loraplex.operator.placement_sync import FleetSnapshot, PlacementSync

MODEL = BaseModelSpec.model_validate(
    {"model": {"uri": "/models/tiny"}, "engine": {"maxLoras": 2, "maxCpuLoras": 4, "maxLoraRank": 16}}
)
WORKERS = {"w-0": Worker("w-0", node="n-0", zone="z-0", gpu_slots=2, cpu_slots=2, disk_slots=8)}


def adapter_body(name: str) -> dict[str, Any]:
    spec = {"baseModel": "tiny", "rank": 8, "source": {"uri": f"s3://adapters/{name}/", "sha256": "1" * 64}}
    return {"metadata": {"name": name, "namespace": "team", "generation": 1}, "spec": spec}


def reported(placement: dict[str, dict[str, str]], active: set[str]) -> list[dict[str, Any]]:
    """The worker's WorkerPlacement with its agent holding the plan, `active` ones used lately."""
    held = [
        {
            "name": name,
            "sha256": "1" * 64,
            "tier": where["w-0"],
            **({"active": True} if name in active else {}),
        }
        for name, where in sorted(placement.items())
    ]
    return [{"spec": {"worker": "w-0"}, "status": {"adapters": held}}]


class Loop:
    """The placement loop's pure path: reports -> adapters with warmth -> planner."""

    def __init__(self) -> None:
        self.sync, self.parsed = PlacementSync(), ParsedSpecs()
        self.bodies: list[dict[str, Any]] = []

    def create(self, name: str) -> None:
        self.bodies.append(adapter_body(name))

    def pass_(self, placements: list[dict[str, Any]]) -> tuple[dict[str, dict[str, str]], int]:
        active = active_adapters(_reports(placements))
        adapters, self.parsed = _valid_adapters(self.bodies, MODEL, self.parsed, active)
        result = self.sync.sync(FleetSnapshot(WORKERS, {k: a for k, (a, _, _) in adapters.items()}), {})
        return result.placement, result.moved


def tiers(placement: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: where["w-0"] for name, where in placement.items()}


def test_a_used_adapter_takes_the_gpu_slot_of_an_idle_one_of_equal_priority() -> None:
    loop = Loop()
    loop.create("sql")
    loop.create("chat")
    placement, _ = loop.pass_([])
    loop.create("news")  # the GPU slots are taken: the newcomer gets a CPU slot, displacing neither
    placement, _ = loop.pass_(reported(placement, active={"sql", "chat"}))
    assert tiers(placement) == {"sql": "GPU", "chat": "GPU", "news": "CPU"}

    placement, moved = loop.pass_(reported(placement, active={"sql", "news"}))  # chat went idle
    assert tiers(placement) == {"sql": "GPU", "chat": "CPU", "news": "GPU"}
    assert moved == 2

    placement, moved = loop.pass_(reported(placement, active={"sql", "news"}))  # steady use
    assert moved == 0
    placement, moved = loop.pass_(reported(placement, active=set()))  # all idle: equal, nothing swaps
    assert (tiers(placement), moved) == ({"sql": "GPU", "chat": "CPU", "news": "GPU"}, 0)

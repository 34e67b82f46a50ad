"""How many workers a BaseModel runs: enough to hold its adapters warm and, when it sets
`replicas.targetRequestsPerWorker`, to serve its requests, within replicas.min..max.

Every copy an adapter asks for (`replicas`) wants a warm slot, in GPU or in
vLLM's CPU cache (a worker has `max(maxLoras, maxCpuLoras)` of those), every
copy of a pinned adapter wants a GPU slot (`maxLoras` per worker), and the
copies of one adapter sit on different workers. The requests running or
waiting on the workers (each agent's one-minute mean, summed) want one worker
per `targetRequestsPerWorker` of them. The fleet grows at once when
that needs more workers than run, up to `replicas.max`; it shrinks only after
the need has stayed lower for a delay, so a burst of deletes and re-creates
does not roll pods away and back. `replicas.min` is always kept.

Pure: the caller passes the adapters, the current target and `now`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.placement import Adapter


@dataclass(frozen=True)
class FleetDemand:
    """What a BaseModel's adapters and requests ask of its workers."""

    warm_copies: int = 0  # copies wanted in a GPU or CPU slot
    pinned_copies: int = 0  # copies that must hold a GPU slot
    widest: int = 0  # the most copies of one adapter (each on its own worker)
    requests: float = 0.0  # running or waiting on the workers: their agents' one-minute means, summed


def slot_demand(adapters: Iterable[Adapter]) -> FleetDemand:
    warm = pinned = widest = 0
    for adapter in adapters:
        warm += adapter.replicas
        widest = max(widest, adapter.replicas)
        if adapter.pinned:
            pinned += adapter.replicas
    return FleetDemand(warm, pinned, widest)


def within_range(spec: BaseModelSpec, workers: int) -> int:
    """`workers` clamped to replicas.min..max."""
    return min(max(workers, spec.replicas.min), spec.replicas.effective_max)


def workers_needed(spec: BaseModelSpec, demand: FleetDemand) -> int:
    """Workers that hold `demand` warm and serve its requests, clamped to replicas.min..max."""
    warm_slots = max(spec.engine.max_loras, spec.engine.max_cpu_loras)
    target = spec.replicas.target_requests_per_worker
    needed = max(
        math.ceil(demand.warm_copies / warm_slots),
        math.ceil(demand.pinned_copies / spec.engine.max_loras),
        demand.widest,
        math.ceil(demand.requests / target) if target is not None else 0,
    )
    return within_range(spec, needed)


@dataclass(frozen=True)
class ScaleStep:
    """The worker count to run now, and since when the need has been below it (None: it is not)."""

    target: int
    below_since: float | None = None


def next_scale(
    spec: BaseModelSpec,
    demand: FleetDemand,
    current: ScaleStep | None,
    now: float,
    scale_down_delay: float,
) -> ScaleStep:
    """The next target: up at once, down once the need has stayed lower for `scale_down_delay` seconds.

    `current` None (a fresh operator) starts from the need itself. A target outside a changed
    replicas range is brought inside it at once.
    """
    needed = workers_needed(spec, demand)
    if current is None:
        return ScaleStep(needed)
    target = within_range(spec, current.target)
    if needed >= target:
        return ScaleStep(needed)
    below_since = current.below_since if current.below_since is not None else now
    if now - below_since >= scale_down_delay:
        return ScaleStep(needed)
    return ScaleStep(target, below_since)


def workers_to_run(spec: BaseModelSpec, decided: int | None, observed: int | None) -> int:
    """The StatefulSet's replicas: what the placement loop decided, else what runs now, within min..max.

    Before the placement loop's first pass (a fresh operator) the running count is kept, so a
    restart never scales a fleet down and back up.
    """
    count = decided if decided is not None else observed if observed is not None else spec.replicas.min
    return within_range(spec, count)


def scaling_message(spec: BaseModelSpec, running: int, target: int, demand: FleetDemand) -> str:
    """The `Scaled` Event's message: from how many workers to how many, and why."""
    per_worker = spec.replicas.target_requests_per_worker
    load = (
        f"; {demand.requests:g} requests running or waiting, at most {per_worker} per worker wanted"
        if per_worker is not None
        else ""
    )
    return (
        f"Workers {running} -> {target}: the adapters want {demand.warm_copies} warm copies "
        f"({demand.pinned_copies} pinned in GPU slots, at most {demand.widest} of one adapter){load}; "
        f"replicas {spec.replicas.min}..{spec.replicas.effective_max}"
    )


class FleetTargets:
    """The worker count each BaseModel's placement loop decided (and the demand it decided it for).

    The placement loop decides; the BaseModel handlers apply it to the worker StatefulSet (its one
    writer); the training handlers keep the GPUs it needs free. In memory: one operator replica acts
    at a time (peering), and a restarted one starts from the StatefulSets as they are (see
    `workers_to_run`).
    """

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], tuple[int, FleetDemand]] = {}

    def get(self, key: tuple[str, str]) -> int | None:
        found = self._targets.get(key)
        return found[0] if found is not None else None

    def demand(self, key: tuple[str, str]) -> FleetDemand:
        """What the adapters asked for when the target was decided."""
        found = self._targets.get(key)
        return found[1] if found is not None else FleetDemand()

    def set(self, key: tuple[str, str], target: int, demand: FleetDemand | None = None) -> None:
        self._targets[key] = (target, demand if demand is not None else FleetDemand())

    def forget(self, key: tuple[str, str]) -> None:
        self._targets.pop(key, None)

"""Warm trainers: which one a queued shared TrainingJob joins, and when a new one is worth starting.

Pure and deterministic. Jobs that may share a trainer form a `TrainerGroup`:
one BaseModel, the same pod resources (GPUs, CPU, memory) and dataset root
(the folder the pod mounts), one rank class
(LoRA ranks up to 16, up to 64, above: a trainer's step time follows its
largest adapter, so a rank-8 job does not wait on a rank-256 one). A trainer
holds at most `Capacity.max_tenants` adapters and `Capacity.max_rank_sum` of
rank in all (the LoRA weights, gradients and optimizer state it keeps grow
with the sum of ranks; a job whose rank alone exceeds it gets a trainer to
itself).

Jobs go by priority (higher first), then age, then name. Each joins the
accepting trainer of its group that has room for it, the fullest first (fewer
trainers, larger combined batches); a job no running trainer has room for goes
into a new trainer of its group, filled in the same order. A new trainer costs
GPUs, so the training pass hands each one to admission (training_admission)
at its first tenant's priority and age; those admission leaves waiting start
on a later pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

RANK_CLASSES = (16, 64)  # upper bounds; ranks above the last share a class of their own


def rank_class(rank: int) -> int:
    """The rank class of a LoRA rank: the first bound at or above it (0 above every bound)."""
    return next((bound for bound in RANK_CLASSES if rank <= bound), 0)


@dataclass(frozen=True, order=True)
class TrainerGroup:
    """Jobs that may share one warm trainer."""

    namespace: str
    base_model: str
    gpus: int
    cpu: str | None = None
    memory: str | None = None
    rank_class: int = RANK_CLASSES[0]
    dataset_root: str = ""  # the dataset root (training_roots) the pod mounts, as a URI

    @property
    def digest(self) -> str:
        """A short stable name for the group (labels, trainer names)."""
        parts = (self.namespace, self.base_model, self.gpus, self.cpu, self.memory, self.rank_class,
                 self.dataset_root)  # fmt: skip
        text = "/".join(str(part) for part in parts)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Capacity:
    max_tenants: int = 8
    max_rank_sum: int = 256

    def fits(self, tenants: int, ranks: int, rank: int) -> bool:
        """Whether one more adapter of `rank` fits a trainer holding `tenants` adapters of `ranks` in all
        (an empty trainer takes any one adapter)."""
        if tenants == 0:
            return True
        return tenants < self.max_tenants and ranks + rank <= self.max_rank_sum


@dataclass(frozen=True)
class RunningTrainer:
    """A warm trainer that exists: its group and what it holds now."""

    name: str
    group: TrainerGroup
    tenants: int = 0
    ranks: int = 0
    accepting: bool = True  # False: finishing, failed or being deleted


@dataclass(frozen=True)
class WaitingTenant:
    """A shared TrainingJob waiting for a trainer."""

    key: str  # namespace/name
    group: TrainerGroup
    rank: int
    priority: int = 0
    created: datetime = field(default_factory=lambda: datetime.min)

    def order(self) -> tuple[int, datetime, str]:
        return (-self.priority, self.created, self.key)


@dataclass(frozen=True)
class NewTrainer:
    """A warm trainer worth starting, and the jobs it starts with."""

    group: TrainerGroup
    tenants: tuple[str, ...]  # job keys, in queue order
    priority: int  # its first tenant's: admission orders new trainers as it orders jobs
    created: datetime


@dataclass(frozen=True)
class TenancyPlan:
    joins: Mapping[str, str]  # job key -> running trainer it joins
    new: tuple[NewTrainer, ...]


def plan_tenancy(
    trainers: Iterable[RunningTrainer], queue: Iterable[WaitingTenant], capacity: Capacity
) -> TenancyPlan:
    """Place each waiting job in a running trainer of its group, or in a new one (module docstring)."""
    running = sorted((t for t in trainers if t.accepting), key=lambda t: t.name)
    load = {t.name: (t.tenants, t.ranks) for t in running}
    joins: dict[str, str] = {}
    forming: dict[TrainerGroup, list[tuple[list[WaitingTenant], int]]] = {}
    for job in sorted(queue, key=WaitingTenant.order):
        room = [t for t in running if t.group == job.group and capacity.fits(*load[t.name], job.rank)]
        if room:
            chosen = min(room, key=lambda t: (-load[t.name][0], t.name))  # the fullest, then by name
            tenants, ranks = load[chosen.name]
            load[chosen.name] = (tenants + 1, ranks + job.rank)
            joins[job.key] = chosen.name
            continue
        bins = forming.setdefault(job.group, [])
        for index, (members, ranks) in enumerate(bins):
            if capacity.fits(len(members), ranks, job.rank):
                members.append(job)
                bins[index] = (members, ranks + job.rank)
                break
        else:
            bins.append(([job], job.rank))
    new = [
        NewTrainer(group, tuple(j.key for j in members), members[0].priority, members[0].created)
        for group, bins in forming.items()
        for members, _ in bins
    ]
    new.sort(key=lambda t: (-t.priority, t.created, t.tenants[0]))
    return TenancyPlan(joins, tuple(new))

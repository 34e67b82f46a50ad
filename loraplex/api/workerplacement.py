"""WorkerPlacement: the residency table, one object per worker.

`spec` is what the operator wants the worker to hold (written by the operator
from the placement plan); `status` is what the worker's agent really holds, per
tier (written by the agent, checked against vLLM). The operator and the router
read the same objects: placement and routing share one truth.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loraplex.api.common import (
    CONDITIONS_FIELD_EXTRA,
    ApiModel,
    Condition,
    LabelName,
    PlacedAdapterUri,
    Sha256,
)

ResidentTier = Literal["GPU", "CPU", "Disk"]
AdapterName = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class WantedAdapter(ApiModel):
    """One adapter the worker should hold, in which tier, at which revision."""

    name: str = AdapterName
    uri: PlacedAdapterUri
    sha256: Sha256
    rank: int = Field(ge=1, le=512)
    tier: ResidentTier
    pinned: bool = False


class WorkerPlacementSpec(ApiModel):
    """The adapters the operator wants on this worker (the named head; catalog adapters load on demand)."""

    base_model: LabelName
    worker: str = Field(min_length=1, max_length=253, description="Name of the worker pod.")
    adapters: list[WantedAdapter] = Field(default_factory=list, max_length=20000)
    unload: list[Annotated[str, AdapterName]] = Field(
        default_factory=list,
        max_length=20000,
        description="LoRAAdapters being deleted that the agent holds on demand (the router loaded them "
        "past their placement): the agent unloads them and loads none of them on demand, so their "
        "deletion completes.",
    )


class ResidentAdapter(ApiModel):
    """One adapter the agent holds, as it reports it."""

    name: str = AdapterName
    sha256: Sha256 | None = None
    tier: ResidentTier
    bytes: int | None = Field(default=None, ge=0)
    load_seconds: float | None = Field(default=None, ge=0, description="How long its last load took.")
    catalog: bool = Field(default=False, description="Loaded on demand through the catalog template.")
    on_demand: bool = Field(
        default=False,
        description="Loaded on demand for the router (a catalog adapter, or a LoRAAdapter past its "
        "placement), not because this WorkerPlacement lists it.",
    )
    active: bool = Field(
        default=False,
        description="vLLM ran a request for it (or the router asked for it) within the agent's active "
        "window; the operator ranks active adapters above idle ones of the same priority.",
    )


class AdapterFailure(ApiModel):
    """An adapter the agent could not load, and why."""

    name: str = AdapterName
    reason: str = Field(max_length=64, pattern=r"^[A-Za-z]+$")
    message: str = Field(default="", max_length=1024)


class WorkerPlacementStatus(ApiModel):
    """What the worker's agent holds right now."""

    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD_EXTRA)
    adapters: list[ResidentAdapter] = Field(default_factory=list, max_length=20000)
    failures: list[AdapterFailure] = Field(default_factory=list, max_length=1000)
    gpu_slots: int | None = Field(default=None, ge=0)
    cpu_slots: int | None = Field(default=None, ge=0)
    held: str | None = Field(default=None, max_length=32, description="Adapters held / wanted, for humans.")

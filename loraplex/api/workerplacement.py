"""WorkerPlacement: the residency table, one object per worker.

`spec` is what the operator wants the worker to hold (written by the operator
from the placement plan); `status` is what the worker's agent really holds, per
tier (written by the agent, checked against vLLM). The operator and the router
read the same objects: placement and routing share one truth.

The status is built as a `WorkerPlacementStatus` by its one writer (the agent)
and written as `loraplex.api.wire.to_wire` makes it; its readers (the operator, the router) parse it
with `read_status`, which never fails on what an agent wrote.

A copy in vLLM is registered under its engine name: the adapter's name, or, while the worker swaps
in a new revision of an adapter it serves, `<name>@<first 12 hex digits of its sha256>` (both
revisions stay registered until the routers have moved; vLLM's in-place reload is not used, vLLM
issue 33791). `status.adapters[].engineName` reports it where it differs from the name, and the
router sends each request to that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError

from loraplex.api.common import (
    CONDITIONS_FIELD_EXTRA,
    DNS_SUBDOMAIN,
    ApiModel,
    Condition,
    LabelName,
    PlacedAdapterUri,
    Sha256,
)
from loraplex.api.tiers import Tier

ADAPTER_NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
ENGINE_NAME_SEPARATOR = "@"  # never in an adapter's name (a Kubernetes name)
ENGINE_REVISION_DIGITS = 12

AdapterName = Field(
    min_length=1,
    max_length=253,
    pattern=f"^{ADAPTER_NAME_PATTERN}$",
    description="Name of the adapter: a LoRAAdapter's name, or a catalog adapter's requested name.",
)
EngineName = Field(
    default=None,
    min_length=1,
    max_length=253 + 1 + ENGINE_REVISION_DIGITS,
    pattern=f"^{ADAPTER_NAME_PATTERN}({ENGINE_NAME_SEPARATOR}[a-f0-9]{{{ENGINE_REVISION_DIGITS}}})?$",
    description="The name the worker's vLLM serves this copy under, where it is not the adapter's name: "
    "`<name>@<first 12 hex digits of its sha256>`, a revision swapped in beside another (unset: the "
    "adapter's name).",
)


def revision_engine_name(name: str, sha256: str) -> str:
    """The engine name of an adapter's revision registered beside another revision of it."""
    return f"{name}{ENGINE_NAME_SEPARATOR}{sha256[:ENGINE_REVISION_DIGITS]}"


def adapter_of_engine_name(engine_name: str) -> str:
    """The adapter an engine name is a copy of (the inverse of `revision_engine_name`, and the name
    itself for a copy under the adapter's own name)."""
    return engine_name.partition(ENGINE_NAME_SEPARATOR)[0]


class WantedAdapter(ApiModel):
    """One adapter the worker should hold, in which tier, at which revision."""

    name: str = AdapterName
    uri: PlacedAdapterUri
    sha256: Sha256
    rank: int = Field(ge=1, le=512, description="The adapter's LoRA rank.")
    tier: Tier = Field(description="Tier to hold it in: GPU, CPU or Disk.")
    pinned: bool = Field(default=False, description="A Pinned adapter: never displaced by another.")


class WorkerPlacementSpec(ApiModel):
    """The adapters the operator wants on this worker (the named head; catalog adapters load on demand)."""

    base_model: LabelName
    worker: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the worker pod."
    )
    adapters: list[WantedAdapter] = Field(
        default_factory=list, max_length=20000, description="The adapters the worker should hold."
    )
    unload: list[Annotated[str, AdapterName]] = Field(
        default_factory=list,
        max_length=20000,
        description="LoRAAdapters being deleted that the agent holds on demand (the router loaded them "
        "past their placement): the agent unloads them and loads none of them on demand, so their "
        "deletion completes.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    report_requests: bool = Field(
        default=False,
        description="Report the worker's request load in status.requests: set while the BaseModel "
        "scales on it (replicas.targetRequestsPerWorker), so other fleets pay no status writes for it.",
    )


class ResidentAdapter(ApiModel):
    """One adapter the agent holds, as it reports it."""

    name: str = AdapterName
    sha256: Sha256 | None = None
    tier: Tier = Field(description="Tier it is held in: GPU, CPU or Disk.")
    engine_name: str | None = EngineName
    bytes: int | None = Field(default=None, ge=0, description="Size of its files on the agent's disk.")
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
    reason: str = Field(max_length=64, pattern=r"^[A-Za-z]+$", description="Why, as one CamelCase word.")
    message: str = Field(default="", max_length=1024, description="Why, for humans.")


class WorkerPlacementStatus(ApiModel):
    """What the worker's agent holds right now."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation of the spec the agent last acted on.",
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD_EXTRA)
    adapters: list[ResidentAdapter] = Field(
        default_factory=list, max_length=20000, description="The adapters the agent holds, per tier."
    )
    failures: list[AdapterFailure] = Field(
        default_factory=list, max_length=1000, description="Adapters the agent could not load, and why."
    )
    gpu_slots: int | None = Field(
        default=None, ge=0, description="The worker's GPU adapter slots (vLLM --max-loras)."
    )
    cpu_slots: int | None = Field(
        default=None, ge=0, description="The worker's CPU-cache adapter slots (vLLM --max-cpu-loras)."
    )
    held: str | None = Field(default=None, max_length=32, description="Adapters held / wanted, for humans.")
    requests: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Requests running or waiting in the worker's vLLM, a one-minute mean; rewritten only once "
            "the mean moves by a whole request and by a tenth of itself, so a steady load writes nothing."
        ),
    )


_STATUS_KEYS = frozenset(field.alias or name for name, field in WorkerPlacementStatus.model_fields.items())
_ENTRY_MODELS: dict[str, type[ApiModel]] = {
    "adapters": ResidentAdapter,
    "failures": AdapterFailure,
    "conditions": Condition,
}
_ENTRY_KEYS = {
    key: frozenset(field.alias or name for name, field in model.model_fields.items())
    for key, model in _ENTRY_MODELS.items()
}


def read_status(raw: Mapping[str, Any] | None) -> WorkerPlacementStatus:
    """A WorkerPlacement status (or an agent's residency report) as its readers take it.

    Keys it does not know are ignored, at the top (the agent's report carries `worker` and
    `engineReady` besides) and in each entry of its lists (a field a newer agent adds, as
    `engineName` was, must not make an older router drop the copy during a rolling upgrade).
    Tolerant like the readers before it: a missing field takes its default, and where the whole
    does not validate, each entry of a list that does not, and each other field that does not, is
    left out rather than failing the status.
    """
    if not raw:
        return WorkerPlacementStatus()
    known = {key: _known_entries(key, value) for key, value in raw.items() if key in _STATUS_KEYS}
    try:
        return WorkerPlacementStatus.model_validate(known)
    except ValidationError:
        return WorkerPlacementStatus.model_validate(_salvage(known))


def _known_entries(key: str, value: Any) -> Any:
    """A list field's entries with only the keys their model knows (other values as they are)."""
    keys = _ENTRY_KEYS.get(key)
    if keys is None or not isinstance(value, list):
        return value
    return [
        {k: v for k, v in entry.items() if k in keys} if isinstance(entry, Mapping) else entry
        for entry in value
    ]


def _salvage(known: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in known.items():
        model = _ENTRY_MODELS.get(key)
        if model is not None:
            kept[key] = [entry for entry in value or [] if _valid_entry(model, entry)]
        elif _valid_field(key, value):
            kept[key] = value
    return kept


def _valid_entry(model: type[ApiModel], entry: object) -> bool:
    if not isinstance(entry, Mapping):
        return False
    try:
        model.model_validate(entry)
    except ValidationError:
        return False
    return True


def _valid_field(key: str, value: object) -> bool:
    try:
        WorkerPlacementStatus.model_validate({key: value})
    except ValidationError:
        return False
    return True

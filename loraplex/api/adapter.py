"""LoRAAdapter: a named adapter of a BaseModel, its source, and how warm to keep it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from loraplex.api.access import AccessList
from loraplex.api.common import (
    CONDITIONS_FIELD_EXTRA,
    AdapterSourceUri,
    ApiModel,
    Condition,
    LabelName,
    Sha256,
    cel,
    validations,
)
from loraplex.api.tiers import Tier

AdapterPhase = Literal["Pending", "Loading", "Ready", "Degraded", "Failed"]


class AdapterSource(ApiModel):
    """Where the adapter's files are and the digest they must have."""

    uri: AdapterSourceUri
    sha256: Sha256


def live_source(body: Mapping[str, Any], base_model: str) -> AdapterSource | None:
    """The source a LoRAAdapter object (as the API server returns it) names, if it is one of
    `base_model`'s and not being deleted: what a router names and an agent may load past the placement.
    Not validated again: the API server admitted it."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if meta.get("deletionTimestamp") or spec.get("baseModel") != base_model:
        return None
    source = spec.get("source") or {}
    uri, sha256 = source.get("uri"), source.get("sha256")
    if not isinstance(uri, str) or not isinstance(sha256, str):
        return None
    return AdapterSource.model_construct(uri=uri, sha256=sha256)


class LoRAAdapterSpec(ApiModel):
    """Desired state of a LoRAAdapter."""

    base_model: LabelName = Field(
        description="Name of the BaseModel (same namespace) this adapter was trained on; immutable.",
        json_schema_extra=validations(
            cel(
                "self == oldSelf",
                "baseModel is immutable: an adapter's weights belong to the base model they were trained "
                "on; create a new LoRAAdapter for another base model",
                reason="FieldValueForbidden",
            )
        ),
    )
    source: AdapterSource
    rank: int = Field(ge=1, le=512, description="LoRA rank; at most the base model's engine.maxLoraRank.")
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Workers that keep this adapter warm at least (0: loaded on first use only).",
    )
    policy: Literal["Pinned", "OnDemand"] = Field(
        default="OnDemand",
        description=(
            "Pinned: placed in GPU slots on `replicas` workers, where other adapters never displace it "
            "(vLLM itself still moves it between its CPU cache and a GPU slot by recency under traffic). "
            "OnDemand: loaded when used, may be evicted."
        ),
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Higher keeps its slots when space is short."
    )
    access: AccessList | None = Field(
        default=None,
        description=(
            "Who may use this adapter through the router; others get 404 as for an adapter that does not "
            "exist. Omitted: every caller the router authenticates (docs/security.md)."
        ),
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.policy != 'Pinned' || self.replicas >= 1",
                "a Pinned adapter needs replicas >= 1",
                field_path=".replicas",
                reason="FieldValueInvalid",
            ),
        )
    }


class Placement(ApiModel):
    """One copy of the adapter: which worker holds it, in which tier."""

    worker: str = Field(max_length=253, description="Name of the worker pod.")
    tier: Tier = Field(
        description="Where on the worker: GPU (a vLLM GPU slot), CPU (vLLM's CPU cache) or Disk."
    )


class LoRAAdapterStatus(ApiModel):
    """Observed state of a LoRAAdapter."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the operator last acted on; Ready speaks for that generation.",
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD_EXTRA)
    phase: AdapterPhase | None = Field(
        default=None,
        description="Pending, Loading, Ready, Degraded or Failed, for humans (Ready is the signal).",
    )
    placements: list[Placement] = Field(
        default_factory=list, max_length=1000, description="The workers that hold a copy, and in which tier."
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Copies loaded and verified.")
    copies: str | None = Field(default=None, max_length=32, description="Ready copies / desired, for humans.")
    revision: str | None = Field(
        default=None, max_length=64, description="sha256 of the revision being served."
    )
    last_load_latency_seconds: float | None = Field(
        default=None, ge=0, description="How long the adapter's last load onto a worker took."
    )

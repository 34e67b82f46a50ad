"""The worker agent's HTTP API, as the agent answers it and the router reads it.

- `GET /v1/residency` (`RESIDENCY_PATH`): an `AgentResidency`, the shape of the
  WorkerPlacement status plus the worker's name and whether its vLLM answers.
- `POST /v1/adapters/ensure` (`ENSURE_PATH`): make an adapter servable now. A
  refusal comes in OpenAI's error shape; its HTTP status says what kind of
  refusal it is (`EnsureStatus`) and its `code` why (an `EnsureCode`, or the
  reason a fetch or load of the adapter failed, as in the status's `failures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import Field

from loraplex.api.common import ApiModel
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import EngineName, WorkerPlacementStatus

RESIDENCY_PATH = "/v1/residency"
ENSURE_PATH = "/v1/adapters/ensure"


class EnsureStatus(IntEnum):
    """What kind of refusal an ensure is, as the HTTP status it is answered with."""

    INVALID = 400  # the request or the adapter's name is malformed
    NOT_FOUND = 404  # no such adapter for this worker (not placed here, not in the catalog, being deleted)
    REFUSED = 422  # the adapter's files or its load were refused: that revision fails again
    UNAVAILABLE = 503  # not now (vLLM not ready, a failed load backing off, a lookup failed): Retry-After


class EnsureCode(StrEnum):
    """The `code` of a refusal the agent decides itself (others carry a fetch or load failure's reason)."""

    INVALID_REQUEST = "InvalidRequest"
    INVALID_ADAPTER_NAME = "InvalidAdapterName"
    ADAPTER_NOT_FOUND = "AdapterNotFound"
    ADAPTER_LOOKUP_FAILED = "AdapterLookupFailed"  # a named adapter's LoRAAdapter could not be read
    ENGINE_NOT_READY = "EngineNotReady"  # this worker's vLLM does not answer (yet, or again)
    LOAD_FAILED = "LoadFailed"  # vLLM refused to load the adapter (a failure reason, too)
    # The adapter's target_modules name no module of the base model: vLLM would load it and answer
    # with the base model's output (vLLM issue 34186), so the agent refuses it (a failure reason, too).
    TARGET_MODULES_NOT_IN_BASE = "TargetModulesNotInBase"


# Failure reasons that refuse the adapter's files or its load: the same revision fails again.
REFUSED_REASONS = frozenset(
    {
        "DigestMismatch",
        "UnsafeArchive",
        "InvalidArchive",
        EnsureCode.LOAD_FAILED,
        EnsureCode.TARGET_MODULES_NOT_IN_BASE,
    }
)
# Failure reasons of a load (not of a fetch): a fetch that succeeds again does not clear them.
LOAD_REASONS = frozenset({EnsureCode.LOAD_FAILED, EnsureCode.TARGET_MODULES_NOT_IN_BASE})


class EnsureRequest(ApiModel):
    """The body of `POST /v1/adapters/ensure`."""

    name: str = Field(min_length=1, description="The adapter to make servable.")
    named: bool = Field(
        default=False,
        description="A LoRAAdapter the agent may look up where its placement does not list it.",
    )
    sha256: str | None = Field(default=None, description="The revision wanted: another one held is reloaded.")


class EnsureResult(ApiModel):
    """What an ensure that succeeded answers: the copy now servable on this worker."""

    name: str
    tier: Tier
    load_seconds: float = Field(description="How long this call waited for the copy; 0 when already held.")
    sha256: str | None = Field(default=None, description="The revision registered in vLLM.")
    engine_name: str | None = EngineName  # the name to send requests for it to vLLM under, if not `name`


class AgentResidency(WorkerPlacementStatus):
    """What the agent reports holding: its WorkerPlacement status, before conditions, and more."""

    worker: str = Field(description="Name of the worker pod.")
    engine_ready: bool = Field(description="Whether the worker's vLLM answers.")

    def placement_status(self, conditions: Sequence[Mapping[str, Any]]) -> WorkerPlacementStatus:
        """The report as the WorkerPlacement's status, with `conditions`: the fields the report set."""
        fields = {name: getattr(self, name) for name in self.model_fields_set & _STATUS_FIELDS}
        return WorkerPlacementStatus.model_validate({**fields, "conditions": list(conditions)})


_STATUS_FIELDS = frozenset(WorkerPlacementStatus.model_fields)

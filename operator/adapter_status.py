"""Checks a LoRAAdapter against its BaseModel and decides its status until it is placed.

Pure: the caller passes the adapter's spec, the BaseModel's spec (None when it
does not exist) and `now`. Input that admission cannot judge (it needs another
object) is caught here and reported as Ready=False with a specific reason, a
message a user can act on, and Stalled=True; it is never retried in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loraplex.api.adapter import LoRAAdapterSpec, LoRAAdapterStatus
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import ConditionUpdate, merge_conditions
from loraplex.api.wire import to_wire
from loraplex.operator.fleet import adapter_claims, pvc_parts


@dataclass(frozen=True)
class AdapterCheck:
    """The verdict: whether placement may proceed, and the condition that says why not."""

    placeable: bool
    ready: ConditionUpdate


def check_adapter(namespace: str, spec: LoRAAdapterSpec, base: BaseModelSpec | None) -> AdapterCheck:
    if base is None:
        message = (
            f"BaseModel {namespace}/{spec.base_model} does not exist: create it, or set spec.baseModel "
            "to an existing BaseModel in this namespace"
        )
        return AdapterCheck(False, ConditionUpdate("Ready", "False", "UnknownBaseModel", message))
    limit = base.engine.max_lora_rank
    if spec.rank > limit:
        message = (
            f"spec.rank {spec.rank} is above BaseModel {spec.base_model}'s engine.maxLoraRank {limit}: "
            f"retrain at rank <= {limit}, or raise the BaseModel's engine.maxLoraRank"
        )
        return AdapterCheck(False, ConditionUpdate("Ready", "False", "RankTooHigh", message))
    uri = spec.source.uri
    if uri.startswith("pvc://"):
        claim, _ = pvc_parts(uri)
        if claim not in adapter_claims(base):
            message = (
                f"spec.source.uri is on PersistentVolumeClaim {claim}, which BaseModel {spec.base_model}'s "
                f"workers do not mount: add {claim} to the BaseModel's spec.adapterVolumes"
            )
            return AdapterCheck(False, ConditionUpdate("Ready", "False", "VolumeNotMounted", message))
    waiting = ConditionUpdate("Ready", "Unknown", "WaitingForPlacement", "Waiting to be placed on workers")
    return AdapterCheck(True, waiting)


def plan_adapter_status(
    check: AdapterCheck, spec: LoRAAdapterSpec, generation: int, previous: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Status for an adapter that is not (yet) placed: Failed when invalid, Pending otherwise; the
    fields of its LoRAAdapterStatus this writes."""
    invalid = not check.placeable
    stalled = (
        ConditionUpdate("Stalled", "True", check.ready.reason, check.ready.message)
        if invalid
        else ConditionUpdate("Stalled", "False", "AsExpected")
    )
    reconciling = ConditionUpdate("Reconciling", "False" if invalid else "True", check.ready.reason)
    ready_copies = int(previous.get("readyReplicas", 0)) if not invalid else 0
    status = LoRAAdapterStatus(  # placements are left as they are: the placement loop writes them
        observed_generation=generation,
        phase="Failed" if invalid else _phase_while_valid(previous.get("phase")),
        conditions=merge_conditions(
            previous.get("conditions", []), [check.ready, reconciling, stalled], generation, now
        ),
        ready_replicas=ready_copies,
        copies=f"{ready_copies}/{spec.replicas}",
    )
    return to_wire(status)


def _phase_while_valid(previous: str | None) -> str:
    """A valid adapter keeps the phase placement gave it; a fixed Failed one starts over."""
    return "Pending" if previous in (None, "Failed") else previous

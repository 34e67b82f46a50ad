"""Sets metav1.Condition-shaped conditions the way Kubernetes tools expect (every writer of a status).

`lastTransitionTime` moves only when a condition's status flips; reason and
message may change without moving it. Pure: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loraplex.api.common import ConditionStatus

Status = ConditionStatus


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: Status
    reason: str
    message: str = ""


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[dict[str, Any]],
    updates: Sequence[ConditionUpdate],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The previous conditions with `updates` applied; other types are kept as they were."""
    by_type = {c["type"]: c for c in previous}
    merged = dict(by_type)
    for update in updates:
        before = by_type.get(update.type)
        flipped = before is None or before.get("status") != update.status
        merged[update.type] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": timestamp(now)
            if flipped or before is None
            else before["lastTransitionTime"],
            "observedGeneration": generation,
        }
    return sorted(merged.values(), key=lambda c: str(c["type"]))


def condition(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)

"""A TrainingJob's `status.progress`, as the operator reads it from its trainer: pure parsing and merging.

The trainer prints each event as one JSON line on stdout (worker/trainer/progress.py);
the operator reads the tail of the trainer container's log and `parse_progress` keeps
the last `started` or `progress` event of each adapter as a progress status (`step`,
`totalSteps`, `loss`, `tokensPerSecond`, the event's fields as they are). Lines that
are not such an event (stderr warnings, a line cut in half by the tail or by a write
in flight, values out of range) are skipped. `final_progress` takes the step from the
trainer's termination-message summary when an attempt ends, so a finished job shows
its last step where no log could be read. `with_progress` puts a progress into a
status only when it differs, so an unchanged one never costs a write. A warm
trainer also prints `tenants` reports, each the state of every tenant;
`parse_tenants` keeps the last (the level: a tenant's result reaches the status
even when the event that announced it has scrolled out of the tail).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from loraplex.api.trainingjob import TrainingProgress

PROGRESS_EVENTS = ("started", "progress")


def parse_progress(log: str) -> dict[str, dict[str, Any]]:
    """adapter -> its progress (wire names) from the last progress-bearing event in `log`."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.splitlines():
        parsed = _event(line)
        if parsed is not None:
            adapter, progress = parsed
            found[adapter] = progress
    return found


def parse_tenants(log: str) -> dict[str, dict[str, Any]] | None:
    """tenant -> its state (name, phase, step, uri, sha256, reason, message: wire names) in the last
    `tenants` report of a warm trainer's `log` (worker/trainer/warm.py); None when there is none."""
    found: dict[str, dict[str, Any]] | None = None
    for line in log.splitlines():
        event = _json_event(line)
        if event is None or event.get("event") != "tenants" or not isinstance(event.get("tenants"), list):
            continue
        found = {
            str(state["name"]): state
            for state in event["tenants"]
            if isinstance(state, dict) and isinstance(state.get("name"), str)
        }
    return found


def _json_event(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _event(line: str) -> tuple[str, dict[str, Any]] | None:
    event = _json_event(line)
    if event is None or event.get("event") not in PROGRESS_EVENTS:
        return None
    adapter = event.get("adapter")
    if not isinstance(adapter, str) or not adapter:
        return None
    progress = _progress(event)
    return None if progress is None else (adapter, progress)


def _progress(fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """The progress status of an event's (or a summary entry's) fields; None when they are not one."""
    values = {key: fields.get(key) for key in ("step", "totalSteps", "loss", "tokensPerSecond")}
    if any(isinstance(v, bool) or not (v is None or isinstance(v, int | float)) for v in values.values()):
        return None
    if any(isinstance(v, float) and not math.isfinite(v) for v in values.values()):
        return None
    if not isinstance(values["step"], int) or not isinstance(values["totalSteps"], int | None):
        return None
    try:
        model = TrainingProgress.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError:
        return None
    return model.model_dump(by_alias=True, exclude_none=True)


def final_progress(last: Mapping[str, Any] | None, entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The progress once an attempt ended: `last` (the status's) with the step, totalSteps and (a
    success's) final loss of the trainer's summary `entry` for the adapter; `last` as it was when
    the summary has no step. Without the summary's loss, the status's last read loss would stand
    beside the final step, though the log may not have been read since an earlier window."""
    fields = {key: (entry or {}).get(key) for key in ("step", "totalSteps", "loss")}
    ended = _progress(fields)
    if ended is None:
        return dict(last) if last else None
    return {**(last or {}), **ended}


def with_progress(status: Mapping[str, Any], progress: Mapping[str, Any] | None) -> dict[str, Any]:
    """`status` with `progress` as its `progress` (None: the status's as it was)."""
    if progress is None or status.get("progress") == progress:
        return dict(status)
    return {**status, "progress": dict(progress)}

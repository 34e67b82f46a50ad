"""What the trainer tells the world while it runs: progress, checkpoints, results.

The trainer calls a `ProgressSink` with one `Event` at a time. The default
sink writes each event as one JSON object per line on stdout, keys in
camelCase; a `progress` event's `step`, `totalSteps`, `loss` and
`tokensPerSecond` are the TrainingJob status's `progress` fields: in a pod,
the operator reads them from the trainer container's log and copies them as
they are (operator/training_progress.py), so the trainer needs no Kubernetes
token. Another sink only has to be a callable taking an Event.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, TextIO

from pydantic.alias_generators import to_camel

EventKind = Literal[
    "started", "progress", "checkpoint", "published", "failed", "preempted", "left", "tenants", "finished"
]


@dataclass(frozen=True)
class Event:
    """One thing that happened to one adapter (or, for `finished`, to the whole trainer)."""

    event: EventKind
    adapter: str | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    uri: str | None = None
    sha256: str | None = None
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    tenants: list[dict[str, object]] | None = None  # a warm trainer's `tenants` report: each tenant's state
    time: str = ""

    def to_json(self) -> dict[str, object]:
        fields = asdict(self)
        fields["time"] = self.time or datetime.now(UTC).isoformat(timespec="milliseconds")
        return {to_camel(k): v for k, v in fields.items() if v is not None}


class ProgressSink(Protocol):
    def __call__(self, event: Event) -> None: ...


class JsonLines:
    """Writes each event as one JSON line (flushed) to a stream, stdout by default."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.RLock()  # a second SIGTERM may write from the main thread mid-line

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_json(), separators=(",", ":"))
        with self._lock:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()


class Recorder:
    """Keeps the events in a list (for tests and for callers that read them afterwards)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: EventKind, adapter: str | None = None) -> list[Event]:
        return [e for e in self.events if e.event == kind and (adapter is None or e.adapter == adapter)]


class Fanout:
    """Sends each event to several sinks in turn."""

    def __init__(self, *sinks: ProgressSink) -> None:
        self.sinks = sinks

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)

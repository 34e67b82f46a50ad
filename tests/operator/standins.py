"""Stand-ins for what the placement loop talks to, shared by the tests that run it without a cluster."""

from __future__ import annotations

from typing import Any

import kopf


class Response:
    """What a status patch answers (the writer drains it unparsed)."""

    def drain_conn(self) -> None:
        pass


class StatusApi:
    """Stands in for CustomObjectsApi: takes the adapter status writes, by adapter name."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> Response:
        self.written.append(args[4])
        return Response()


class Stopped:
    """kopf.DaemonStopped for a given number of wake-ups."""

    def __init__(self, passes: int, reason: kopf.DaemonStoppingReason | None = None) -> None:
        self.passes = passes
        self.reason = reason  # why it stopped (kopf sets it once stopped): None = still running

    def __bool__(self) -> bool:
        return self.passes <= 0

    def wait(self, _: float) -> None:
        self.passes -= 1

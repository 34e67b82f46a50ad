"""Decides whether a placement pass has anything to do, so an idle fleet costs no pass over its adapters.

A pass reads kopf's indexes: the BaseModel's adapters, its WorkerPlacements and its
worker StatefulSet. kopf stores a new object in an index for every watch event
and drops it when the object goes, so "nothing happened" is the same objects,
compared by identity, in the same order: O(objects) pointer comparisons, no
hashing or parsing. The ready workers (from pods and node zones, whose index
values are rebuilt on every pod or node heartbeat) and the BaseModel's spec are
compared by value. A pass also runs while work is pending without any event
(a bounded rebalance step to take, a scale-down waiting out its delay), and at
least every `resync_seconds` as a safety net.

Pure: no I/O; the caller passes `now`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class PassGate:
    """Remembers what the last pass read; `due` says whether the next one must run."""

    def __init__(self, resync_seconds: float = 30.0) -> None:
        self.resync_seconds = resync_seconds
        self._indexed: tuple[list[object], ...] | None = None  # the last pass's index values (held)
        self._compared: tuple[Any, ...] | None = None
        self._last_run = -math.inf

    def due(
        self,
        indexed: Sequence[list[object]],
        compared: Sequence[Any],
        pending: bool,
        now: float,
    ) -> bool:
        """True when the pass must run; then `indexed` and `compared` become the last pass's inputs.

        `indexed`: snapshots of kopf index values (lists), compared by identity. `compared`: values
        compared by equality (the ready workers, the spec). `pending`: work waits without an event.
        """
        indexed, compared = tuple(indexed), tuple(compared)
        unchanged = (
            self._indexed is not None
            and len(indexed) == len(self._indexed)
            and all(_same_objects(new, old) for new, old in zip(indexed, self._indexed, strict=True))
            and compared == self._compared
        )
        if unchanged and not pending and now - self._last_run < self.resync_seconds:
            return False
        self._indexed, self._compared, self._last_run = indexed, compared, now
        return True


def _same_objects(new: list[object], old: list[object]) -> bool:
    # Holding `old` keeps its objects alive, so an id can not be reused by a new object meanwhile.
    return len(new) == len(old) and all(a is b for a, b in zip(new, old, strict=True))

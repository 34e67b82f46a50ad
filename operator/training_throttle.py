"""How often the training pass runs, and which statuses it trusts over kopf's index.

Every TrainingJob with something left to do has a timer, and each timer asks
for the one pass over all jobs: `PassThrottle` lets one pass run per interval.
A status the pass just wrote reaches kopf's index only when the watch brings it
back; until then the index may show the job as it was (still Queued, say), and
a pass that read it would admit the job twice. `RecentStatuses` keeps each
status written for a few seconds and hands it out instead of a differing one.

Pure: the caller passes the clock (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RECENT_SECONDS = 5.0  # how long a status this operator wrote outranks the (maybe stale) index


class PassThrottle:
    """At most one pass per `interval_seconds` (a tenth less, so a timer firing on time still gets one)."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.last_pass = 0.0

    def due(self, now: float, force: bool = False) -> bool:
        """Whether a pass runs now (`force`: whatever the interval); a pass that runs counts from `now`."""
        if not force and now - self.last_pass < self.interval_seconds * 0.9:
            return False
        self.last_pass = now
        return True


class RecentStatuses:
    """The statuses written in the last `keep_seconds`, by TrainingJob uid."""

    def __init__(self, keep_seconds: float = RECENT_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self.written: dict[str, tuple[float, dict[str, Any]]] = {}  # uid -> (when written, status)

    def expire(self, now: float) -> None:
        """Forget the statuses written more than `keep_seconds` before `now`."""
        cutoff = now - self.keep_seconds
        self.written = {uid: entry for uid, entry in self.written.items() if entry[0] >= cutoff}

    def remember(self, uid: str, status: dict[str, Any], now: float) -> None:
        self.written[uid] = (now, status)

    def status(self, uid: str, indexed: Mapping[str, Any]) -> dict[str, Any]:
        """The job's status to plan from: the one just written where the index shows another."""
        recent = self.written.get(uid)
        if recent is not None and recent[1] != indexed:
            return dict(recent[1])
        return dict(indexed)

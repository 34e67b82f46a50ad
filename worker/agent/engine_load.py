"""The request load the agent reports for its worker: what the operator sizes a fleet on when the
BaseModel sets `replicas.targetRequestsPerWorker`.

The agent reads vLLM's requests running and waiting with its activity (every `activity_interval`),
and reports their mean over the last minute, so one burst does not add a worker. The reported value
changes only when the mean moves by at least one request and by a tenth of itself: a steady load
costs no status writes, which a fleet of hundreds of workers would otherwise make every few seconds.

Pure: the caller passes the clock.
"""

from __future__ import annotations

from collections import deque

LOAD_WINDOW = 60.0  # seconds of samples the reported mean covers


class LoadMean:
    """The mean of the samples of the last `window` seconds."""

    def __init__(self, window: float = LOAD_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, requests: float) -> None:
        self._samples.append((now, requests))
        while self._samples[0][0] <= now - self.window:
            self._samples.popleft()

    def mean(self) -> float | None:
        """None before the first sample."""
        if not self._samples:
            return None
        return sum(requests for _, requests in self._samples) / len(self._samples)


def to_report(reported: float | None, mean: float) -> float:
    """The load to report: `reported` while `mean` stays within a request, or a tenth, of it."""
    if reported is not None and abs(mean - reported) < max(1.0, 0.1 * reported):
        return reported
    return round(mean, 1)

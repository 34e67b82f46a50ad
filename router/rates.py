"""Request rate per adapter, exponentially decayed, in bounded memory: which adapters are hot.

Pure: the caller passes `now` (seconds on any monotonic clock). A steady stream
of `r` requests per second converges to a rate of `r`; without requests the
rate halves every `half_life` seconds. At most `capacity` adapters are tracked:
the one seen least recently is forgotten first, which only ever drops an
adapter whose rate has decayed the most. The fleet's rate (every adapter's
requests together) is kept the same way. Every operation is O(1).
"""

from __future__ import annotations

import math
from collections import OrderedDict


class AdapterRates:
    """Decayed request rates (requests per second) of the adapters seen lately."""

    def __init__(self, half_life: float = 10.0, capacity: int = 100_000) -> None:
        if half_life <= 0 or capacity < 1:
            raise ValueError("half_life must be > 0 and capacity >= 1")
        self._lambda = math.log(2) / half_life
        self._capacity = capacity
        # adapter -> (rate at `when`, when, its heat); ordered from least to most recently seen
        self._rates: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        self._total = (0.0, 0.0)  # every adapter's requests: (rate at `when`, when)

    @property
    def per_request(self) -> float:
        """What one request adds to a rate."""
        return self._lambda

    def __len__(self) -> int:
        return len(self._rates)

    def observe(self, adapter: str, now: float) -> float:
        """Count one request for `adapter` at `now`; return its rate just after."""
        rate = self.rate(adapter, now) + self._lambda
        self._rates[adapter] = (rate, now, math.log(rate) + self._lambda * now)
        self._total = (self.total(now) + self._lambda, now)
        self._rates.move_to_end(adapter)
        if len(self._rates) > self._capacity:
            self._rates.popitem(last=False)
        return rate

    def rate(self, adapter: str, now: float) -> float:
        """The adapter's rate at `now` (0 for one never seen or forgotten)."""
        entry = self._rates.get(adapter)
        if entry is None:
            return 0.0
        rate, when, _ = entry
        return rate * math.exp(-self._lambda * max(0.0, now - when))

    def heat(self, adapter: str) -> float:
        """A number that orders adapters as their rates do at any one moment (all decay alike):
        log(rate) + lambda x when; it changes only when the adapter is seen. -inf: not tracked."""
        entry = self._rates.get(adapter)
        return -math.inf if entry is None else entry[2]

    def total(self, now: float) -> float:
        """The rate of all requests counted, whatever their adapter, at `now`."""
        rate, when = self._total
        return rate * math.exp(-self._lambda * max(0.0, now - when))

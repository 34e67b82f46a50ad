"""A clock tests move by hand (the agent takes `clock` and `wall_clock` callables)."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

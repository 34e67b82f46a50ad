"""Polls every worker's vLLM `/metrics` for its load (running + waiting requests) and its liveness.

One poll of all workers every `interval` seconds, concurrently, each with a
short timeout; an answer updates the worker's load and marks it alive, no
answer (or an error status) takes it out of rotation until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from loraplex.router.state import FleetState

log = logging.getLogger(__name__)

_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def parse_load(text: str) -> int:
    """Running + waiting requests from vLLM's Prometheus text (summed over every label set)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(_GAUGES):
            name_end = line.find("{") if "{" in line else line.find(" ")
            if line[:name_end] in _GAUGES:
                total += float(line.rsplit(" ", 1)[-1])
    return round(total)


class LoadPoller:
    """Keeps `state`'s load and health of each worker fresh."""

    def __init__(
        self,
        state: FleetState,
        session: aiohttp.ClientSession,
        interval: float = 0.5,
        headers: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.session = session
        self.interval = interval
        self.headers = headers or {}
        self.clock = clock

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        names = list(self.state.endpoints)
        await asyncio.gather(*(self._poll(name) for name in names))
        self.state.refresh(self.clock())

    async def _poll(self, name: str) -> None:
        endpoints = self.state.endpoints.get(name)
        if endpoints is None:
            return
        timeout = aiohttp.ClientTimeout(total=max(0.2, 2 * self.interval))
        try:
            async with self.session.get(
                f"{endpoints.vllm_url}/metrics", headers=self.headers, timeout=timeout
            ) as response:
                response.raise_for_status()
                load = parse_load(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            if self.state.table.workers.get(name) is not None and self.state.table.workers[name].healthy:
                log.warning(
                    "Lost worker %s: its vLLM did not answer (%s)", name, error or type(error).__name__
                )
            self.state.report_unreachable(name, self.clock())
            return
        self.state.report_load(name, load, self.clock())

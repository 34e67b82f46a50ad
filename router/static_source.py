"""Static mode (local runs, tests): workers given by flag or file, residency polled from each agent.

Every `interval` seconds each worker's agent is asked for `GET /v1/residency`;
its adapters (and slot counts) go into the table. Adapters the agent did not
load through the catalog count as named. An agent that does not answer keeps
its last report; whether the worker serves is the load poller's call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from loraplex.api.agent import RESIDENCY_PATH
from loraplex.api.workerplacement import read_status
from loraplex.router.settings import StaticWorker
from loraplex.router.state import FleetState, residents

log = logging.getLogger(__name__)


class StaticSource:
    def __init__(
        self,
        state: FleetState,
        session: aiohttp.ClientSession,
        workers: Sequence[StaticWorker],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.session = session
        self.workers = list(workers)
        self.interval = interval
        self.clock = clock

    async def run(self) -> None:
        for worker in self.workers:
            self.state.upsert_worker(worker.name, worker.vllm_url, worker.agent_url, True, self.clock())
        while True:
            await self.poll_once()
            self.state.synced = True
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(worker) for worker in self.workers))

    async def _poll(self, worker: StaticWorker) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, 2 * self.interval))
        try:
            async with self.session.get(f"{worker.agent_url}{RESIDENCY_PATH}", timeout=timeout) as response:
                response.raise_for_status()
                report: Any = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.debug(
                "Kept the last residency of worker %s: its agent did not answer (%s)", worker.name, error
            )
            return
        if not isinstance(report, dict):
            return
        status = read_status(report)
        self.state.report_residency(worker.name, residents(status), status.gpu_slots, status.cpu_slots)

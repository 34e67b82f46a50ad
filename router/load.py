"""Polls every worker's vLLM `/metrics` for its load (running + waiting requests) and its liveness.

From the same answer it learns what queueing costs there: the engine's
concurrency (the requests it runs while others wait for a seat, unless
`max_num_seqs` is set) and the mean running time of a request (from
`vllm:request_inference_time_seconds`), which the routing decision weighs
against the measured time of an adapter load.

One poll of all workers every `interval` seconds, concurrently, each with a
short timeout; an answer updates the worker's load and marks it alive; a refused
connection or an error status takes it out of rotation until it answers again.
A poll that times out changes nothing: a vLLM busy enough (or with a large enough
exposition) to render `/metrics` slowly is still serving, and the requests it
answers keep it alive (`FleetState.report_answer`); one that answers nothing at
all goes once its last answer is `stale_after` old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from loraplex.api.engine_metrics import REQUESTS_RUNNING, REQUESTS_WAITING
from loraplex.router.state import FleetState

log = logging.getLogger(__name__)

_CAPACITY = "vllm:num_requests_waiting_by_reason{"  # with reason="capacity": no seat for it
_INFERENCE_SUM, _INFERENCE_COUNT = (
    "vllm:request_inference_time_seconds_sum",
    "vllm:request_inference_time_seconds_count",
)


@dataclass(frozen=True)
class EngineSample:
    """One poll of a worker's vLLM: its requests running and waiting, those waiting for a seat
    (scheduling capacity, not a LoRA slot), and the running time of the requests it has finished."""

    running: int = 0
    waiting: int = 0
    waiting_for_seat: int = 0
    inference_seconds: float = 0.0  # total, over the finished requests
    finished: int = 0

    @property
    def load(self) -> int:
        return self.running + self.waiting


def parse_engine(text: str) -> EngineSample:
    """The gauges and counters the router reads from vLLM's Prometheus text (summed over label sets)."""
    values = {
        REQUESTS_RUNNING: 0.0,
        REQUESTS_WAITING: 0.0,
        _CAPACITY: 0.0,
        _INFERENCE_SUM: 0.0,
        _INFERENCE_COUNT: 0.0,
    }
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = line.find("{") if "{" in line else line.find(" ")
        name = line[:name_end]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[-1])
        elif line.startswith(_CAPACITY) and 'reason="capacity"' in line:
            values[_CAPACITY] += float(line.rsplit(" ", 1)[-1])
    return EngineSample(
        running=round(values[REQUESTS_RUNNING]),
        waiting=round(values[REQUESTS_WAITING]),
        waiting_for_seat=round(values[_CAPACITY]),
        inference_seconds=values[_INFERENCE_SUM],
        finished=round(values[_INFERENCE_COUNT]),
    )


def parse_load(text: str) -> int:
    """Running + waiting requests from vLLM's Prometheus text (summed over every label set)."""
    return parse_engine(text).load


def learn_concurrency(known: int, sample: EngineSample) -> int:
    """An engine's concurrency from a poll: the requests it runs while others wait for a seat (it could
    run no more), else at least as many as it ran; 0 while neither says anything."""
    if sample.waiting_for_seat > 0 and sample.running > 0:
        return sample.running
    return max(known, sample.running) if known else 0


class LoadPoller:
    """Keeps `state`'s load and health of each worker fresh."""

    def __init__(
        self,
        state: FleetState,
        session: aiohttp.ClientSession,
        interval: float = 0.5,
        headers: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_num_seqs: int = 0,
    ) -> None:
        self.state = state
        self.session = session
        self.interval = interval
        self.headers = headers or {}
        self.clock = clock
        self.max_num_seqs = max_num_seqs  # 0: learn each engine's concurrency from its metrics
        self._finished: dict[str, tuple[float, int]] = {}  # worker -> (inference seconds, requests)

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
                sample = parse_engine(await response.text())
        except TimeoutError:
            log.debug("The vLLM of worker %s did not answer a load poll within %.1f s", name, timeout.total)
            return
        except (aiohttp.ClientError, ValueError) as error:
            if self.state.table.workers.get(name) is not None and self.state.table.workers[name].healthy:
                log.warning(
                    "Lost worker %s: its vLLM did not answer (%s)", name, error or type(error).__name__
                )
            self.state.report_unreachable(name, self.clock())
            return
        self.state.report_load(name, sample.load, self.clock())
        self._learn(name, sample)

    def _learn(self, name: str, sample: EngineSample) -> None:
        table = self.state.table
        state = table.workers.get(name)
        if state is None:
            return
        concurrency = self.max_num_seqs or learn_concurrency(state.concurrency, sample)
        if concurrency != state.concurrency:
            table.set_concurrency(name, concurrency)
        seconds, count = self._finished.get(name, (0.0, 0))
        if sample.finished > count and sample.inference_seconds >= seconds:
            table.times.record_request((sample.inference_seconds - seconds) / (sample.finished - count))
        self._finished[name] = (sample.inference_seconds, sample.finished)

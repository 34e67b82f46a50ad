"""The router's client of the workers' agents: make an adapter servable on a worker before a request.

`POST /v1/adapters/ensure` (loraplex.api.agent) on the worker's agent, with the
adapter's name (and, for a LoRAAdapter, `named` and the revision the router's
view asks for). Concurrent requests for the same copy share one call. What the
agent answers becomes the routing table's view of that copy (its tier, its
revision, and the name its vLLM serves it under), or a `Retryable` (another
worker may serve) or `Refused` (the answer for the client).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from pydantic import ValidationError

from loraplex.api.agent import ENSURE_PATH, EnsureCode, EnsureRequest, EnsureResult, EnsureStatus
from loraplex.api.tiers import Tier
from loraplex.api.wire import to_wire
from loraplex.router.errors import Refused, Retryable, describe, error_response, unknown_model
from loraplex.router.metrics import RouterMetrics
from loraplex.router.settings import RouterSettings
from loraplex.router.state import FleetState
from loraplex.singleflight import SingleFlight

# (worker, adapter, the revision asked for)
CopyKey = tuple[str, str, str | None]


class AgentClient:
    def __init__(
        self,
        settings: RouterSettings,
        state: FleetState,
        metrics: RouterMetrics,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.session = session
        self.ensuring: SingleFlight[CopyKey, None] = SingleFlight()  # ensure calls under way

    async def ensure(self, worker: str, adapter: str, revision: str | None) -> None:
        """Have the worker's agent make the adapter servable (a named adapter at `revision`, its
        current digest, where known); raise Refused / Retryable when it cannot.

        Concurrent requests for the same copy share one call to the agent: a burst of first requests
        for an adapter makes one ensure, not one each. The shared call runs on its own task, so a
        client that disconnects does not cancel it for the others; a request whose shared call
        failed makes its own, so each gets the answer (and the retry) its own call gives."""
        await self.ensuring.run(
            (worker, adapter, revision),
            lambda: self._ensure(worker, adapter, revision),
            alone_after=(Refused, Retryable),
        )

    async def _ensure(self, worker: str, adapter: str, revision: str | None) -> None:
        endpoints = self.state.endpoints.get(worker)
        if endpoints is None:
            raise Retryable("connect", f"worker {worker} is gone")
        timeout = aiohttp.ClientTimeout(
            total=self.settings.ensure_timeout_seconds, connect=self.settings.connect_timeout_seconds
        )
        table = self.state.table
        if table.is_named(adapter):  # its agent may read it from the LoRAAdapter (a spill past its placement)
            wanted = EnsureRequest(name=adapter, named=True, sha256=revision)
        else:
            wanted = EnsureRequest(name=adapter)
        before = table.holders(adapter).get(worker)  # the tier the load starts from
        started = time.monotonic()
        try:
            async with self.session.post(
                f"{endpoints.agent_url}{ENSURE_PATH}", json=to_wire(wanted), timeout=timeout
            ) as answer:
                data: Any = await answer.json(content_type=None)
                status = answer.status
                retry_after = answer.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.metrics.ensures.labels("unreachable").inc()
            raise Retryable(
                "connect", f"the agent of worker {worker} did not answer ({describe(error)})"
            ) from error
        problem = data.get("error") if isinstance(data, dict) else None
        message = problem.get("message") if isinstance(problem, dict) else None
        code = problem.get("code") if isinstance(problem, dict) else None
        if status == 200:
            self.metrics.ensures.labels("loaded").inc()
            if before not in (Tier.GPU, Tier.CPU):  # what a load from disk or the store costs a request
                table.times.record_load("disk" if before == Tier.DISK else "miss", time.monotonic() - started)
            result = _result(data)
            if result is not None:  # the name its vLLM serves the copy under, for this request too
                self.state.note_engine_name(worker, adapter, result.engine_name)
            if result is not None and result.tier in (Tier.GPU, Tier.CPU):
                table.set_tier(worker, adapter, result.tier)
            if result is not None and result.sha256 is not None and table.is_named(adapter):
                self.state.note_copy(worker, adapter, result.sha256)  # until that worker's next report
            return
        if status == EnsureStatus.NOT_FOUND:
            self.metrics.ensures.labels("unknown").inc()
            if table.is_named(adapter):  # placed elsewhere now (a residency we had was stale)
                raise Retryable("not_placed", f"the agent of worker {worker} does not have adapter {adapter}")
            raise Refused(unknown_model(adapter))
        if status == EnsureStatus.REFUSED:
            self.metrics.ensures.labels("refused").inc()
            raise Refused(
                error_response(
                    502, f"The adapter '{adapter}' could not be loaded: {message or 'refused'}.", code
                )
            )
        if status == EnsureStatus.UNAVAILABLE and code == EnsureCode.ADAPTER_LOOKUP_FAILED:
            # a spill's agent could not read the LoRAAdapter
            self.metrics.ensures.labels("lookup_failed").inc()
            raise Retryable(
                "not_placed", f"the agent of worker {worker} could not look {adapter} up: {message}"
            )
        if status == EnsureStatus.UNAVAILABLE and code == EnsureCode.ENGINE_NOT_READY:
            # that worker's vLLM restarts: another can serve
            self.metrics.ensures.labels("not_ready").inc()
            raise Retryable("not_ready", f"worker {worker} is not ready: {message}")
        if status == EnsureStatus.UNAVAILABLE:
            self.metrics.ensures.labels("backing_off").inc()
            raise Refused(
                error_response(
                    503,
                    f"The adapter '{adapter}' is not available right now: {message or 'loading failed'}.",
                    code or 503,
                    retry_after=retry_after,
                )
            )
        self.metrics.ensures.labels("error").inc()
        raise Retryable("status", f"the agent of worker {worker} answered {status}: {message}")


def _result(data: Any) -> EnsureResult | None:
    """An ensure's answer, or None where it is not one (the load happened; only the details are lost)."""
    try:
        return EnsureResult.model_validate(data)
    except ValidationError:
        return None

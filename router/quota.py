"""Quotas: requests and tokens per minute per principal and per adapter, each a sliding window.

The BaseModel's `spec.quotas` (loraplex.api.basemodel.Quotas) gives the budgets; every router
replica enforces `ceil(limit / replicas)` of each, in its own memory, so the replicas together admit
at most the limit (plus rounding) with no store shared between them. The windows are the `limits`
library's sliding-window counters (two counters per key, O(1) memory; keys expire two windows after
their last hit). A request is admitted when every requests budget that applies has room for it and
no tokens budget that applies is spent; requests are counted when admitted, tokens charged after the
answer from what vLLM reports in `usage` (`charge`). A refusal says which budget ran out and when it
has room again (`retry_after`, computed from the window's counters by `seconds_until_room`), and
is answered 429 in OpenAI's shape with `Retry-After` (`rate_limited`). Every answer carries OpenAI's
`x-ratelimit-*` headers of the principal's budgets on this replica (`rate_headers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from aiohttp import web
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from loraplex.api.basemodel import QuotaLimits, Quotas
from loraplex.router.errors import error_body

Scope = Literal["principal", "adapter"]
Budget = Literal["requests", "tokens"]
WINDOW_SECONDS = 60


def replica_share(limit: int, replicas: int) -> int:
    """This replica's part of a budget shared by `replicas` routers."""
    return math.ceil(limit / max(1, replicas))


@dataclass(frozen=True)
class Window:
    """A sliding-window counter as the library keeps it: the previous and current window's counts,
    and the seconds until the current window ends (when the previous one has fully aged out)."""

    previous: int
    current: int
    until_roll: float
    length: float = WINDOW_SECONDS

    def weighted(self) -> float:
        """The count the window holds now: the previous window's, weighted by how much of it is left."""
        return self.previous * self.until_roll / self.length + self.current


def seconds_until_room(window: Window, limit: int, cost: int = 1) -> int:
    """Whole seconds (at least 1) until `cost` more fits under `limit`, with no other hits meanwhile.

    The library admits while floor(weighted) + cost <= limit, i.e. weighted < limit - cost + 1. Until
    the roll the previous window's weight falls linearly to 0; after it the current window becomes
    the previous one and falls the same way over one window length."""
    target = limit - cost + 1
    if window.weighted() < target:
        return 1
    if window.current < target:  # room comes back before the roll, as the previous window ages out
        seconds = window.until_roll - (target - window.current) * window.length / window.previous
    else:
        seconds = window.until_roll + window.length * (1 - target / window.current)
    return max(1, math.floor(round(seconds, 6)) + 1)  # rounded: float noise must not make it early


@dataclass(frozen=True)
class Limit:
    """One budget that applies to a request: whose it is, what it counts, and this replica's share."""

    scope: Scope
    budget: Budget
    subject: str  # the principal's subject or the adapter's name
    configured: int  # per minute, all replicas together
    share: int  # per minute, this replica

    @property
    def item(self) -> RateLimitItem:
        return RateLimitItemPerMinute(self.share, namespace=f"{self.scope}-{self.budget}")

    @property
    def key(self) -> str:
        return quote(self.subject, safe="")  # no '/' inside: the library joins key parts with '/'


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the budget that ran out, and when to try again."""

    limit: Limit
    retry_after: int

    @property
    def message(self) -> str:
        limit = self.limit
        what = "requests per minute (RPM)" if limit.budget == "requests" else "tokens per minute (TPM)"
        whose = "principal" if limit.scope == "principal" else "model"
        return (
            f"Rate limit reached for {whose} '{limit.subject}' on {what}: limit {limit.configured}"
            f" ({limit.share} on each router replica). Please try again in {self.retry_after}s."
        )


@dataclass(frozen=True)
class Remaining:
    """What is left of a principal's budget, for the `x-ratelimit-*` headers."""

    budget: Budget
    share: int
    remaining: int
    reset_seconds: int


class QuotaLimiter:
    """The quotas of one router replica. Synchronous and without awaits: one request's check-and-count
    cannot interleave with another's on the event loop."""

    def __init__(self, quotas: Quotas | None, replicas: int = 1) -> None:
        self.quotas = quotas
        self.replicas = max(1, replicas)
        self._storage = MemoryStorage()
        self._windows = SlidingWindowCounterRateLimiter(self._storage)

    @property
    def enabled(self) -> bool:
        return self.quotas is not None

    def limits_for(self, subject: str, model: str) -> list[Limit]:
        """The budgets that apply to a request of `subject` for `model` (an adapter or the base model)."""
        if self.quotas is None:
            return []
        found = []
        for scope, name, limits in (
            ("principal", subject, self.quotas.principal_limits(subject)),
            ("adapter", model, self.quotas.adapter_limits(model)),
        ):
            found += self._limits(scope, name, limits)  # type: ignore[arg-type]
        return found

    def _limits(self, scope: Scope, name: str, limits: QuotaLimits | None) -> list[Limit]:
        if limits is None:
            return []
        budgets: list[tuple[Budget, int | None]] = [
            ("requests", limits.requests_per_minute),
            ("tokens", limits.tokens_per_minute),
        ]
        return [
            Limit(scope, budget, name, value, replica_share(value, self.replicas))
            for budget, value in budgets
            if value is not None
        ]

    def counts_tokens(self, subject: str, model: str) -> bool:
        """Whether a tokens budget applies, so the request's usage must be read from its answer."""
        return any(limit.budget == "tokens" for limit in self.limits_for(subject, model))

    def admit(self, subject: str, model: str) -> Refusal | None:
        """Count the request against every requests budget that applies, or refuse it (counting nothing)
        when one of those is full or a tokens budget is spent; the refusal is the one to wait longest for."""
        limits = self.limits_for(subject, model)
        refusals = [
            Refusal(limit, seconds_until_room(self.window(limit), limit.share))
            for limit in limits
            if not self._windows.test(limit.item, limit.key)
        ]
        if refusals:
            return max(refusals, key=lambda refusal: refusal.retry_after)
        for limit in limits:
            if limit.budget == "requests":
                self._windows.hit(limit.item, limit.key)
        return None

    def charge(self, subject: str, model: str, tokens: int) -> None:
        """Charge a finished request's tokens to every tokens budget that applies. Tokens beyond what is
        left are not carried over: the budget is spent, and has room again as the window slides."""
        if tokens <= 0:
            return
        for limit in self.limits_for(subject, model):
            if limit.budget == "tokens":
                left = self._windows.get_window_stats(limit.item, limit.key).remaining
                if left > 0:
                    self._windows.hit(limit.item, limit.key, cost=min(tokens, left))

    def remaining(self, subject: str, model: str) -> list[Remaining]:
        """What is left of the principal's budgets (OpenAI's x-ratelimit-* headers describe those)."""
        found = []
        for limit in self.limits_for(subject, model):
            if limit.scope == "principal":
                stats = self._windows.get_window_stats(limit.item, limit.key)
                window = self.window(limit)
                reset = seconds_until_room(window, limit.share, limit.share) if window.weighted() else 0
                found.append(Remaining(limit.budget, limit.share, stats.remaining, reset))
        return found

    def window(self, limit: Limit) -> Window:
        """The counters of one budget now (the current window's time left is one window past its end)."""
        previous, _, current, current_ttl = self._storage.get_sliding_window(
            limit.item.key_for(limit.key), WINDOW_SECONDS
        )
        return Window(previous, current, current_ttl - WINDOW_SECONDS)


def duration(seconds: int) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: `1s`, `6m0s`."""
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_headers(remaining: list[Remaining]) -> dict[str, str]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers."""
    headers = {}
    for budget in remaining:
        headers[f"x-ratelimit-limit-{budget.budget}"] = str(budget.share)
        headers[f"x-ratelimit-remaining-{budget.budget}"] = str(budget.remaining)
        headers[f"x-ratelimit-reset-{budget.budget}"] = duration(budget.reset_seconds)
    return headers


def rate_limited(refusal: Refusal, headers: dict[str, str]) -> web.Response:
    """429 as OpenAI answers it: type `requests` or `tokens`, code `rate_limit_exceeded`, Retry-After."""
    body = error_body(refusal.message, 429, "rate_limit_exceeded")
    body["error"]["type"] = refusal.limit.budget
    return web.json_response(body, status=429, headers={**headers, "Retry-After": str(refusal.retry_after)})

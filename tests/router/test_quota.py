"""Quotas: the limiter's decisions (burst, Retry-After, refill, independence, replica shares, tokens).

The `limits` library reads `time.time()`, so `clock` moves that clock: time passes only when a test
says so.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from loraplex.api.basemodel import Quotas
from loraplex.router.quota import (
    QuotaLimiter,
    Refusal,
    Window,
    duration,
    rate_headers,
    replica_share,
    seconds_until_room,
)

START = 1_800_000_000.0 + 10  # 10 s into a one-minute window (the windows are aligned to epoch minutes)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def limiter(spec: dict[str, Any], replicas: int = 1) -> QuotaLimiter:
    return QuotaLimiter(Quotas.model_validate(spec), replicas)


def burst(quota: QuotaLimiter, subject: str, model: str, count: int) -> list[Refusal | None]:
    return [quota.admit(subject, model) for _ in range(count)]


def test_a_burst_over_the_requests_limit_is_refused_until_the_window_has_room(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 3}})
    answers = burst(quota, "alice", "sql", 5)
    assert answers[:3] == [None, None, None]
    refusal = answers[3]
    assert refusal is not None
    assert refusal.limit.scope == "principal"
    assert refusal.limit.budget == "requests"
    # The current minute ends in 50 s; then its three requests start to age out of the window.
    assert refusal.retry_after == 51
    assert answers[4] is not None
    assert answers[4].retry_after == 51
    clock.now += refusal.retry_after - 1
    assert quota.admit("alice", "sql") is not None  # a second early: still full
    clock.now += 1
    assert quota.admit("alice", "sql") is None  # told when: it has room then


def test_retry_after_waits_for_the_previous_minute_to_age_out() -> None:
    # 6 requests in the last minute, 1 in this one, limit 6: the weighted count is 6 * 30/60 + 1 = 4.
    assert seconds_until_room(Window(previous=6, current=1, until_roll=30), 6) == 1
    # 6 then 4, limit 6: 6 * w + 4 < 6 once w < 1/3, i.e. 20 s before the roll: in 10 s (and a bit).
    assert seconds_until_room(Window(previous=6, current=4, until_roll=30), 6) == 11
    # This minute alone is full: room comes as soon as it starts to age, past its end.
    assert seconds_until_room(Window(previous=0, current=6, until_roll=30), 6) == 31
    # 6 of a limit of 3: half of it must have aged out, half a minute past its end.
    assert seconds_until_room(Window(previous=0, current=6, until_roll=30), 3) == 61


def test_the_window_refills_as_it_slides(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 2}})
    assert burst(quota, "alice", "sql", 2) == [None, None]
    clock.now += 120  # two windows later nothing is left of the burst
    assert burst(quota, "alice", "sql", 2) == [None, None]
    assert quota.admit("alice", "sql") is not None


def test_principals_and_adapters_have_budgets_of_their_own(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 2}, "perAdapter": {"requestsPerMinute": 3}})
    assert burst(quota, "alice", "sql", 2) == [None, None]
    alice = quota.admit("alice", "chat")
    assert alice is not None
    assert alice.limit.scope == "principal"
    assert quota.admit("bob", "sql") is None  # sql's third request of the minute
    sql = quota.admit("carol", "sql")
    assert sql is not None
    assert sql.limit.scope == "adapter"
    assert sql.limit.subject == "sql"
    assert quota.admit("carol", "chat") is None  # carol is not charged for the refused request


def test_a_refused_request_counts_against_no_budget(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 1}, "perAdapter": {"requestsPerMinute": 5}})
    assert quota.admit("alice", "sql") is None
    assert burst(quota, "alice", "sql", 10).count(None) == 0
    assert burst(quota, "bob", "sql", 1) == [None]  # sql had 2 of its 5, not 12


def test_named_principals_and_adapters_get_their_own_limits(clock: Clock) -> None:
    quota = limiter(
        {
            "perPrincipal": {"requestsPerMinute": 1},
            "principals": [{"subject": "batch-job", "requestsPerMinute": 4}],
            "adapters": [{"name": "sql", "requestsPerMinute": 2}],
        }
    )
    assert burst(quota, "batch-job", "chat", 5).count(None) == 4
    assert burst(quota, "alice", "chat", 3).count(None) == 1
    answers = burst(quota, "bob", "sql", 1) + burst(quota, "carol", "sql", 1) + burst(quota, "dave", "sql", 1)
    assert answers[:2] == [None, None]
    assert answers[2] is not None
    assert answers[2].limit.scope == "adapter"


@pytest.mark.parametrize(("limit", "replicas", "share"), [(10, 1, 10), (10, 3, 4), (1, 4, 1), (100, 2, 50)])
def test_each_replica_enforces_its_share_of_the_limit(limit: int, replicas: int, share: int) -> None:
    assert replica_share(limit, replicas) == share


def test_a_replica_refuses_past_its_share_and_says_the_whole_limit(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 10}}, replicas=3)
    answers = burst(quota, "alice", "sql", 5)
    assert answers.count(None) == 4
    refusal = answers[4]
    assert refusal is not None
    assert "limit 10 (4 on each router replica)" in refusal.message


def test_tokens_are_charged_after_the_answer_and_refuse_once_spent(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"tokensPerMinute": 100}})
    assert quota.admit("alice", "sql") is None
    quota.charge("alice", "sql", 60)
    assert quota.admit("alice", "sql") is None  # 40 left: admitted, whatever it will cost
    quota.charge("alice", "sql", 70)  # more than is left: the budget is spent, no debt carried
    refusal = quota.admit("alice", "sql")
    assert refusal is not None
    assert refusal.limit.budget == "tokens"
    assert refusal.retry_after == 51
    assert quota.admit("bob", "sql") is None
    clock.now += refusal.retry_after + 60
    assert quota.admit("alice", "sql") is None


def test_an_adapters_tokens_are_shared_by_every_principal(clock: Clock) -> None:
    quota = limiter({"perAdapter": {"tokensPerMinute": 50}})
    quota.charge("alice", "sql", 30)
    quota.charge("bob", "sql", 30)
    refusal = quota.admit("carol", "sql")
    assert refusal is not None
    assert refusal.limit.scope == "adapter"
    assert refusal.limit.budget == "tokens"
    assert quota.admit("carol", "chat") is None


def test_without_quotas_everything_is_admitted_and_nothing_is_counted(clock: Clock) -> None:
    quota = QuotaLimiter(None)
    assert burst(quota, "alice", "sql", 100) == [None] * 100
    assert not quota.enabled
    assert not quota.counts_tokens("alice", "sql")
    assert rate_headers(quota.remaining("alice", "sql")) == {}


def test_the_principals_budgets_are_reported_in_openais_headers(clock: Clock) -> None:
    quota = limiter({"perPrincipal": {"requestsPerMinute": 4, "tokensPerMinute": 1000}})
    burst(quota, "alice", "sql", 3)
    quota.charge("alice", "sql", 250)
    headers = rate_headers(quota.remaining("alice", "sql"))
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "750"
    # All of it back: 50 s to the end of this minute, then 40 s until less than one request is left.
    assert headers["x-ratelimit-reset-requests"] == "1m31s"


@pytest.mark.parametrize(("seconds", "text"), [(1, "1s"), (59, "59s"), (60, "1m0s"), (361, "6m1s")])
def test_durations_are_written_like_openais(seconds: int, text: str) -> None:
    assert duration(seconds) == text

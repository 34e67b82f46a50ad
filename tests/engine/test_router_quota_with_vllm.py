"""Quotas in the real router in front of a real CPU vLLM worker, called with the openai client.

The router is given `spec.quotas` as the operator passes it (LORAPLEX_ROUTER_QUOTAS): adapter `sql`
may take 3 requests a minute, adapter `chat` and the base model 40 tokens a minute. Every caller is
the anonymous principal (authentication is off), so the per-adapter budgets are what is hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from loraplex.e2e.tiny_model import AdapterFiles
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, RouterProcess, VllmProcess
from tests.engine.conftest import wanted_entry, write_wanted

pytestmark = pytest.mark.engine

REQUESTS_PER_MINUTE = 3
TOKENS_PER_MINUTE = 40
QUOTAS = {
    "adapters": [
        {"name": "sql", "requestsPerMinute": REQUESTS_PER_MINUTE},
        {"name": "chat", "tokensPerMinute": TOKENS_PER_MINUTE},
        {"name": "base", "tokensPerMinute": TOKENS_PER_MINUTE},
    ]
}
# A sliding-window counter lets one request more through when the burst straddles the turn of a
# minute (the previous minute's count is weighted down): refusals are awaited that much later.
SLACK = 2


@pytest.fixture(scope="module")
def router(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    work = tmp_path_factory.mktemp("router-quota")
    wanted = work / "wanted.yaml"
    write_wanted(
        wanted, [wanted_entry(adapters["a0"], "GPU", "sql"), wanted_entry(adapters["a1"], "GPU", "chat")]
    )
    agent = AgentProcess(vllm, work / "cache", work / "agent.log", worker="w0", wanted_file=wanted).start()
    router = None
    try:
        wait_until(lambda: agent.held() == {"sql": "GPU", "chat": "GPU"}, 60, "w0 holding sql and chat")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LORAPLEX_ROUTER_QUOTAS", json.dumps(QUOTAS))
            router = RouterProcess(work / "router.log", api_key=vllm.api_key, workers={"w0": agent}).start()
        yield router
    finally:
        if router is not None:
            router.stop()
        agent.stop()


@pytest.fixture(scope="module")
def api(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def until_refused(call: Callable[[], int], most: int) -> tuple[openai.RateLimitError, list[int]]:
    """Call until the router answers 429 (at most `most` calls): the error, and what admitted calls gave."""
    results = []
    for _ in range(most):
        try:
            results.append(call())
        except openai.RateLimitError as error:
            return error, results
    raise AssertionError(f"no 429 after {most} requests")


def assert_openai_rate_limit(error: openai.RateLimitError, kind: str) -> None:
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    body = error.response.json()["error"]
    assert body["type"] == kind
    assert body["code"] == "rate_limit_exceeded"
    assert "Please try again in" in body["message"]
    retry_after = error.response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 120


def test_a_burst_over_the_requests_limit_gets_429_with_retry_after(
    router: RouterProcess, api: openai.OpenAI
) -> None:

    def sql() -> int:
        return len(api.completions.create(model="sql", prompt="the quick", max_tokens=1).choices)

    refused, admitted = until_refused(sql, REQUESTS_PER_MINUTE + SLACK)
    assert len(admitted) >= REQUESTS_PER_MINUTE  # a fresh budget: the first ones all fit
    assert_openai_rate_limit(refused, "requests")
    assert "'sql'" in refused.message
    # Another adapter's budget is its own.
    assert api.completions.create(model="chat", prompt="the quick", max_tokens=1).choices
    samples = router.metrics()
    assert samples['loraplex_router_adapter_quota_refusals_total{adapter="sql",budget="requests"}'] >= 1
    by_principal = "loraplex_router_principal_quota_refusals_total"
    assert samples[f'{by_principal}{{budget="requests",principal="anonymous",scope="adapter"}}'] >= 1


def test_a_tokens_limit_refuses_once_the_tokens_used_reach_it(
    router: RouterProcess, api: openai.OpenAI
) -> None:

    def chat() -> int:
        answer = api.completions.create(model="chat", prompt="the quick brown fox", max_tokens=8)
        assert answer.usage is not None
        return answer.usage.total_tokens

    refused, used = until_refused(chat, TOKENS_PER_MINUTE)  # each uses several tokens: refused well before
    assert_openai_rate_limit(refused, "tokens")
    assert used  # the first fits
    assert sum(used) >= TOKENS_PER_MINUTE - SLACK  # refused only once (about) the whole budget was used
    assert router.metrics()['loraplex_router_adapter_tokens_total{adapter="chat"}'] >= sum(used)


def test_a_streams_tokens_are_charged_without_the_client_seeing_the_usage_it_did_not_ask_for(
    api: openai.OpenAI,
) -> None:
    messages: list[Any] = [{"role": "user", "content": "hello world"}]

    def stream() -> int:
        chunks = list(api.chat.completions.create(model="base", messages=messages, max_tokens=8, stream=True))
        assert chunks
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)  # no usage event
        return len(chunks)

    refused, streamed = until_refused(stream, TOKENS_PER_MINUTE)
    assert_openai_rate_limit(refused, "tokens")
    assert streamed  # the first fits; the tokens the streams used were charged

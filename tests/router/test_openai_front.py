"""The router answers like OpenAI's API around the routed calls (fake workers, conftest.py).

Request ids travel from the client to vLLM and back; paths and methods the
router does not serve answer in OpenAI's error shape, which the official client
turns into its typed errors; the other OpenAI calls a vLLM serves are routed
like completions.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest


async def test_a_clients_request_id_reaches_vllm_and_comes_back(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    body = {"model": "sql-gen", "prompt": "x", "max_tokens": 3}
    headers = {"X-Request-Id": "trace-42"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/completions", json=body, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "trace-42"
    assert fleet.workers["worker-0"].request_ids == ["trace-42"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_without_an_id_gets_one_that_vllm_sees_too(fleet: Any, stream: bool) -> None:
    fleet.hold("worker-1", "sql-gen")
    body = {"model": "sql-gen", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/chat/completions", json=body) as response,
    ):
        await response.read()
        given = response.headers["X-Request-Id"]
    assert len(given) == 32
    assert fleet.workers["worker-1"].request_ids == [given]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing-here", 404, "unknown_url"),
        ("POST", "/v2/completions", 404, "unknown_url"),
        ("GET", "/v1/completions", 405, "method_not_allowed"),
    ],
)
async def test_what_the_router_does_not_serve_answers_in_openais_shape(
    fleet: Any, method: str, path: str, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as session, session.request(method, f"{fleet.url}{path}") as response:
        assert response.status == status
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
        assert response.headers["X-Request-Id"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert path in error["message"]


async def test_the_official_client_reads_the_errors_and_one_model(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    async with openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="k", max_retries=0) as api:
        card = await api.models.retrieve("sql-gen")
        assert (card.id, card.owned_by) == ("sql-gen", "loraplex")
        with pytest.raises(openai.NotFoundError) as missing:
            await api.models.retrieve("no-such-adapter")
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.get("/files", cast_to=object)
        assert unknown.value.code == "unknown_url"


async def test_the_responses_api_is_routed_by_its_model(fleet: Any) -> None:
    fleet.hold("worker-1", "sql-gen")
    body = {"model": "sql-gen", "input": "x"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/responses", json=body) as response,
    ):
        assert response.status == 200
    assert fleet.workers["worker-1"].calls == [body]
    assert fleet.workers["worker-0"].calls == []


async def test_a_call_the_engine_does_not_serve_is_refused_in_openais_shape_not_retried(fleet: Any) -> None:
    fleet.hold("worker-1", "sql-gen")  # these fake engines serve no /v1/embeddings (as a generative vLLM)
    async with openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="k", max_retries=0) as api:
        with pytest.raises(openai.NotFoundError) as refused:
            await api.embeddings.create(model="sql-gen", input="x")
    assert refused.value.code == "unsupported_endpoint"
    assert fleet.state.table.holders("sql-gen") == {"worker-1": "GPU"}  # not taken for a stale residency
    assert 'loraplex_router_retries_total{reason="not_loaded"} 0.0' in await fleet.metrics_text()

"""The agent's ensure endpoint speaks the contract of loraplex.api.agent, as the router reads it."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from loraplex.api.agent import ENSURE_PATH, EnsureCode, EnsureResult, EnsureStatus
from loraplex.api.tiers import Tier
from loraplex.worker.agent.agent import Agent, Ensured, EnsureError
from loraplex.worker.agent.http_api import make_app

SHA = "a" * 64


class StandInAgent:
    """Answers ensure calls as the agent would: `sql` is held on the GPU, anything else is unknown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str | None]] = []

    async def ensure(self, name: str, named: bool = False, sha256: str | None = None) -> Ensured:
        self.calls.append((name, named, sha256))
        if name == "chat-v2":  # a revision swapped in beside another: vLLM serves it under its own name
            return Ensured(name, Tier.CPU, 0.5, SHA, f"chat-v2@{SHA[:12]}")
        if name != "sql":
            raise EnsureError(EnsureStatus.NOT_FOUND, EnsureCode.ADAPTER_NOT_FOUND, f"no adapter {name}")
        return Ensured(name, Tier.GPU, 0.123456, SHA)


async def post(body: Any) -> tuple[int, Any, StandInAgent]:
    agent = StandInAgent()
    app = make_app(agent)  # type: ignore[arg-type]  # the stand-in has the one method ensure calls use
    async with TestClient(TestServer(app)) as client:
        answer = await client.post(ENSURE_PATH, json=body)
        return answer.status, await answer.json(), agent


async def test_an_ensured_adapter_is_answered_as_an_ensure_result() -> None:
    status, body, agent = await post({"name": "sql", "named": True, "sha256": SHA})
    assert status == 200
    assert body == {"name": "sql", "tier": "GPU", "loadSeconds": 0.1235, "sha256": SHA}
    assert EnsureResult.model_validate(body).tier is Tier.GPU  # what the router parses
    assert agent.calls == [("sql", True, SHA)]


async def test_an_ensured_copy_under_an_engine_name_of_its_own_answers_that_name() -> None:
    status, body, _ = await post({"name": "chat-v2"})
    assert status == 200
    assert body["engineName"] == f"chat-v2@{SHA[:12]}"
    assert EnsureResult.model_validate(body).engine_name == f"chat-v2@{SHA[:12]}"


async def test_a_refusal_carries_its_kind_as_the_status_and_its_reason_as_the_code() -> None:
    status, body, _ = await post({"name": "chat"})
    assert status == EnsureStatus.NOT_FOUND
    assert body["error"]["code"] == EnsureCode.ADAPTER_NOT_FOUND


async def test_a_malformed_request_is_refused_naming_the_field_and_never_reaches_the_agent() -> None:
    for request, field in [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "sql", "named": "maybe"}, "named"),
    ]:
        status, body, agent = await post(request)
        assert status == EnsureStatus.INVALID
        assert body["error"]["code"] == EnsureCode.INVALID_REQUEST
        assert f"'{field}'" in body["error"]["message"]
        assert agent.calls == []


def test_the_stand_in_has_the_signature_of_the_agents_ensure() -> None:
    assert StandInAgent.ensure.__code__.co_varnames[:4] == Agent.ensure.__code__.co_varnames[:4]

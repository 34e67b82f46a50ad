"""Requests go to a copy under the name its vLLM serves it by; clients see only the name they asked for.

A worker swapping in a new revision of an adapter registers it under an engine name of its own
(`<name>@<revision>`) and reports it (or answers it to an ensure). The router sends the request's
`model` as that name and puts the client's name back into the answer: JSON, errors and each event
of a stream. `fleet` (conftest.py) is two fake workers, whose vLLM answers with the `model` it got.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai

from loraplex.api.workerplacement import WorkerPlacementStatus, read_status
from loraplex.router.model_rewrite import ModelRewrite
from loraplex.router.state import Resident, residents

DIGEST = "0123456789abcdef" * 4
ENGINE_NAME = "sql-gen@0123456789ab"


def client(fleet: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="client-key", max_retries=0)


def test_a_request_body_gets_the_engine_name_and_the_answer_the_clients_name_back() -> None:
    rewrite = ModelRewrite("sql-gen", ENGINE_NAME)
    body = rewrite.request(b'{"model": "sql-gen", "prompt": "sql-gen says", "max_tokens": 3}')
    assert json.loads(body) == {"model": ENGINE_NAME, "prompt": "sql-gen says", "max_tokens": 3}
    answer = json.dumps({"model": ENGINE_NAME, "choices": [{"text": "hi"}]}).encode()
    assert json.loads(rewrite.answer(answer)) == {"model": "sql-gen", "choices": [{"text": "hi"}]}
    error = json.dumps({"error": {"message": f"The model `{ENGINE_NAME}` has max_tokens 8.", "code": 400}})
    assert (
        json.loads(rewrite.answer(error.encode()))["error"]["message"]
        == "The model `sql-gen` has max_tokens 8."
    )
    untouched = b'{"model": "other", "choices": []}'
    assert rewrite.answer(untouched) is untouched


def test_each_event_of_a_stream_gets_the_clients_name_back_however_the_chunks_split_it() -> None:
    events = [
        {"id": "c1", "model": ENGINE_NAME, "choices": [{"text": "Hello"}]},
        {"id": "c1", "model": ENGINE_NAME, "choices": [{"text": f" about {ENGINE_NAME}"}]},  # model output
        {"id": "c1", "model": ENGINE_NAME, "choices": [], "usage": {"total_tokens": 4}},
    ]
    stream = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    for size in (1, 7, 64, len(stream)):
        rewrite = ModelRewrite("sql-gen", ENGINE_NAME)
        out = b"".join(rewrite.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        out += rewrite.flush()
        parts = out.split(b"\n\n")
        assert parts[-2:] == [b"data: [DONE]", b""]
        decoded = [json.loads(part.removeprefix(b"data: ")) for part in parts[:-2]]
        assert [e["model"] for e in decoded] == ["sql-gen"] * 3
        assert decoded[1]["choices"][0]["text"] == f" about {ENGINE_NAME}"  # what the model wrote stays


def test_a_report_without_engine_names_means_each_copy_serves_under_its_own_name() -> None:
    old = read_status({"adapters": [{"name": "sql-gen", "sha256": DIGEST, "tier": "GPU"}]})
    assert residents(old) == [Resident("sql-gen", "GPU", False, DIGEST, None)]  # type: ignore[arg-type]
    new = read_status(
        {"adapters": [{"name": "sql-gen", "sha256": DIGEST, "tier": "GPU", "engineName": ENGINE_NAME}]}
    )
    assert isinstance(new, WorkerPlacementStatus)
    assert residents(new)[0].engine_name == ENGINE_NAME


async def test_a_request_goes_under_the_reported_engine_name_and_answers_under_the_adapters(
    fleet: Any,
) -> None:
    fleet.state.report_residency(
        "worker-0", [Resident("sql-gen", "GPU", sha256=DIGEST, engine_name=ENGINE_NAME)]
    )
    worker = fleet.workers["worker-0"]
    async with client(fleet) as api:
        whole = await api.completions.create(model="sql-gen", prompt="x", max_tokens=3)
        stream = await api.chat.completions.create(
            model="sql-gen", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert [call["model"] for call in worker.calls] == [ENGINE_NAME, ENGINE_NAME]
    assert whole.model == "sql-gen"
    assert {chunk.model for chunk in chunks} == {"sql-gen"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from worker-0 and goodbye"
    assert worker.ensured == []  # held: no ensure call

    fleet.state.report_residency("worker-0", [Resident("sql-gen", "GPU", sha256=DIGEST)])  # swapped back
    async with client(fleet) as api:
        await api.completions.create(model="sql-gen", prompt="x", max_tokens=3)
    assert worker.calls[-1]["model"] == "sql-gen"


async def test_an_ensure_answer_names_the_engine_name_the_request_goes_under(fleet: Any) -> None:
    for worker in fleet.workers.values():
        worker.engine_names["tail-1"] = "tail-1@0123456789ab"
    body = {"model": "tail-1", "prompt": "x", "max_tokens": 3}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/completions", json=body) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["model"] == "tail-1"
    served_by = [w for w in fleet.workers.values() if w.calls]
    assert len(served_by) == 1
    assert served_by[0].ensured == ["tail-1"]
    assert served_by[0].calls[0]["model"] == "tail-1@0123456789ab"

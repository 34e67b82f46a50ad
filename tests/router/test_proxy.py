"""The router's HTTP front against in-process fake workers: routing, streaming, errors, retries, metrics.

`fleet` (conftest.py) is two fake workers, worker-0 and worker-1, behind a real router app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from loraplex.router.state import Resident

API_KEY = "test-vllm-key"
DEADLINE = 10.0


def client(fleet: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="client-key", max_retries=0)


async def post(fleet: Any, path: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}{path}", data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_streamed_chunks_reach_the_client_before_the_worker_finishes(fleet: Any) -> None:
    fleet.hold("worker-1", "sql-gen")
    worker = fleet.workers["worker-1"]
    worker.gated = True
    async with client(fleet) as api:
        stream = await api.chat.completions.create(
            model="sql-gen", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(stream)
        first = await asyncio.wait_for(anext(chunks), DEADLINE)
        assert first.choices[0].delta.content == "Hello from worker-1"
        assert not worker.release.is_set()  # the worker is still holding the rest back
        worker.release.set()
        rest = [chunk.choices[0].delta.content async for chunk in chunks]
    assert rest == [" and goodbye"]
    assert worker.auth == [f"Bearer {API_KEY}"]
    assert fleet.workers["worker-0"].calls == []


async def test_completions_go_to_the_worker_holding_the_adapter_in_gpu(fleet: Any) -> None:
    fleet.hold("worker-0", "chat-bot")
    async with client(fleet) as api:
        completion = await api.completions.create(model="chat-bot", prompt="x", max_tokens=3)
    assert completion.choices[0].text == "served by worker-0"
    assert fleet.workers["worker-0"].ensured == []  # held in GPU: no load asked for


async def test_a_miss_asks_the_chosen_workers_agent_to_load_the_adapter_first(fleet: Any) -> None:
    async with client(fleet) as api:
        completion = await api.completions.create(model="tail-1", prompt="x", max_tokens=3)
    served_by = completion.choices[0].text.removeprefix("served by ")
    assert fleet.workers[served_by].ensured == ["tail-1"]
    assert fleet.state.table.holders("tail-1") == {served_by: "GPU"}


@pytest.mark.timeout(60)  # a request left waiting on a shared call would hang
async def test_concurrent_first_requests_for_an_adapter_share_one_ensure_call_per_worker(fleet: Any) -> None:
    gate = asyncio.Event()
    for worker in fleet.workers.values():
        worker.ensure_gate = gate  # the agents take their time loading
    async with client(fleet) as api:
        burst = [
            asyncio.create_task(api.completions.create(model="tail-1", prompt="x", max_tokens=3))
            for _ in range(6)
        ]
        await routed(fleet, len(burst))  # every request decided and waiting on a load
        gate.set()
        completions = await asyncio.gather(*burst)
    served_by = {completion.choices[0].text.removeprefix("served by ") for completion in completions}
    for name, worker in fleet.workers.items():
        assert worker.ensured == (["tail-1"] if name in served_by else [])
    assert fleet.proxy.ensuring == {}


@pytest.mark.timeout(60)  # a request left waiting on a shared call would hang
async def test_requests_that_shared_a_failed_ensure_call_each_get_their_own_answer(fleet: Any) -> None:
    gate = asyncio.Event()
    for worker in fleet.workers.values():
        worker.ensure_gate = gate
    async with client(fleet) as api:
        burst = [
            asyncio.create_task(api.completions.create(model="tail-9", prompt="x", max_tokens=3))
            for _ in range(3)
        ]
        await routed(fleet, len(burst))
        gate.set()
        answers = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(answer, openai.NotFoundError) for answer in answers), answers
    assert sum(len(worker.ensured) for worker in fleet.workers.values()) >= len(burst)


@pytest.mark.timeout(60)
async def test_a_client_that_disconnects_does_not_cancel_the_load_others_wait_for(fleet: Any) -> None:
    fleet.state.report_failure("worker-0", time.monotonic())  # one worker left: both requests meet there
    loading = fleet.workers["worker-1"]
    loading.ensure_gate = asyncio.Event()
    async with aiohttp.ClientSession() as session, client(fleet) as api:
        body = {"model": "tail-1", "prompt": "x", "max_tokens": 3}
        first = asyncio.create_task(session.post(f"{fleet.url}/v1/completions", json=body))
        await routed(fleet, 1)
        second = asyncio.create_task(api.completions.create(**body))
        await routed(fleet, 2)
        first.cancel()  # the client whose request started the load goes away
        await asyncio.sleep(0.2)  # its handler is cancelled meanwhile (the load must go on)
        loading.ensure_gate.set()
        completion = await second
    assert completion.choices[0].text == "served by worker-1"
    assert loading.ensured == ["tail-1"]


async def routed(fleet: Any, count: int) -> None:
    """Wait until the router has decided a worker for `count` requests (`loraplex_router_requests_total`)."""
    for _ in range(3000):
        text = await fleet.metrics_text()
        decided = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("loraplex_router_requests_total{")
        )
        if decided >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the router decided {decided} of {count} requests")


async def test_unknown_adapter_is_404_in_openais_shape(fleet: Any) -> None:
    async with client(fleet) as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.completions.create(model="no-such-adapter", prompt="x")
    assert caught.value.status_code == 404
    body: Any = caught.value.body
    assert body["code"] == "model_not_found"
    assert "no-such-adapter" in body["message"]
    assert {"message", "type", "param", "code"} <= body.keys()


async def test_a_model_name_no_adapter_can_have_is_404_without_asking_an_agent(fleet: Any) -> None:
    status, body = await post(fleet, "/v1/completions", {"model": "Not An Adapter!", "prompt": "x"})
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert all(not w.ensured for w in fleet.workers.values())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"prompt": "no model"}).encode(), "model"),
        (json.dumps({"model": 7, "prompt": "x"}).encode(), "model"),
    ],
)
async def test_malformed_json_or_missing_model_is_400(fleet: Any, body: bytes, param: str | None) -> None:
    status, answer = await post(fleet, "/v1/chat/completions", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert all(not w.calls for w in fleet.workers.values())


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    """A body sent in pieces without a Content-Length (chunked), as a slow client's arrives."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_413(fleet: Any, chunked: bool) -> None:
    body = json.dumps({"model": "sql-gen", "prompt": "x" * 5000}).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/completions", data=pieces(body, 1000) if chunked else body) as response,
    ):
        assert response.status == 413
        assert "4096 bytes" in (await response.json())["error"]["message"]
    assert all(not w.calls for w in fleet.workers.values())


async def test_a_large_body_arriving_in_pieces_is_forwarded_whole(fleet: Any) -> None:
    fleet.proxy.settings = dataclasses.replace(fleet.proxy.settings, max_body_bytes=4 << 20)
    fleet.hold("worker-0", "sql-gen")
    prompt = "x" * (3 << 20)
    body = json.dumps({"model": "sql-gen", "prompt": prompt}).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fleet.url}/v1/completions", data=pieces(body, 64 << 10)) as response,
    ):
        assert response.status == 200, await response.text()
    assert fleet.workers["worker-0"].calls[-1]["prompt"] == prompt


async def test_a_failing_worker_is_retried_once_on_another_before_anything_is_streamed(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    fleet.workers["worker-0"].mode = "fail"
    async with client(fleet) as api:
        stream = await api.completions.create(model="sql-gen", prompt="x", stream=True)
        texts = [chunk.choices[0].text async for chunk in stream]
    assert texts == ["Hello from worker-1", " and goodbye"]
    assert len(fleet.workers["worker-0"].calls) == 1
    assert fleet.workers["worker-1"].ensured == ["sql-gen"]  # not held there: loaded first
    assert not fleet.state.table.workers["worker-0"].healthy  # out of rotation until a good poll
    assert 'loraplex_router_retries_total{reason="status"} 1.0' in await fleet.metrics_text()


async def test_when_both_workers_fail_the_client_gets_502(fleet: Any) -> None:
    for worker in fleet.workers.values():
        worker.mode = "fail"
    status, answer = await post(fleet, "/v1/completions", {"model": "sql-gen", "prompt": "x"})
    assert status == 502
    assert "failed on two workers" in answer["error"]["message"]
    assert sum(len(w.calls) for w in fleet.workers.values()) == 2


async def test_when_no_other_worker_is_left_to_retry_on_the_client_gets_503(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    fleet.workers["worker-0"].mode = "fail"
    fleet.state.report_unreachable("worker-1", 0.0)
    status, answer = await post(fleet, "/v1/completions", {"model": "sql-gen", "prompt": "x"})
    assert status == 503
    assert "no other worker is available" in answer["error"]["message"]
    assert "engine died" in answer["error"]["message"]


async def test_a_worker_that_hangs_is_given_up_after_the_read_timeout_and_retried(fleet: Any) -> None:
    fleet.proxy.settings = dataclasses.replace(fleet.proxy.settings, read_timeout_seconds=0.5)
    fleet.hold("worker-0", "sql-gen")
    fleet.workers["worker-0"].mode = "hang"
    async with client(fleet) as api:
        completion = await asyncio.wait_for(api.completions.create(model="sql-gen", prompt="x"), DEADLINE)
    assert completion.choices[0].text == "served by worker-1"
    assert not fleet.state.table.workers["worker-0"].healthy
    assert 'loraplex_router_retries_total{reason="timeout"} 1.0' in await fleet.metrics_text()
    fleet.workers["worker-0"].release.set()


async def test_a_stale_residency_404_is_retried_and_leaves_the_worker_in_rotation(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")  # reported in GPU, but its vLLM no longer has it
    fleet.workers["worker-0"].mode = "not_loaded"
    async with client(fleet) as api:
        completion = await api.completions.create(model="sql-gen", prompt="x")
    assert completion.choices[0].text == "served by worker-1"
    assert fleet.state.table.workers["worker-0"].healthy
    assert "worker-0" not in fleet.state.table.holders("sql-gen")
    assert 'loraplex_router_retries_total{reason="not_loaded"} 1.0' in await fleet.metrics_text()


async def test_a_named_adapter_its_chosen_agent_does_not_know_is_retried_on_another_placement(
    fleet: Any,
) -> None:
    fleet.hold("worker-0", "sql-gen", "Disk")  # both placements name it; worker-0's is stale
    fleet.hold("worker-1", "sql-gen", "Disk")
    fleet.workers["worker-0"].known.discard("sql-gen")
    async with client(fleet) as api:
        completion = await api.completions.create(model="sql-gen", prompt="x")
    assert completion.choices[0].text == "served by worker-1"
    assert fleet.workers["worker-0"].ensured == ["sql-gen"]
    assert fleet.state.table.workers["worker-0"].healthy
    assert 'loraplex_router_retries_total{reason="not_placed"} 1.0' in await fleet.metrics_text()


async def test_an_agent_whose_vllm_restarts_sends_the_request_to_another_worker(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen", "Disk")
    fleet.hold("worker-1", "sql-gen", "Disk")
    fleet.workers["worker-0"].agent_mode = "not_ready"
    async with client(fleet) as api:
        completion = await api.completions.create(model="sql-gen", prompt="x")
    assert completion.choices[0].text == "served by worker-1"
    assert not fleet.state.table.workers["worker-0"].healthy  # out until its vLLM answers a poll
    assert 'loraplex_router_retries_total{reason="not_ready"} 1.0' in await fleet.metrics_text()


async def test_with_no_healthy_worker_the_client_gets_503(fleet: Any) -> None:
    for name in fleet.workers:
        fleet.state.report_unreachable(name, 0.0)
    status, answer = await post(fleet, "/v1/completions", {"model": "sql-gen", "prompt": "x"})
    assert status == 503
    assert answer["error"]["type"] == "service_unavailable"


async def test_a_stream_that_breaks_mid_way_ends_with_a_502_error_event_and_no_retry(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    fleet.workers["worker-0"].mode = "break"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fleet.url}/v1/completions", json={"model": "sql-gen", "prompt": "x", "stream": True}
        ) as response,
    ):
        assert response.status == 200
        text = (await response.read()).decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["text"] == "Hello from worker-0"
    assert events[-1]["error"]["code"] == 502
    assert "incomplete" in events[-1]["error"]["message"]
    assert fleet.workers["worker-1"].calls == []


async def test_a_client_that_disconnects_cancels_the_upstream_request(fleet: Any) -> None:
    fleet.hold("worker-1", "sql-gen")
    worker = fleet.workers["worker-1"]
    worker.gated = True
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{fleet.url}/v1/chat/completions",
            json={"model": "sql-gen", "messages": [], "stream": True},
        )
        await asyncio.wait_for(response.content.readline(), DEADLINE)
        response.close()  # the client goes away mid-stream
    await asyncio.wait_for(worker.cancelled.wait(), DEADLINE)


async def test_the_base_model_is_served_by_any_worker(fleet: Any) -> None:
    async with client(fleet) as api:
        completion = await api.completions.create(model="tiny-llama", prompt="x", max_tokens=3)
    assert completion.choices[0].text.startswith("served by worker-")
    assert all(not w.ensured for w in fleet.workers.values())
    assert 'loraplex_router_requests_total{tier="base"} 1.0' in await fleet.metrics_text()


async def test_models_lists_the_base_and_the_adapters_served(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    fleet.hold("worker-1", "tail-1", "CPU", catalog=True)
    async with client(fleet) as api:
        models = await api.models.list()
    listed = {m.id: m for m in models.data}
    assert set(listed) == {"tiny-llama", "sql-gen", "tail-1"}


async def test_metrics_count_tiers_and_keep_catalog_adapters_in_one_series(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")  # named (not from the catalog)
    async with client(fleet) as api:
        await api.completions.create(model="sql-gen", prompt="x")
        await api.completions.create(model="tail-1", prompt="x")
    text = await fleet.metrics_text()
    assert 'loraplex_router_requests_total{tier="gpu"} 1.0' in text
    assert 'loraplex_router_requests_total{tier="miss"} 1.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="sql-gen"} 1.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="_catalog"} 1.0' in text
    assert 'adapter="tail-1"' not in text
    assert "loraplex_router_upstream_time_to_first_token_seconds_count 0.0" in text  # streams only
    assert "loraplex_router_upstream_latency_seconds_count 2.0" in text
    for family in (
        "loraplex_router_decision_seconds_bucket",
        "loraplex_router_upstream_time_to_first_token_seconds_bucket",
        "loraplex_router_upstream_latency_seconds_bucket",
        'loraplex_router_inflight_requests{worker="worker-0"}',
        'loraplex_router_responses_total{status="200"} 2.0',
        "loraplex_build_info",
    ):
        assert family in text


async def test_a_named_adapter_spills_past_its_busy_placement_and_past_the_bound_only_when_it_cannot(
    fleet: Any,
) -> None:
    revision = "b" * 64
    fleet.state.report_residency("worker-0", [], named=["sql-gen"], revisions={"sql-gen": revision})
    spill = fleet.workers["worker-1"]
    spill.known = set()  # worker-1's agent cannot find it (say, no LoRAAdapter it may read)
    async with client(fleet) as api:
        await api.completions.create(model="sql-gen", prompt="x")
        fleet.state.report_load("worker-0", 9, time.monotonic())  # far past the bound; worker-1 idle
        await api.completions.create(model="sql-gen", prompt="x")  # tried on worker-1, back to worker-0
        assert spill.ensured_named == [("sql-gen", revision)]
        assert [len(w.calls) for w in fleet.workers.values()] == [2, 0]
        text = await fleet.metrics_text()
        assert 'loraplex_router_over_bound_requests_total{adapter="sql-gen"} 1.0' in text
        assert 'loraplex_router_retries_total{reason="not_placed"} 1.0' in text
        spill.known = {"sql-gen"}  # now its agent reads the LoRAAdapter and loads it
        await api.completions.create(model="sql-gen", prompt="x")
        # Its copy there (GPU now, at the revision the agent answered) serves the next one directly.
        await api.completions.create(model="sql-gen", prompt="x")
        assert spill.ensured_named == [("sql-gen", revision)] * 2
        # The adapter is retrained: the next request has the agent check its copy (and reload it) first.
        retrained = "c" * 64
        fleet.state.report_residency("worker-0", [], named=["sql-gen"], revisions={"sql-gen": retrained})
        await api.completions.create(model="sql-gen", prompt="x")
        await api.completions.create(model="sql-gen", prompt="x")
    assert spill.ensured_named == [("sql-gen", revision)] * 2 + [("sql-gen", retrained)]
    assert [len(w.calls) for w in fleet.workers.values()] == [2, 4]
    assert 'loraplex_router_over_bound_requests_total{adapter="sql-gen"} 1.0' in await fleet.metrics_text()
    fleet.state.report_residency("worker-0", [], named=[])  # the LoRAAdapter is deleted
    assert 'loraplex_router_over_bound_requests_total{adapter="sql-gen"}' not in await fleet.metrics_text()


async def test_a_named_adapter_placed_nowhere_is_loaded_on_first_use_as_named(fleet: Any) -> None:
    fleet.state.table.set_adapter_object("chat-bot", "c" * 64)  # a LoRAAdapter with replicas 0
    async with client(fleet) as api:
        await api.completions.create(model="chat-bot", prompt="x")
        listed = {m.id for m in (await api.models.list()).data}
    assert "chat-bot" in listed
    ensured = [call for w in fleet.workers.values() for call in w.ensured_named]
    assert ensured == [("chat-bot", "c" * 64)]  # its agent reads the LoRAAdapter: no catalog involved
    assert 'loraplex_router_adapter_requests_total{adapter="chat-bot"} 1.0' in await fleet.metrics_text()


async def test_a_spill_whose_agent_cannot_look_the_adapter_up_is_served_by_its_placement(fleet: Any) -> None:
    fleet.state.report_residency("worker-0", [], named=["sql-gen"])
    fleet.state.report_load("worker-0", 9, time.monotonic())
    fleet.workers["worker-1"].agent_mode = "lookup_failed"
    async with client(fleet) as api:
        await api.completions.create(model="sql-gen", prompt="x")
    assert [len(w.calls) for w in fleet.workers.values()] == [1, 0]
    text = await fleet.metrics_text()
    assert 'loraplex_router_retries_total{reason="not_placed"} 1.0' in text
    assert 'loraplex_router_adapter_loads_total{result="lookup_failed"} 1.0' in text


async def test_series_of_an_adapter_no_longer_named_and_of_a_gone_worker_are_dropped(fleet: Any) -> None:
    fleet.hold("worker-0", "sql-gen")
    async with client(fleet) as api:
        await api.completions.create(model="sql-gen", prompt="x")
    text = await fleet.metrics_text()
    assert 'loraplex_router_adapter_requests_total{adapter="sql-gen"} 1.0' in text
    assert 'loraplex_router_inflight_requests{worker="worker-0"}' in text
    # The LoRAAdapter is deleted (no placement names it) and worker-0 goes away.
    fleet.state.report_residency("worker-0", [], named=[])
    fleet.state.remove_worker("worker-0")
    text = await fleet.metrics_text()
    assert 'adapter="sql-gen"' not in text
    assert 'worker="worker-0"' not in text
    assert 'loraplex_router_responses_total{status="200"} 1.0' in text  # fleet-wide series stay


async def test_healthz_is_ready_once_the_state_has_synced(fleet: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fleet.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["healthy"] == 2
        fleet.state.synced = False
        async with session.get(f"{fleet.url}/healthz") as response:
            assert response.status == 503


async def test_a_request_sent_where_every_gpu_slot_is_busy_with_other_adapters_is_counted(fleet: Any) -> None:
    """What tells an operator the fleet is short of GPU slots (engine.maxLoras), not of workers."""
    worker = fleet.workers["worker-0"]
    fleet.state.report_residency("worker-0", [Resident("sql-gen", "GPU")], gpu_slots=1)
    fleet.state.table.set_healthy("worker-1", False)  # worker-0 serves everything
    worker.gated = True
    async with client(fleet) as api:
        held = await api.completions.create(model="sql-gen", prompt="x", stream=True)
        chunks = aiter(held)
        await asyncio.wait_for(anext(chunks), DEADLINE)  # sql-gen runs there: its one slot is taken
        await api.completions.create(model="sql-gen", prompt="x")  # its own slot: no wait
        await api.completions.create(model="chat-bot", prompt="x")  # would wait for sql-gen's slot
        worker.release.set()
        [chunk async for chunk in chunks]
        # Now nothing is in flight: a request for a third adapter takes the free slot.
        await api.completions.create(model="tail-1", prompt="x")
    assert "loraplex_router_gpu_slot_waits_total 1.0" in await fleet.metrics_text()  # chat-bot only

"""Fixtures for the router's proxy tests: in-process fake workers (a vLLM and an agent each) and a router.

The fakes speak just enough of vLLM's OpenAI API (completions and chat, plain
and streamed as server-sent events, /metrics) and of the agent's API (ensure,
residency) to test the router's client code; tests with the real vLLM CPU
engine live in tests/engine/.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from loraplex.router.decision import Router
from loraplex.router.metrics import RouterMetrics
from loraplex.router.proxy import Proxy, make_app
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.settings import RouterSettings
from loraplex.router.state import FleetState, Resident
from loraplex.router.table import Tier, WorkerTable

API_KEY = "test-vllm-key"
BASE = "tiny-llama"


def _chunk(request_path: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    if request_path.endswith("/chat/completions"):
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    return {"id": "c1", "object": kind, "created": 0, "model": model, "choices": [choice]}


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


@dataclass
class FakeWorker:
    """A worker's vLLM and agent, with knobs for the failure a test needs."""

    name: str
    mode: str = "ok"  # ok | fail | break (stream breaks after the first chunk) | hang | not_loaded
    agent_mode: str = "ok"  # ok | not_ready (its vLLM restarts: 503 EngineNotReady) | lookup_failed
    gated: bool = False  # hold the stream after the first chunk until `release` is set
    metrics_seconds: float = 0.0  # how long GET /metrics takes (a busy vLLM renders it slowly)
    ensure_gate: asyncio.Event | None = None  # the agent answers ensure calls once this is set
    known: set[str] = field(default_factory=lambda: {"sql-gen", "chat-bot", "tail-1"})
    engine_names: dict[str, str] = field(default_factory=dict)  # adapter -> the name ensure answers
    calls: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    request_ids: list[str | None] = field(default_factory=list)  # the X-Request-Id each call came with
    ensured: list[str] = field(default_factory=list)
    ensured_named: list[tuple[str, str | None]] = field(default_factory=list)  # named: (name, sha256)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    vllm: TestServer | None = None
    agent: TestServer | None = None

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        self.auth.append(request.headers.get("Authorization"))
        self.request_ids.append(request.headers.get("X-Request-Id"))
        if self.mode == "fail":
            error = {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}
            return web.json_response({"error": error}, status=500)
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "not_loaded":  # vLLM does not have the adapter (the residency seen was stale)
            error = {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError"}
            return web.json_response({"error": {**error, "param": None, "code": 404}}, status=404)
        model = body["model"]
        if not body.get("stream"):
            text = f"served by {self.name}"
            if request.path.endswith("/chat/completions"):
                message = {"role": "assistant", "content": text}
                choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                obj = "text_completion"
            usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            return web.json_response(
                {"id": "x", "object": obj, "created": 0, "model": model, "choices": [choice], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(_sse(_chunk(request.path, model, f"Hello from {self.name}", None)))
            self.first_sent.set()
            if self.mode == "break":
                assert request.transport is not None
                request.transport.close()
                return response
            if self.gated:
                await self.release.wait()
            await response.write(_sse(_chunk(request.path, model, " and goodbye", "stop")))
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return response

    async def metrics(self, _: web.Request) -> web.Response:
        await asyncio.sleep(self.metrics_seconds)
        running = 'vllm:num_requests_running{model_name="x"} 1.0\n'
        return web.Response(text=running + "vllm:num_requests_waiting 2.0\n")

    async def ensure(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["name"]
        self.ensured.append(name)
        if body.get("named") is True:
            self.ensured_named.append((name, body.get("sha256")))
        if self.ensure_gate is not None:
            await self.ensure_gate.wait()
        if self.agent_mode == "not_ready":
            error = {"message": "vLLM is not ready", "type": "EngineNotReady", "param": None}
            return web.json_response({"error": {**error, "code": "EngineNotReady"}}, status=503)
        if self.agent_mode == "lookup_failed":  # the API server could not be asked for the LoRAAdapter
            error = {
                "message": "reading LoRAAdapter answered 500",
                "type": "AdapterLookupFailed",
                "param": None,
            }
            return web.json_response({"error": {**error, "code": "AdapterLookupFailed"}}, status=503)
        if name not in self.known:
            error = {"message": f"no adapter {name}", "type": "NotFound", "param": None, "code": "NotFound"}
            return web.json_response({"error": error}, status=404)
        revision = body.get("sha256") or "0" * 64  # as a real agent: the revision it registered
        answer = {"name": name, "tier": "GPU", "loadSeconds": 0.01, "sha256": revision}
        if name in self.engine_names:  # a revision swapped in beside another, under a name of its own
            answer["engineName"] = self.engine_names[name]
        return web.json_response(answer)

    async def residency(self, _: web.Request) -> web.Response:
        adapters = [{"name": "sql-gen", "tier": "GPU"}, {"name": "tail-1", "tier": "CPU", "catalog": True}]
        report = {"worker": self.name, "adapters": adapters, "failures": [], "gpuSlots": 4, "cpuSlots": 12}
        return web.json_response(report)

    async def start(self) -> None:
        vllm = web.Application(client_max_size=16 << 20)
        vllm.router.add_post("/v1/completions", self.completion)
        vllm.router.add_post("/v1/chat/completions", self.completion)
        vllm.router.add_post("/v1/responses", self.completion)  # recorded like a completion
        vllm.router.add_get("/metrics", self.metrics)
        agent = web.Application()
        agent.router.add_post("/v1/adapters/ensure", self.ensure)
        agent.router.add_get("/v1/residency", self.residency)
        self.vllm, self.agent = TestServer(vllm), TestServer(agent)
        await self.vllm.start_server()
        await self.agent.start_server()

    @property
    def vllm_url(self) -> str:
        assert self.vllm is not None
        return str(self.vllm.make_url("")).rstrip("/")

    @property
    def agent_url(self) -> str:
        assert self.agent is not None
        return str(self.agent.make_url("")).rstrip("/")


@dataclass
class Fleet:
    """Two fake workers behind a real router (its app on a test server)."""

    workers: dict[str, FakeWorker]
    state: FleetState
    proxy: Proxy
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def hold(self, worker: str, adapter: str, tier: Tier = "GPU", catalog: bool = False) -> None:
        """The worker's agent reports `adapter` in `tier` (besides what it held)."""
        held = [Resident(a, t) for a, t in self.state.table.workers[worker].holds.items()]
        self.state.report_residency(worker, [*held, Resident(adapter, tier, catalog)])

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as response:
            return await response.text()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    workers = {name: FakeWorker(name) for name in ("worker-0", "worker-1")}
    for worker in workers.values():
        await worker.start()
    table = WorkerTable(Rendezvous(seed=0))
    state = FleetState(table, stale_after=3600)
    now = time.monotonic()
    for worker in workers.values():
        state.upsert_worker(worker.name, worker.vllm_url, worker.agent_url, True, now)
        state.report_load(worker.name, 0, now)
    state.synced = True
    settings = RouterSettings(base_model=BASE, api_key=API_KEY, max_body_bytes=4096)
    async with aiohttp.ClientSession() as session:
        proxy = Proxy(settings, state, Router(table, settings.routing), RouterMetrics(BASE), session)
        server = TestServer(make_app(proxy))
        await server.start_server()
        try:
            yield Fleet(workers, state, proxy, server)
        finally:
            await server.close()
            for worker in workers.values():
                assert worker.vllm is not None
                assert worker.agent is not None
                await worker.vllm.close()
                await worker.agent.close()


@pytest.fixture(scope="session")
def routing_bench() -> ModuleType:
    """bench/routing.py as a module (the bench is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "routing.py"
    spec = importlib.util.spec_from_file_location("bench_routing", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module

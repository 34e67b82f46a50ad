"""The agent's HTTP endpoint: residency report, on-demand loads, health and metrics.

The contract (paths, refusal kinds and codes, the report's shape) is loraplex.api.agent; this
module turns the agent's answers and its EnsureErrors into HTTP.

- `GET /v1/residency`: what the worker holds per tier, bytes, last load
  latency, failures (the shape of WorkerPlacement status; read by the router).
- `POST /v1/adapters/ensure` with `{"name": ...}`: make an adapter servable
  now (catalog adapters, named adapters held on disk; with `"named": true`,
  also a named adapter placed elsewhere, read from its LoRAAdapter, and with
  `"sha256"` such a copy is reloaded if it is another revision). 200 `{name,
  tier, loadSeconds, sha256, engineName?}` (the revision registered, and the
  name vLLM serves it under where that is not `name`); errors in OpenAI's
  shape: 404 unknown adapter, 422 refused files (`code` is the reason, e.g.
  DigestMismatch), 503 with `Retry-After` while a failed load backs off or
  vLLM is not ready.
- `GET /healthz`, `GET /metrics`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from loraplex.api.agent import (
    ENSURE_PATH,
    RESIDENCY_PATH,
    EnsureCode,
    EnsureRequest,
    EnsureResult,
    EnsureStatus,
)
from loraplex.api.wire import to_wire
from loraplex.worker.agent.agent import Agent, EnsureError

AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent", Agent)
MAX_BODY = 64 * 1024


def error_response(
    status: EnsureStatus, code: str, message: str, retry_after: float | None = None
) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return web.json_response(body, status=int(status), headers=headers)


async def residency(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT_KEY].report())


async def ensure(request: web.Request) -> web.Response:
    try:
        body: Any = json.loads(await request.read())
    except ValueError:
        return error_response(
            EnsureStatus.INVALID, EnsureCode.INVALID_REQUEST, f"the body must be JSON: {ENSURE_BODY}"
        )
    try:
        wanted = EnsureRequest.model_validate(body)
    except ValidationError as invalid:
        return error_response(
            EnsureStatus.INVALID,
            EnsureCode.INVALID_REQUEST,
            f"{_first_problem(invalid)} (the body: {ENSURE_BODY})",
        )
    try:
        ensured = await request.app[AGENT_KEY].ensure(wanted.name, named=wanted.named, sha256=wanted.sha256)
    except EnsureError as error:
        return error_response(error.status, error.reason, error.message, error.retry_after)
    result = EnsureResult(
        name=ensured.name,
        tier=ensured.tier,
        load_seconds=round(ensured.load_seconds, 4),
        sha256=ensured.sha256,
        **({"engine_name": ensured.engine_name} if ensured.engine_name is not None else {}),
    )
    return web.json_response(to_wire(result))


ENSURE_BODY = '{"name": "<adapter>", "named": <bool>, "sha256": "<revision>"}'


def _first_problem(invalid: ValidationError) -> str:
    """The first field a request got wrong, as a client reads it: "missing field 'name'"."""
    error = invalid.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"missing field '{where}'" if error["type"] == "missing" else f"field '{where}': {error['msg']}"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "engineReady": request.app[AGENT_KEY].engine_ready})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[AGENT_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(agent: Agent) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[AGENT_KEY] = agent
    app.router.add_get(RESIDENCY_PATH, residency)
    app.router.add_post(ENSURE_PATH, ensure)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app

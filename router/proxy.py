"""The router's HTTP front: an OpenAI-compatible proxy that routes each request by its adapter.

`POST /v1/completions` and `/v1/chat/completions`: the body's `model` names an
adapter (or the base model). The decision (loraplex.router.decision) picks a
worker; when that worker does not hold the adapter in memory its agent is asked
to load it (loraplex.router.agent_client) first; then the body goes to the
worker's vLLM, with the worker's API key, unchanged but for its `model` where
that worker's vLLM serves the copy under an engine name of its own (a revision
swapped in beside another; the answer then carries the client's name again:
loraplex.router.model_rewrite). Streaming responses are passed through chunk
by chunk as they arrive.

Failures: a worker that cannot be reached, answers 5xx, sends nothing for
`read_timeout_seconds`, or breaks before the first byte of its answer reached
the client, is taken out of rotation and the request is retried once on another
worker; when that fails too the client gets 502 (503 when no other worker is
left). A worker whose agent restarts its vLLM (`EngineNotReady`), or that does
not have a named adapter after all (the residency seen was stale), is retried
the same way. Once bytes have reached the client the
status is sent, so a stream that breaks ends with an error event (code 502).
A client that disconnects cancels the handler and with it the upstream
request. Errors are in OpenAI's shape; unknown adapters get 404, bad bodies
400, bodies over the limit 413. Callers are authenticated first (loraplex.router.auth:
401 without a good key or token); an adapter (or the base model) the caller may not
use (loraplex.router.access) gets the same 404 as one that does not exist. Then
quotas (loraplex.router.quota): a request over its principal's or its adapter's
budget gets 429 with Retry-After; tokens are charged from the answer's usage
(loraplex.router.usage), which a stream is asked to include.

`GET /v1/models` (the base model and the adapters served that the caller may use), `/healthz`
(200 once the state source has synced), `/metrics`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraplex.router import auth, openai_front
from loraplex.router.access import may_use
from loraplex.router.agent_client import AgentClient, CopyKey
from loraplex.router.auth import Authenticator
from loraplex.router.decision import Decision, Router
from loraplex.router.errors import Refused, Retryable, describe, error_response, sse_error, unknown_model
from loraplex.router.metrics import BASE, CATALOG, RouterMetrics
from loraplex.router.model_rewrite import ModelRewrite
from loraplex.router.openai_front import REQUEST_ID_HEADER, request_id_of
from loraplex.router.principal import Principal
from loraplex.router.quota import QuotaLimiter, rate_headers, rate_limited
from loraplex.router.settings import RouterSettings
from loraplex.router.state import FleetState
from loraplex.router.usage import UsageTap, ask_for_usage, usage_of

log = logging.getLogger(__name__)

_ONE_WRITE_BYTES = 1 << 20
ADAPTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass
class Proxy:
    """Everything a request handler needs."""

    settings: RouterSettings
    state: FleetState
    router: Router
    metrics: RouterMetrics
    session: aiohttp.ClientSession
    clock: Callable[[], float] = time.monotonic
    authenticator: Authenticator = field(default_factory=Authenticator)  # default: everyone anonymous
    agents: AgentClient = field(init=False)
    quota: QuotaLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.agents = AgentClient(self.settings, self.state, self.metrics, self.session)
        self.quota = QuotaLimiter(self.settings.quotas, self.settings.replicas)

    @property
    def ensuring(self) -> Mapping[CopyKey, object]:
        """Ensure calls under way, by (worker, adapter, revision asked for)."""
        return self.agents.ensuring


PROXY_KEY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
# Per request: the reader of a stream's usage (quotas on), and the x-ratelimit-* headers of its answer.
USAGE_TAP: web.RequestKey[UsageTap] = web.RequestKey("loraplex.usage_tap", UsageTap)
RATE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("loraplex.rate_headers", dict)


# The calls routed by their body's `model` and forwarded to the chosen worker's vLLM as they are.
ROUTED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses")

# The calls whose streams end with a usage event when `stream_options.include_usage` asks for it.
USAGE_STREAM_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

# Retries whose cause is the adapter's whereabouts, not the worker: it stays in rotation.
_WORKER_IS_FINE = frozenset({"not_loaded", "not_placed"})


def make_app(proxy: Proxy) -> web.Application:
    # Bodies are read by hand up to the limit (to answer 413 in OpenAI's shape), so aiohttp's own
    # limit only needs to stay out of the way.
    app = web.Application(
        client_max_size=proxy.settings.max_body_bytes + 1,
        middlewares=[openai_front.middleware(), auth.middleware(proxy.authenticator)],
    )
    app[PROXY_KEY] = proxy
    for path in ROUTED_PATHS:
        app.router.add_post(path, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def completions(request: web.Request) -> web.StreamResponse:
    proxy = request.app[PROXY_KEY]
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    label: str | None = None
    try:
        response, label = await _completions(proxy, request)
        return response
    finally:
        status = response.status if response is not None else 499  # 499: the client went away
        proxy.metrics.responses.labels(str(status)).inc()
        if label is not None:
            proxy.metrics.adapter_request(label, time.perf_counter() - started)


async def _completions(proxy: Proxy, request: web.Request) -> tuple[web.StreamResponse, str | None]:
    limit = proxy.settings.max_body_bytes
    body = await _read_body(request, limit)
    if body is None:
        return (
            error_response(
                413, f"The request body is larger than the limit of {limit} bytes.", "body_too_large"
            ),
            None,
        )
    try:
        payload: Any = json.loads(body)
    except ValueError as error:
        return error_response(400, f"The request body is not valid JSON: {error}.", "invalid_json"), None
    if not isinstance(payload, dict):
        return error_response(400, "The request body must be a JSON object.", "invalid_json"), None
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return error_response(
            400, "The request needs a 'model' (an adapter or the base model).", None, "model"
        ), None
    base = proxy.settings.base_name
    adapter = None if model == base else model
    if adapter is not None and (len(adapter) > 253 or not ADAPTER_NAME.match(adapter)):
        return unknown_model(model), None
    if not _may_use(proxy, auth.principal_of(request), adapter):  # as if it did not exist
        return unknown_model(model), None
    label = BASE if adapter is None else adapter if proxy.state.table.is_named(adapter) else CATALOG
    stream = payload.get("stream") is True
    subject = auth.principal_of(request).subject
    refusal = proxy.quota.admit(subject, model)  # counts the request when it admits it
    request[RATE_HEADERS] = headers = rate_headers(proxy.quota.remaining(subject, model))
    if refusal is not None:
        proxy.metrics.quota_refusal(subject, label, refusal.limit.scope, refusal.limit.budget)
        return rate_limited(refusal, headers), label
    proxy.metrics.principal_request(subject)
    if proxy.quota.enabled and stream and request.path in USAGE_STREAM_PATHS:
        asked, drop = ask_for_usage(payload)
        body = asked or body
        request[USAGE_TAP] = UsageTap(drop)
    response: web.StreamResponse | None = None
    try:
        response = await _route(proxy, request, body, adapter, stream)
    except Refused as refused:
        response = refused.response
    finally:
        if proxy.quota.enabled:
            _charge(proxy, request, response, subject, model, label)
    if not response.prepared:
        response.headers.update(headers)
    return response, label


def _charge(
    proxy: Proxy,
    request: web.Request,
    response: web.StreamResponse | None,
    subject: str,
    model: str,
    label: str,
) -> None:
    """Charge the tokens a request used (as vLLM's answer says) to its quotas and count them."""
    tap = request.get(USAGE_TAP)
    tokens = tap.tokens if tap is not None else None
    if tap is None and isinstance(response, web.Response) and response.status == 200:
        tokens = usage_of(response.body) if isinstance(response.body, bytes) else None
    if tokens:
        proxy.quota.charge(subject, model, tokens)
        proxy.metrics.tokens_used(subject, label, tokens)


def _may_use(proxy: Proxy, principal: Principal, adapter: str | None) -> bool:
    """Authorization (loraplex.router.access) with what the state knows of the adapter."""
    if adapter is None:
        return may_use(proxy.settings.access, principal, None)
    state = proxy.state
    named = state.table.is_named(adapter)
    return may_use(proxy.settings.access, principal, adapter, named=named, rule=state.access_rule(adapter))


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than `limit` bytes (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):  # returns what has arrived so far
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(parts)


async def _route(
    proxy: Proxy, request: web.Request, body: bytes, adapter: str | None, stream: bool
) -> web.StreamResponse:
    tried: list[str] = []
    failure = ""
    for attempt in range(2):
        decision = _decide(proxy, adapter, tried, first=attempt == 0)
        if decision is None:
            if failure:
                return error_response(
                    503, f"The request failed ({failure}) and no other worker is available to retry it.", 503
                )
            return error_response(
                503, "No worker is available to serve this request; try again shortly.", 503
            )
        worker = decision.worker
        try:
            if adapter is not None:
                needed, revision = _ensure_needed(proxy, decision, adapter)
                if needed:
                    await proxy.agents.ensure(worker, adapter, revision)
            return await _forward(proxy, request, worker, body, adapter, stream)
        except Retryable as error:
            failure = str(error)
            tried.append(worker)
            if error.reason not in _WORKER_IS_FINE:
                proxy.state.report_failure(worker, proxy.clock())
            proxy.metrics.retries.labels(error.reason).inc()
            log.warning(
                "Request %s failed on worker %s (%s)%s",
                request_id_of(request), worker, failure, "; retrying" if not attempt else "",
            )  # fmt: skip
    return error_response(502, f"The request failed on two workers; the last: {failure}", 502)


def _decide(proxy: Proxy, adapter: str | None, tried: list[str], first: bool) -> Decision | None:
    start = time.perf_counter()
    if adapter is None:
        decision = proxy.router.decide_base(exclude=tried)
    else:
        decision = proxy.router.decide(adapter, proxy.clock(), exclude=tried, count=first, spill=first)
    proxy.metrics.decision_seconds.observe(time.perf_counter() - start)
    if decision is not None and first:
        proxy.metrics.requests.labels(decision.hit).inc()
    if decision is not None and decision.over_bound and adapter is not None:
        proxy.metrics.over_bound_request(adapter if proxy.state.table.is_named(adapter) else CATALOG)
    return decision


def _ensure_needed(proxy: Proxy, decision: Decision, adapter: str) -> tuple[bool, str | None]:
    """Whether the worker's agent must make the adapter servable first, and the revision to ask for
    (a named adapter's current digest; looked up once per request, only where an ensure may follow).

    Needed when it is not in vLLM there (disk or nowhere); or for a named adapter's copy that the
    router spilled onto a worker its placement does not name, and that its agent has not said is at
    the adapter's current revision: the agent then checks (an adapter retrained since is reloaded)
    before the request goes on. The operator keeps the copies it places at the current revision."""
    table = proxy.state.table
    named = table.is_named(adapter)
    if decision.hit in ("disk", "miss"):
        return True, proxy.state.revision(adapter) if named else None
    if not named or decision.worker in table.placed_on(adapter):
        return False, None
    revision = proxy.state.revision(adapter)
    return revision is not None and proxy.state.copy_revision(decision.worker, adapter) != revision, revision


async def _forward(
    proxy: Proxy, request: web.Request, worker: str, body: bytes, adapter: str | None, stream: bool
) -> web.StreamResponse:
    endpoints = proxy.state.endpoints.get(worker)
    if endpoints is None:
        raise Retryable("connect", f"worker {worker} is gone")
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id_of(request)}
    if proxy.settings.api_key:
        headers["Authorization"] = f"Bearer {proxy.settings.api_key}"
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=proxy.settings.connect_timeout_seconds,
        sock_read=proxy.settings.read_timeout_seconds,  # a worker that hangs without closing
    )
    rewrite = _rewrite_for(proxy, worker, adapter)
    if rewrite is not None:
        body = rewrite.request(body)
    table = proxy.state.table
    if adapter is not None and table.waits_for_slot(worker, adapter):
        proxy.metrics.slot_waits.inc()
    table.begin(worker, adapter)
    gauge = proxy.metrics.worker_inflight(worker)
    gauge.inc()
    sent = time.perf_counter()
    try:
        # aiohttp writes a large bytes body in one go (and warns); a file-like one goes in pieces.
        data = body if len(body) <= _ONE_WRITE_BYTES else io.BytesIO(body)
        async with proxy.session.post(
            f"{endpoints.vllm_url}{request.path}", data=data, headers=headers, timeout=timeout
        ) as upstream:
            if upstream.status >= 500:
                detail = (await upstream.text())[:200]
                raise Retryable("status", f"worker {worker} answered {upstream.status}: {detail}")
            proxy.state.report_answer(worker, proxy.clock())
            if upstream.status == 404:
                missing = await upstream.read()
                if adapter is not None and _model_missing(missing):
                    # Not loaded there after all (the residency we had was stale): forget it, retry.
                    table.set_tier(worker, adapter, None)
                    raise Retryable("not_loaded", f"worker {worker} does not have adapter {adapter} loaded")
                if _is_openai_error(missing):
                    if rewrite is not None:
                        missing = rewrite.answer(missing)
                    return web.Response(status=404, body=missing, content_type="application/json")
                # The engine has no such route (FastAPI's own 404): it does not serve this call.
                message = f"The engine of this model does not serve {request.path}."
                return error_response(404, message, "unsupported_endpoint")
            chunks = upstream.content.iter_any()
            try:
                first = await anext(chunks, b"")
            except (aiohttp.ClientError, TimeoutError) as error:
                raise Retryable("stream", f"worker {worker} broke off ({describe(error)})") from error
            if not stream or upstream.status != 200:
                whole = first + await _read_rest(chunks, worker)
                if rewrite is not None:
                    whole = rewrite.answer(whole)
                answer = web.Response(status=upstream.status, body=whole)
                answer.content_type = upstream.content_type
                return answer
            proxy.metrics.ttft_seconds.observe(time.perf_counter() - sent)
            return await _stream(proxy, request, upstream, first, chunks, worker, rewrite)
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = "timeout" if isinstance(error, TimeoutError) else "connect"
        raise Retryable(reason, f"worker {worker} could not be reached ({describe(error)})") from error
    finally:
        proxy.metrics.latency_seconds.observe(time.perf_counter() - sent)
        table.end(worker, adapter)
        gauge.dec()


def _rewrite_for(proxy: Proxy, worker: str, adapter: str | None) -> ModelRewrite | None:
    """How the request and its answer are rewritten for the worker's vLLM, where it serves the
    adapter's copy under an engine name of its own (None: the body goes as it is)."""
    if adapter is None:
        return None
    engine_name = proxy.state.engine_name(worker, adapter)
    return ModelRewrite(adapter, engine_name) if engine_name != adapter else None


def _error_of(answer: bytes) -> dict[str, Any] | None:
    """The `error` object of an answer in OpenAI's shape, else None."""
    try:
        error = json.loads(answer).get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, dict) else None


def _is_openai_error(answer: bytes) -> bool:
    return _error_of(answer) is not None


def _model_missing(answer: bytes) -> bool:
    """vLLM's 404 for a model (an adapter) it does not have, as against a path it does not serve."""
    error = _error_of(answer)
    return error is not None and error.get("type") == "NotFoundError"


async def _read_rest(chunks: AsyncIterator[bytes], worker: str) -> bytes:
    parts = []
    try:
        async for chunk in chunks:
            parts.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise Retryable("stream", f"worker {worker} broke off ({describe(error)})") from error
    return b"".join(parts)


async def _stream(
    proxy: Proxy,
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    first: bytes,
    chunks: AsyncIterator[bytes],
    worker: str,
    rewrite: ModelRewrite | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status)
    response.content_type = upstream.content_type
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers.update(request.get(RATE_HEADERS, {}))
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    tap = request.get(USAGE_TAP)
    await response.prepare(request)
    try:
        await _write(response, tap, first, rewrite)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, TimeoutError) as error:
                why = describe(error)
                log.warning(
                    "Stream of request %s from worker %s broke off mid-way (%s)",
                    request_id_of(request), worker, why,
                )  # fmt: skip
                proxy.state.report_failure(worker, proxy.clock())
                message = f"Worker {worker} broke off the stream ({why}); the response is incomplete."
                await response.write(sse_error(message, 502, 502))
                break
            await _write(response, tap, chunk, rewrite)
        if rewrite is not None:
            await _write(response, tap, rewrite.flush())
        if tap is not None and (rest := tap.flush()):
            await response.write(rest)
        await response.write_eof()
    except ConnectionResetError:  # the client went away: leaving closes the upstream request
        log.info("Client of request %s went away while streaming from %s", request_id_of(request), worker)
    return response


async def _write(
    response: web.StreamResponse, tap: UsageTap | None, chunk: bytes, rewrite: ModelRewrite | None = None
) -> None:
    """Pass a chunk of a stream on (through the model rewrite and the usage tap, when there are:
    whole events only)."""
    if rewrite is not None:
        chunk = rewrite.feed(chunk)
    data = chunk if tap is None else tap.feed(chunk)
    if data:
        await response.write(data)


def _model_cards(proxy: Proxy, principal: Principal) -> list[dict[str, Any]]:
    """The models a caller may use, as OpenAI's model objects: the base model, then the adapters."""
    base = proxy.settings.base_name
    cards = []
    if _may_use(proxy, principal, None):
        card = {"id": base, "object": "model", "created": 0, "owned_by": "loraplex", "root": base}
        cards.append({**card, "parent": None})
    cards += [
        {"id": name, "object": "model", "created": 0, "owned_by": "loraplex", "root": name, "parent": base}
        for name in proxy.state.adapters_served()
        if _may_use(proxy, principal, name)
    ]
    return cards


async def models(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    return web.json_response({"object": "list", "data": _model_cards(proxy, auth.principal_of(request))})


async def model(request: web.Request) -> web.Response:
    """`GET /v1/models/{model}`: one model the caller may use; 404 as for a model that does not exist."""
    proxy, wanted = request.app[PROXY_KEY], request.match_info["model"]
    for card in _model_cards(proxy, auth.principal_of(request)):
        if card["id"] == wanted:
            return web.json_response(card)
    return unknown_model(wanted)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[PROXY_KEY].state
    body = {"synced": state.synced, "workers": len(state.table.workers), "healthy": state.table.healthy_count}
    return web.json_response(body, status=200 if state.synced else 503)


async def metrics(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    table = proxy.state.table
    proxy.metrics.workers.labels("healthy").set(table.healthy_count)
    proxy.metrics.workers.labels("unhealthy").set(len(table.workers) - table.healthy_count)
    proxy.metrics.prune(table.is_named, table.workers.keys())
    return web.Response(
        body=generate_latest(proxy.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )

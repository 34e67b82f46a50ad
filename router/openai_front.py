"""What makes the router answer like OpenAI's API outside the routed calls: request ids and error shapes.

`x-request-id`: a client's id (or a fresh one when it sends none) goes with the
request to the worker's vLLM, which uses it as its own request id, comes back on
the answer, and names the request in the router's log lines. Errors aiohttp
raises itself (an unknown path, a method a path does not take) are answered in
OpenAI's error shape like every other error of the router.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from loraplex.router.errors import error_response

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("loraplex.request_id", str)
# A client's id is kept when it is printable and of a sane length; anything else is replaced.
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,200}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    """The request's id (set by `middleware`; a fresh one for a request that did not pass it)."""
    return request.get(REQUEST_ID) or uuid.uuid4().hex


def middleware() -> Middleware:
    """Request ids on every request and answer; aiohttp's own HTTP errors in OpenAI's shape."""

    @web.middleware
    async def openai_front(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        request[REQUEST_ID] = request_id
        try:
            response = await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = _as_openai_error(request, error)
        if not response.prepared:  # a stream's handler set the header before sending it
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return openai_front


def _as_openai_error(request: web.Request, error: web.HTTPException) -> web.Response:
    if error.status == 404:
        message, code = f"Unknown request URL: {request.method} {request.path}.", "unknown_url"
    elif error.status == 405:
        message, code = f"The path {request.path} does not take {request.method}.", "method_not_allowed"
    else:
        message, code = error.reason, None
    response = error_response(error.status, message, code)
    allow = error.headers.get("Allow")
    if allow:
        response.headers["Allow"] = allow
    return response

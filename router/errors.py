"""Error responses in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Clients written against OpenAI's API (the official SDKs included) read these
fields, so every error the router itself returns has them; errors from a
worker's vLLM already have this shape and pass through unchanged. `Retryable` and
`Refused` are how a request's steps (the agent's ensure, the forward to vLLM)
tell the proxy to try another worker or to answer as they say.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# status -> OpenAI's error type for it
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
}


def error_body(
    message: str, status: int, code: str | int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    code: str | int | None = None,
    param: str | None = None,
    retry_after: str | None = None,
) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.json_response(error_body(message, status, code, param), status=status, headers=headers)


def sse_error(message: str, status: int, code: str | int | None = None) -> bytes:
    """An error as one server-sent event, for a failure after a stream has begun."""
    return f"data: {json.dumps(error_body(message, status, code))}\n\n".encode()


def unauthenticated(credential_given: bool) -> web.Response:
    """401 as OpenAI answers a missing or wrong API key, with the challenge RFC 6750 asks for."""
    if credential_given:
        message = "Incorrect API key or token provided."
        challenge = 'Bearer realm="loraplex", error="invalid_token"'
    else:
        message = "You didn't provide an API key or token: send 'Authorization: Bearer <key or token>'."
        challenge = 'Bearer realm="loraplex"'
    response = error_response(401, message, "invalid_api_key")
    response.headers["WWW-Authenticate"] = challenge
    return response


def unknown_model(model: str) -> web.Response:
    return error_response(404, f"The model '{model}' does not exist.", "model_not_found", "model")


# Why a request is retried on another worker (a label of the router's retries metric).
RETRY_REASONS = ("connect", "timeout", "status", "stream", "not_loaded", "not_placed", "not_ready")


class Retryable(Exception):
    """The worker failed before anything reached the client: try another one."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in RETRY_REASONS:
            raise ValueError(f"unknown retry reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class Refused(Exception):
    """An answer to give the client as it is (the agent refused the adapter, ...)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__()
        self.response = response


def describe(error: BaseException) -> str:
    """An exception in a few words, for an error message: its text, else its type."""
    return str(error) or type(error).__name__

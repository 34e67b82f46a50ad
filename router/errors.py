"""Error responses in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Clients written against OpenAI's API (the official SDKs included) read these
fields, so every error the router itself returns has them; errors from a
worker's vLLM already have this shape and pass through unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# status -> OpenAI's error type for it
_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
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

"""Small HTTP helpers for the harness: a free port, JSON calls, health probes, Prometheus samples."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthz_ok(port: int) -> bool:
    """Whether something answers 200 on http://127.0.0.1:<port>/healthz."""
    return http_json(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200


def http_json(
    url: str, body: Any = None, api_key: str | None = None, timeout: float = 60.0
) -> tuple[int, Any]:
    """(status, parsed JSON) of a GET, or a POST when `body` is given; errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _parsed(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read())
    except OSError as error:
        return 0, str(error)


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def prometheus_samples(url: str, prefix: str) -> dict[str, float]:
    """Samples of a /metrics page whose names start with `prefix`, keyed by 'name{labels}'."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples

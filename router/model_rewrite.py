"""The engine name in, the client's name out: a request's `model` as the worker's vLLM knows the copy.

A worker swapping in a new revision of an adapter registers it in vLLM under a
name of its own (`<name>@<revision>`, loraplex.api.workerplacement), which its
agent reports. A request for such a copy goes to vLLM with that engine name as
its body's `model`, and the answer comes back with the name the client asked
for: the `model` of a JSON answer (and the engine name in an error's message),
and of each event of a server-sent-event stream, so clients never see engine
names. Copies served under the adapter's own name (nearly all) pass untouched.
"""

from __future__ import annotations

import json
import re
from typing import Any

_EVENT_END = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"[^\r\n]*(?:\r?\n|$)")


class ModelRewrite:
    """Rewrites one request's body and its answer between the client's name and the engine name."""

    def __init__(self, client_name: str, engine_name: str) -> None:
        self.client_name = client_name
        self.engine_name = engine_name
        self._engine_bytes = engine_name.encode()
        self._pending = b""

    def request(self, body: bytes) -> bytes:
        """The request body (a JSON object) with the engine name as its `model`."""
        payload = json.loads(body)
        payload["model"] = self.engine_name
        return _dump(payload)

    def answer(self, body: bytes) -> bytes:
        """A whole answer (JSON) with the client's name where vLLM put the engine name."""
        if self._engine_bytes not in body:
            return body
        try:
            decoded = json.loads(body)
        except ValueError:  # not JSON (an engine's plain-text error): the name as it appears
            return body.replace(self._engine_bytes, self.client_name.encode())
        return _dump(self._rewritten(decoded))

    def feed(self, chunk: bytes) -> bytes:
        """The complete events of a stream that have arrived so far, rewritten (an event split
        across chunks waits for its end)."""
        data = self._pending + chunk
        out = []
        start = 0
        for end in _EVENT_END.finditer(data):
            out.append(self._event(data[start : end.end()]))
            start = end.end()
        self._pending = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (an unterminated last event, rewritten)."""
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if self._engine_bytes not in event:
            return event
        return b"".join(self._line(line) for line in _LINE.findall(event))

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:") or self._engine_bytes not in line:
            return line
        body = line[5:].rstrip(b"\r\n")
        ending = line[5 + len(body) :]
        try:
            decoded = json.loads(body)
        except ValueError:
            return line
        return b"data: " + _dump(self._rewritten(decoded)) + ending

    def _rewritten(self, answer: Any) -> Any:
        if not isinstance(answer, dict):
            return answer
        if answer.get("model") == self.engine_name:
            answer["model"] = self.client_name
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            error["message"] = error["message"].replace(self.engine_name, self.client_name)
        return answer


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

"""Token usage read from vLLM's answers, for tokens-per-minute quotas.

A whole (non-streamed) answer carries `usage.total_tokens`. A stream carries it only when the body
asks (`stream_options.include_usage`): then the last event before `[DONE]` is a chunk with no
choices and the usage. When a tokens budget applies the router asks for it on the client's behalf
(`ask_for_usage`) and a `UsageTap` reads it on the way through, dropping that event again when the
client had not asked for it, so the client sees the stream it asked for.
"""

from __future__ import annotations

import json
import re
from typing import Any

_EVENT_END = re.compile(rb"\r?\n\r?\n")
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def total_tokens(answer: Any) -> int | None:
    """`usage.total_tokens` of a decoded answer or chunk, when it has one."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None


def usage_of(body: bytes) -> int | None:
    """The total tokens of a whole JSON answer."""
    try:
        return total_tokens(json.loads(body))
    except ValueError:
        return None


def ask_for_usage(payload: dict[str, Any]) -> tuple[bytes | None, bool]:
    """For a streamed request: the body to send instead (None: send it as it is) and whether the usage
    event is the router's to drop (the client did not ask for it)."""
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None, False
    asked = {
        **payload,
        "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
    }
    return json.dumps(asked).encode(), True


class UsageTap:
    """Passes a server-sent-event stream through event by event, noting the usage it carries."""

    def __init__(self, drop_usage_event: bool) -> None:
        self.drop_usage_event = drop_usage_event
        self.tokens: int | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in what has arrived so far (an event split across chunks waits for its end)."""
        data = self._pending + chunk
        out = []
        start = 0
        for end in _EVENT_END.finditer(data):
            event = data[start : end.end()]
            start = end.end()
            if not self._usage_event(event):
                out.append(event)
        self._pending = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (an unterminated last event goes out as it is)."""
        rest, self._pending = self._pending, b""
        return rest

    def _usage_event(self, event: bytes) -> bool:
        """Note the usage of an event; whether it is the usage-only event to drop."""
        if not _HAS_USAGE.search(event):
            return False
        text = event.strip()
        if not text.startswith(b"data:"):
            return False
        try:
            chunk = json.loads(text[5:])
        except ValueError:
            return False
        tokens = total_tokens(chunk)
        if tokens is None:
            return False
        self.tokens = tokens
        return self.drop_usage_event and isinstance(chunk, dict) and not chunk.get("choices")

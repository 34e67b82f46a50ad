"""Token usage read from vLLM's answers: whole bodies, and streams with the usage event asked for."""

from __future__ import annotations

import json
from typing import Any

from loraplex.router.usage import UsageTap, ask_for_usage, usage_of


def event(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


CHUNKS = [
    event({"id": "c", "choices": [{"index": 0, "text": "Hello"}], "usage": None}),
    event({"id": "c", "choices": [{"index": 0, "text": " world"}], "usage": None}),
    event(
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    ),
    event("[DONE]"),
]


def through(tap: UsageTap, pieces: list[bytes]) -> bytes:
    return b"".join(tap.feed(piece) for piece in pieces) + tap.flush()


def test_a_whole_answer_says_its_total_tokens() -> None:
    assert usage_of(json.dumps({"choices": [], "usage": {"total_tokens": 17}}).encode()) == 17
    assert usage_of(b"not json") is None
    assert usage_of(b'{"choices": []}') is None


def test_a_stream_is_asked_for_its_usage_unless_the_client_asked_already() -> None:
    body, drop = ask_for_usage(
        {"model": "sql", "stream": True, "stream_options": {"continuous_usage_stats": False}}
    )
    assert body is not None
    assert drop
    assert json.loads(body)["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert ask_for_usage({"model": "sql", "stream": True, "stream_options": {"include_usage": True}}) == (
        None,
        False,
    )


def test_the_usage_event_the_client_did_not_ask_for_is_read_and_dropped() -> None:
    tap = UsageTap(drop_usage_event=True)
    out = through(tap, CHUNKS)
    assert tap.tokens == 5
    assert out == CHUNKS[0] + CHUNKS[1] + CHUNKS[3]


def test_the_usage_event_the_client_asked_for_is_read_and_kept() -> None:
    tap = UsageTap(drop_usage_event=False)
    assert through(tap, CHUNKS) == b"".join(CHUNKS)
    assert tap.tokens == 5


def test_events_split_across_chunks_go_out_whole_and_in_order() -> None:
    stream = b"".join(CHUNKS)
    tap = UsageTap(drop_usage_event=True)
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    outputs = [tap.feed(piece) for piece in pieces]
    assert all(not out or out.endswith(b"\n\n") for out in outputs)  # never half an event
    assert b"".join(outputs) + tap.flush() == CHUNKS[0] + CHUNKS[1] + CHUNKS[3]
    assert tap.tokens == 5


def test_a_stream_without_usage_passes_through_unchanged() -> None:
    tap = UsageTap(drop_usage_event=True)
    stream = CHUNKS[0] + CHUNKS[1] + b"data: [DONE]"  # even an unterminated last event
    assert through(tap, [stream]) == stream
    assert tap.tokens is None

"""The model proxy's usage reader (pure: bytes in, tokens out), fed the way answers arrive:
split anywhere, with either line ending, or as one JSON body."""

from __future__ import annotations

import json

from servers import sse, sse_data

from sandbox_sessions._types import Tokens
from sandbox_sessions.agent._proxy_usage import MAX_EVENT, UsageReader

ANTHROPIC = "".join(str(frame) for frame in sse(
    ("message_start", {"type": "message_start", "message": {"usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 2}}}),
    ("ping", {"type": "ping"}),
    ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 40}}),
)).encode()


def read(body: bytes, content_type: str = "text/event-stream", step: int = 7) -> Tokens | None:
    reader = UsageReader(content_type)
    for start in range(0, len(body), step):
        reader.feed(body[start : start + step])
    return reader.finish()


def test_anthropic_sse_split_anywhere_and_with_crlf() -> None:
    expected = Tokens(input=10, output=40, cache_write=2)
    for step in (1, 7, 4096):
        assert read(ANTHROPIC, step=step) == expected
    assert read(ANTHROPIC.replace(b"\n", b"\r\n")) == expected


def test_openai_chat_usage_chunk_and_a_json_body() -> None:
    chunks = "".join(str(frame) for frame in sse_data(
        {"object": "chat.completion.chunk", "choices": [], "usage": None},
        {"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 8, "completion_tokens": 3,
            "completion_tokens_details": {"reasoning_tokens": 1}}}, "[DONE]")).encode()
    assert read(chunks) == Tokens(input=8, output=3, reasoning=1)
    body = json.dumps({"object": "response", "usage": {
        "input_tokens": 5, "output_tokens": 6, "input_tokens_details": {"cached_tokens": 2}}})
    assert read(body.encode(), "application/json; charset=utf-8") == Tokens(
        input=3, output=6, cache_read=2)


def test_no_usage_garbage_and_oversized_events_are_none() -> None:
    assert read(b"data: {not json}\n\ndata: [DONE]\n\n") is None
    assert read(b'{"type": "error"}', "application/json") is None
    huge = b'{"object": "response", "pad": "' + b"x" * MAX_EVENT + b'", "usage": {}}'
    assert read(huge, "application/json", step=65536) is None
    # An event too long to keep is skipped whole; the events after it are read.
    assert read(b"data: " + b"x" * (MAX_EVENT + 10) + b"\n\n" + ANTHROPIC, step=65536) == Tokens(
        input=10, output=40, cache_write=2)

"""The pure readers under the HTTP providers: bytes to lines, lines to Server-Sent Events."""

from __future__ import annotations

import json

import pytest
from servers import Canned, CannedServer, sse_data

from sandbox_sessions.providers import Finish, OpenAIProvider, TextDelta
from sandbox_sessions.providers._http import LineDecoder, SSEDecoder, SSEEvent
from sandbox_sessions.providers.base import ModelMessage, ModelRequest, TextContent


def lines_of(*chunks: bytes) -> list[str]:
    decoder = LineDecoder()
    lines = [line for chunk in chunks for line in decoder.feed(chunk)]
    return lines + decoder.flush()


def events_of(*lines: str) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for line in lines if (event := decoder.feed(line)) is not None]
    last = decoder.flush()
    return [*events, last] if last is not None else events


def test_lines_end_on_lf_crlf_and_cr() -> None:
    assert lines_of(b"a\nb\r\nc\rd") == ["a", "b", "c", "d"]


def test_a_crlf_split_across_chunks_is_one_line_break() -> None:
    assert lines_of(b"a\r", b"\nb\r", b"", b"\n\n") == ["a", "b", ""]


def test_a_character_split_across_chunks_is_decoded_whole() -> None:
    encoded = "é ü 🙂\n".encode()

    assert lines_of(encoded[:1], encoded[1:8], encoded[8:]) == ["é ü 🙂"]


def test_unicode_line_separators_inside_json_do_not_end_a_line() -> None:
    # httpx's own `aiter_lines` splits on these too, which would cut the JSON in two.
    line = json.dumps({"text": "a\u2028b\u2029c\x85d\x0ce"}, ensure_ascii=False)

    assert lines_of(f"data: {line}\n".encode()) == [f"data: {line}"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert lines_of(b"ok \xff\n") == ["ok \ufffd"]


def test_events_follow_the_sse_rules() -> None:
    events = events_of(
        ": a comment",
        "event: message_start",
        'data: {"a":',
        "data:1}",
        "id: 7",
        "retry: 1000",
        "",
        "",
        "data",
        "",
        "data: tail",
    )

    assert events == [
        SSEEvent("message_start", '{"a":\n1}'),
        SSEEvent("message", ""),
        SSEEvent("message", "tail"),
    ]


def test_an_event_name_without_data_is_not_dispatched() -> None:
    assert events_of("event: ping", "", "data: x", "") == [SSEEvent("message", "x")]


@pytest.mark.anyio
async def test_a_line_separator_in_streamed_text_survives(http_server: CannedServer) -> None:
    text = "line one\u2028line two"
    payload = json.dumps(
        {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]},
        ensure_ascii=False,
    )
    http_server.enqueue(Canned(chunks=sse_data(payload, "[DONE]")))
    provider = OpenAIProvider(api_key=None, base_url=http_server.url)
    request = ModelRequest(
        model="m", system=None, messages=(ModelMessage("user", (TextContent("hi"),)),)
    )

    events = [event async for event in provider.stream(request)]

    assert events == [TextDelta(text), Finish("stop")]
    assert http_server.requests[0].headers["accept-encoding"] == "identity"

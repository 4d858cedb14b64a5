"""The Anthropic provider against a real loopback server speaking the Messages API.

The streams follow the event order of Anthropic's streaming documentation and of captured
streams: `message_start`, per content block `content_block_start` / `content_block_delta` /
`content_block_stop` (with `ping`s in between), `message_delta`, `message_stop`; and the
`error` event, which can come at any point.
"""

from __future__ import annotations

from typing import Any

import httpx
import provider_support as support
import pytest
from provider_support import collect, drain, fail, user
from servers import (
    HTTPX_UNDER_TRIO,
    Canned,
    CannedServer,
    anyio_backend,  # noqa: F401  (the fixture: asyncio and trio)
    sse,
)

from sandbox_sessions.providers import (
    AnthropicProvider,
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    ProviderError,
    ReasoningDelta,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
)

pytestmark = [
    pytest.mark.anyio,
    HTTPX_UNDER_TRIO,
]


MODEL = "claude-sonnet-4-5"
SIGNATURE = (
    "ErUBCkYIARgCIkACJWxzySUOJzOlZ8WFdgQSbeQA3H1i5rfkKLV9eC4HN6Jcnrlw1NcnPRIPaTs9jLF3rllsfoidjZ"
    "apJ+5MLwjVEgzTfQ6r9tDZvyBP0nEaDHWRqRWP7CoPOc+ksSIwSlxHzaMbnyXGoiNmCj9thC3N6EDMpemJPx3UZqDt"
)
SEARCH = ToolSpec(
    name="google_search",
    description="Search the web.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)


def message_start(input_tokens: int = 25, *, cache_write: int = 0, cache_read: int = 0) -> Any:
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
        "content": [], "model": MODEL, "stop_reason": None, "stop_sequence": None,
        "usage": usage,
    }
    return ("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> Any:
    return ("content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, body: dict[str, Any]) -> Any:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})


def block_stop(index: int) -> Any:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, output_tokens: int, **usage: int) -> Any:
    return ("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens, **usage},
    })


PING = ("ping", {"type": "ping"})
MESSAGE_STOP = ("message_stop", {"type": "message_stop"})


def text(index: int, value: str) -> Any:
    return delta(index, {"type": "text_delta", "text": value})


# The "Basic streaming request" of the documentation.
HELLO_STREAM = sse(
    message_start(25),
    block_start(0, {"type": "text", "text": ""}),
    PING,
    text(0, "Hello"),
    text(0, "!"),
    block_stop(0),
    message_delta("end_turn", 15),
    MESSAGE_STOP,
)

# A captured tool use stream (claude-3-7-sonnet), the empty first input_json_delta included.
TOOL_STREAM = sse(
    message_start(471),
    block_start(0, {"type": "text"}),
    PING,
    text(0, "I'll search for the"),
    text(0, " top Google hits for Foo Fighters."),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01VqG2jCdyjoB9HMTFnCKeo2",
                    "name": "google_search", "input": {}}),
    delta(1, {"type": "input_json_delta"}),
    delta(1, {"type": "input_json_delta", "partial_json": '{"query"'}),
    delta(1, {"type": "input_json_delta", "partial_json": ': "Foo F'}),
    delta(1, {"type": "input_json_delta", "partial_json": "ighter"}),
    delta(1, {"type": "input_json_delta", "partial_json": 's"}'}),
    block_stop(1),
    message_delta("tool_use", 80, input_tokens=0),
    MESSAGE_STOP,
)

# A captured extended thinking stream: thinking deltas, then the signature, then text.
THINKING_STREAM = sse(
    message_start(778),
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    PING,
    delta(0, {"type": "thinking_delta", "thinking": "The user has simply"}),
    delta(0, {"type": "thinking_delta", "thinking": ' said "hey".'}),
    delta(0, {"type": "signature_delta", "signature": SIGNATURE}),
    block_stop(0),
    block_start(1, {"type": "text", "text": ""}),
    text(1, "Hello! How can I help?"),
    block_stop(1),
    message_delta("end_turn", 104),
    MESSAGE_STOP,
)


def request(*messages: ModelMessage, **fields: Any) -> ModelRequest:
    return support.request(*messages, model=MODEL, **fields)


@pytest.fixture
def provider(http_server: CannedServer) -> AnthropicProvider:
    return AnthropicProvider(api_key="sk-ant-test", base_url=http_server.url)


# --- the request -----------------------------------------------------------------------------


async def test_the_request_is_a_streaming_messages_call(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=HELLO_STREAM))
    await collect(provider, request(user("Hello"), system="Be brief.", tools=(SEARCH,),
                                    max_tokens=1024))

    [sent] = http_server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": MODEL,
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "tools": [{
            "name": "google_search",
            "description": "Search the web.",
            "input_schema": SEARCH.parameters,
        }],
        "stream": True,
    }


async def test_the_history_maps_thinking_calls_and_results(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=HELLO_STREAM))
    history = (
        user("Search Foo Fighters"),
        ModelMessage(
            role="assistant",
            content=(
                TextContent("Searching."),
                ToolCall(id="toolu_1", name="google_search", input={"query": "Foo Fighters"}),
            ),
            reasoning="They want a search.",
            reasoning_signature=SIGNATURE,
        ),
        ModelMessage(
            role="user",
            content=(
                TextContent("Be quick."),
                ToolResultContent(call_id="toolu_1", output="quota exceeded", is_error=True),
            ),
        ),
    )
    await collect(provider, request(*history))

    assert http_server.requests[0].json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Search Foo Fighters"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "They want a search.", "signature": SIGNATURE},
            {"type": "text", "text": "Searching."},
            {"type": "tool_use", "id": "toolu_1", "name": "google_search",
             "input": {"query": "Foo Fighters"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "quota exceeded",
             "is_error": True},
            {"type": "text", "text": "Be quick."},
        ]},
    ]


async def test_unsigned_thinking_and_empty_text_are_not_sent(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=HELLO_STREAM))
    history = (
        user("Hi"),
        ModelMessage(role="assistant", content=(TextContent(""),), reasoning="unsigned"),
        ModelMessage(
            role="assistant", content=(TextContent("Hello"),), reasoning="also unsigned"
        ),
        user("Again"),
    )
    await collect(provider, request(*history))

    assert http_server.requests[0].json["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]


async def test_thinking_options_pass_through(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=HELLO_STREAM), Canned(chunks=HELLO_STREAM))
    await collect(provider, request(options={"thinking": {"budget_tokens": 2048}}))
    full = {"thinking": {"type": "enabled", "budget_tokens": 4096}, "stream": False}
    await collect(provider, request(options=full))

    first, second = (sent.json for sent in http_server.requests)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert second["stream"] is True


async def test_no_api_key_means_no_key_header_and_extra_headers_are_sent(
    http_server: CannedServer,
) -> None:
    beta = {"anthropic-beta": "interleaved-thinking-2025-05-14"}
    provider = AnthropicProvider(api_key=None, base_url=f"{http_server.url}/", headers=beta)
    http_server.enqueue(Canned(chunks=HELLO_STREAM))
    await collect(provider)

    sent = http_server.requests[0]
    assert sent.path == "/v1/messages"
    assert "x-api-key" not in sent.headers
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"


# --- the stream ------------------------------------------------------------------------------


async def test_text_streams_as_deltas_then_usage_then_finish(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=HELLO_STREAM))

    assert await collect(provider) == [
        TextDelta("Hello"), TextDelta("!"), Usage(input=25, output=15), Finish("stop")
    ]


async def test_a_tool_call_is_yielded_whole_at_its_block_stop(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=TOOL_STREAM))

    assert await collect(provider, request(tools=(SEARCH,))) == [
        TextDelta("I'll search for the"),
        TextDelta(" top Google hits for Foo Fighters."),
        ToolCall("toolu_01VqG2jCdyjoB9HMTFnCKeo2", "google_search", {"query": "Foo Fighters"}),
        Usage(input=471, output=80),  # message_delta's input_tokens of 0 does not erase it
        Finish("tool_calls"),
    ]


async def test_a_tool_call_without_input_deltas_has_empty_input(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_2", "name": "ls", "input": {}}),
        block_stop(0),
        message_delta("tool_use", 12),
        MESSAGE_STOP,
    )
    http_server.enqueue(Canned(chunks=stream))

    assert (await collect(provider))[0] == ToolCall("toolu_2", "ls", {})


async def test_thinking_streams_as_reasoning_with_its_signature(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=THINKING_STREAM))

    assert await collect(provider) == [
        ReasoningDelta("The user has simply"),
        ReasoningDelta(' said "hey".'),
        ReasoningDelta("", signature=SIGNATURE),
        TextDelta("Hello! How can I help?"),
        Usage(input=778, output=104),
        Finish("stop"),
    ]


async def test_redacted_thinking_and_unknown_events_are_skipped(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(
        message_start(),
        block_start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}),
        block_stop(0),
        ("future_event", {"type": "future_event", "whatever": 1}),
        block_start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "citations_delta", "citation": {"type": "char_location"}}),
        text(1, "Done."),
        block_stop(1),
        message_delta("end_turn", 7),
        MESSAGE_STOP,
    )
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [TextDelta("Done."), Usage(25, 7), Finish("stop")]


async def test_cache_usage_is_reported(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(
        message_start(12, cache_write=1500, cache_read=3000),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "ok"),
        block_stop(0),
        message_delta("end_turn", 3, cache_read_input_tokens=3000),
        MESSAGE_STOP,
    )
    http_server.enqueue(Canned(chunks=stream))

    assert (await collect(provider))[-2] == Usage(
        input=12, output=3, cache_read=3000, cache_write=1500
    )


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("refusal", "other"),
        ("pause_turn", "other"),
    ],
)
async def test_stop_reasons_map(
    http_server: CannedServer, provider: AnthropicProvider, stop_reason: str, expected: str
) -> None:
    stream = sse(message_start(), message_delta(stop_reason, 1), MESSAGE_STOP)
    http_server.enqueue(Canned(chunks=stream))

    assert (await collect(provider))[-1] == Finish(expected)


async def test_a_stream_with_a_stop_reason_but_no_message_stop_is_complete(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(message_start(), message_delta("max_tokens", 4))
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [Usage(25, 4), Finish("length")]


# --- failures --------------------------------------------------------------------------------


def error_event(kind: str, message: str) -> Any:
    return ("error", {"type": "error", "error": {"type": kind, "message": message}})


def error_body(kind: str, message: str) -> str:
    import json

    return json.dumps({"type": "error", "error": {"type": kind, "message": message},
                       "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})


async def test_an_overloaded_error_event_mid_stream_is_retryable(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Hel"),
        error_event("overloaded_error", "Overloaded"),
    )
    http_server.enqueue(Canned(chunks=stream))
    seen: list[ModelEvent] = []
    with pytest.raises(ProviderError) as caught:
        await drain(provider, seen)

    assert seen == [TextDelta("Hel")]
    assert "Overloaded" in str(caught.value)
    assert (caught.value.retryable, caught.value.status) == (True, 529)


async def test_an_invalid_request_error_event_is_not_retryable(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(error_event("invalid_request_error", "prompt is too long"))
    http_server.enqueue(Canned(chunks=stream))
    error = await fail(provider)

    assert "prompt is too long" in str(error)
    assert not error.retryable


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (529, "overloaded_error", True),
        (500, "api_error", True),
        (429, "rate_limit_error", True),
        (400, "invalid_request_error", False),
        (401, "authentication_error", False),
    ],
)
async def test_http_errors_carry_the_api_message(
    http_server: CannedServer, provider: AnthropicProvider, status: int, kind: str,
    retryable: bool,
) -> None:
    message = f"{kind}: details from the API"
    http_server.enqueue(Canned(status=status, body=error_body(kind, message)))
    error = await fail(provider)

    assert (error.status, error.retryable) == (status, retryable)
    assert message in str(error)


async def test_malformed_json_mid_stream_fails(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = [*sse(message_start()), 'event: content_block_start\ndata: {"type": "conte\n\n']
    http_server.enqueue(Canned(chunks=stream))
    error = await fail(provider)

    assert "malformed JSON" in str(error)
    assert not error.retryable


async def test_a_garbage_body_fails(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(body=b"\x00\xffnot json at all"))
    error = await fail(provider)

    assert "event stream" in str(error)


async def test_invalid_tool_input_fails(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    stream = sse(
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_3", "name": "google_search"}),
        delta(0, {"type": "input_json_delta", "partial_json": '{"query": tru'}),
        block_stop(0),
    )
    http_server.enqueue(Canned(chunks=stream))
    error = await fail(provider)

    assert "not valid JSON" in str(error)
    assert not error.retryable


async def test_a_connection_dropped_mid_stream_is_retryable(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=TOOL_STREAM, drop_after=5))
    error = await fail(provider)

    assert error.retryable
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)


async def test_a_stream_that_ends_before_its_stop_is_retryable(
    http_server: CannedServer, provider: AnthropicProvider
) -> None:
    http_server.enqueue(Canned(chunks=TOOL_STREAM[:6]))
    error = await fail(provider)

    assert error.retryable
    assert "before the answer was complete" in str(error)

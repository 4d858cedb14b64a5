"""The OpenAI-compatible provider against a real loopback server speaking Chat Completions.

The streams below follow what OpenAI sends (`chat.completion.chunk` objects, a role chunk
first, tool call fragments by `index`, the finish reason, then a usage chunk with empty
`choices` when `include_usage` is set, then `[DONE]`), and what vLLM, DeepSeek and Ollama
add or change (reasoning deltas, whole tool calls in one chunk, `stop` after tool calls).
"""

from __future__ import annotations

import json
import socket
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
    sse_data,
)

from sandbox_sessions.providers import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    OpenAIProvider,
    ProviderError,
    ReasoningDelta,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
)
from sandbox_sessions.providers._openai import _default_max_tokens_param

pytestmark = [
    pytest.mark.anyio,
    HTTPX_UNDER_TRIO,
]


CHUNK_ID = "chatcmpl-BQb0iSFzE1zz1OVhaqg3u2Yqn1Ezf"
WEATHER = ToolSpec(
    name="get_weather",
    description="Get the weather of a city.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
)


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A `chat.completion.chunk` as OpenAI sends it, nulls included."""
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1745678496,
        "model": "gpt-4.1-nano-2025-04-14",
        "service_tier": "default",
        "system_fingerprint": "fp_eede8f0d45",
        "choices": [choice],
        "usage": None,
        **extra,
    }


def usage_chunk(prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0) -> Any:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return {**chunk(), "choices": [], "usage": usage}


ROLE = chunk({"role": "assistant", "content": "", "refusal": None})


def text_stream(*pieces: str, finish: str = "stop") -> list[bytes | str]:
    deltas = [chunk({"content": piece}) for piece in pieces]
    return sse_data(ROLE, *deltas, chunk({}, finish), usage_chunk(12, 5), "[DONE]")


def call_delta(index: int, *, id: str | None = None, name: str | None = None,
               arguments: str = "") -> dict[str, Any]:
    call = {
        "index": index,
        "id": id,
        "type": "function" if id else None,
        "function": {"name": name, "arguments": arguments},
    }
    return {"content": None, "role": None, "tool_calls": [call]}


# The tool call stream of gpt-4.1-nano for "weather in Tokyo", fragment for fragment.
WEATHER_CALL_STREAM = sse_data(
    chunk({"role": "assistant", "content": None, "tool_calls": None}),
    chunk(call_delta(0, id="call_PieqNSej6kM9hgYbcQdbZSaC", name="get_weather")),
    chunk(call_delta(0, arguments='{"lo')),
    chunk(call_delta(0, arguments="catio")),
    chunk(call_delta(0, arguments='n": "T')),
    chunk(call_delta(0, arguments="okyo")),
    chunk(call_delta(0, arguments='"}')),
    chunk({"content": None, "tool_calls": None}, "tool_calls"),
    usage_chunk(67, 31),
    "[DONE]",
)


def request(*messages: ModelMessage, **fields: Any) -> ModelRequest:
    return support.request(*messages, model="gpt-4.1-nano", **fields)


@pytest.fixture
def provider(http_server: CannedServer) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=f"{http_server.url}/v1")


# --- the request -----------------------------------------------------------------------------


async def test_the_request_is_a_streaming_chat_completion(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Hi")))
    await collect(provider, request(user("Hello"), system="Be brief.", tools=(WEATHER,)))

    [sent] = http_server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.json == {
        "model": "gpt-4.1-nano",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 4096,
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the weather of a city.",
            "parameters": WEATHER.parameters,
        }}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_the_history_maps_calls_and_results(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Sunny.")))
    history = (
        user("Weather in Tokyo and Paris?"),
        ModelMessage(
            role="assistant",
            content=(
                TextContent("Let me look."),
                ToolCall(id="call_1", name="get_weather", input={"location": "Tokyo"}),
                ToolCall(id="call_2", name="get_weather", input={"location": "Paris"}),
            ),
            reasoning="The user wants two cities.",
        ),
        ModelMessage(
            role="user",
            content=(
                ToolResultContent(call_id="call_1", output="22°C"),
                ToolResultContent(call_id="call_2", output="no such city", is_error=True),
                TextContent("Thanks"),
            ),
        ),
    )
    await collect(provider, request(*history))

    messages = http_server.requests[0].json["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Tokyo and Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22°C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "no such city"},
        {"role": "user", "content": "Thanks"},
    ]


async def test_an_assistant_message_with_only_calls_has_null_content(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("ok")))
    calls_only = ModelMessage(role="assistant", content=(ToolCall("c", "ls", {}),))
    results = ModelMessage(role="user", content=(ToolResultContent("c", "a.txt"),))
    await collect(provider, request(user("list"), calls_only, results))

    messages = http_server.requests[0].json["messages"]
    assert messages[1]["content"] is None
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {}
    assert messages[2:] == [{"role": "tool", "tool_call_id": "c", "content": "a.txt"}]


async def test_options_are_merged_but_streaming_stays_on(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("ok")))
    options = {"temperature": 0.2, "reasoning_effort": "low", "stream": False}
    await collect(provider, request(options=options))

    body = http_server.requests[0].json
    assert (body["temperature"], body["reasoning_effort"]) == (0.2, "low")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_max_completion_tokens_when_asked_and_for_openai_itself(
    http_server: CannedServer,
) -> None:
    provider = OpenAIProvider(
        api_key=None, base_url=http_server.url, max_tokens_param="max_completion_tokens"
    )
    http_server.enqueue(Canned(chunks=text_stream("ok")))
    await collect(provider, request(max_tokens=99))

    sent = http_server.requests[0]
    assert sent.json["max_completion_tokens"] == 99
    assert "max_tokens" not in sent.json
    assert "authorization" not in sent.headers  # no key: a local server
    assert _default_max_tokens_param("https://api.openai.com/v1") == "max_completion_tokens"
    assert _default_max_tokens_param("http://localhost:11434/v1") == "max_tokens"


async def test_base_url_comes_from_the_environment(
    http_server: CannedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{http_server.url}/env/v1/")
    http_server.enqueue(Canned(chunks=text_stream("ok")))
    await collect(OpenAIProvider(api_key="k"))

    assert http_server.requests[0].path == "/env/v1/chat/completions"


# --- the stream ------------------------------------------------------------------------------


async def test_text_streams_as_deltas_then_usage_then_finish(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Hello", " there", "!")))
    events = await collect(provider)

    assert events == [
        TextDelta("Hello"), TextDelta(" there"), TextDelta("!"),
        Usage(input=12, output=5), Finish("stop"),
    ]


async def test_a_tool_call_is_assembled_from_its_fragments(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=WEATHER_CALL_STREAM))
    events = await collect(provider, request(tools=(WEATHER,)))

    assert events == [
        ToolCall(id="call_PieqNSej6kM9hgYbcQdbZSaC", name="get_weather",
                 input={"location": "Tokyo"}),
        Usage(input=67, output=31),
        Finish("tool_calls"),
    ]


async def test_parallel_tool_calls_interleaved_by_index(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = sse_data(
        ROLE,
        chunk({"content": "Checking both."}),
        chunk(call_delta(0, id="call_a", name="get_weather")),
        chunk(call_delta(1, id="call_b", name="get_weather")),
        chunk(call_delta(1, arguments='{"location": ')),
        chunk(call_delta(0, arguments='{"location": "Oslo"}')),
        chunk(call_delta(1, arguments='"Lima"}')),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    events = await collect(provider)

    assert events == [
        TextDelta("Checking both."),
        ToolCall("call_a", "get_weather", {"location": "Oslo"}),
        ToolCall("call_b", "get_weather", {"location": "Lima"}),
        Finish("tool_calls"),  # no usage chunk came: none is made up
    ]


async def test_usage_counts_cached_and_reasoning_tokens(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = sse_data(
        ROLE, chunk({"content": "4"}), chunk({}, "stop"),
        usage_chunk(2006, 300, cached=1920, reasoning=256), "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    events = await collect(provider)

    assert events[-2] == Usage(input=86, output=300, reasoning=256, cache_read=1920)


async def test_reasoning_content_deltas_as_vllm_and_deepseek_send_them(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = sse_data(
        chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
        chunk({"content": None, "reasoning_content": "Two plus"}),
        chunk({"content": None, "reasoning_content": " two is four."}),
        # Servers that send both names send the same text: it must come out once.
        chunk({"content": None, "reasoning": " Sure.", "reasoning_content": " Sure."}),
        chunk({"content": "4", "reasoning_content": None}),
        chunk({}, "stop"),
        "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    events = await collect(provider)

    assert events == [
        ReasoningDelta("Two plus"), ReasoningDelta(" two is four."), ReasoningDelta(" Sure."),
        TextDelta("4"), Finish("stop"),
    ]


async def test_reasoning_field_as_newer_servers_send_it(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = sse_data(chunk({"reasoning": "Hmm."}), chunk({"content": "Yes"}, "stop"), "[DONE]")
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [ReasoningDelta("Hmm."), TextDelta("Yes"), Finish("stop")]


async def test_a_whole_call_in_one_chunk_and_stop_means_tool_calls(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    # Ollama: one chunk per call with the arguments whole, then `stop`, and usage alongside.
    call = {"id": "call_wteop8bt", "index": 0, "type": "function",
            "function": {"name": "run_command", "arguments": '{"command":"ls"}'}}
    stream = sse_data(
        chunk({"role": "assistant", "content": "", "tool_calls": [call]}),
        chunk({"role": "assistant", "content": ""}, "stop",
              usage={"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}),
        "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    events = await collect(provider)

    assert events == [
        ToolCall("call_wteop8bt", "run_command", {"command": "ls"}),
        Usage(input=40, output=9),
        Finish("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "other"), ("odd", "other")],
)
async def test_finish_reasons_map(
    http_server: CannedServer, provider: OpenAIProvider, reason: str, expected: str
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("x", finish=reason)))

    assert (await collect(provider))[-1] == Finish(expected)


async def test_sse_is_read_tolerantly(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    # Comments, CRLF line ends, `data:` without a space, and a frame split across chunks.
    frame = f"data: {json.dumps(chunk({'content': 'split'}))}\r\n\r\n"
    stream: list[bytes | str] = [
        ": keep-alive\n\n",
        f"data:{json.dumps(chunk({'content': 'a'}))}\r\n\r\n",
        frame[:25], frame[25:],
        f"data: {json.dumps(chunk({}, 'stop'))}\n\n",
        "data: [DONE]\n\n",
    ]
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [TextDelta("a"), TextDelta("split"), Finish("stop")]


async def test_a_stream_with_a_finish_but_no_done_is_complete(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=sse_data(chunk({"content": "ok"}), chunk({}, "length"))))

    assert await collect(provider) == [TextDelta("ok"), Finish("length")]


async def test_a_shared_client_is_reused_and_left_open(http_server: CannedServer) -> None:
    async with httpx.AsyncClient() as client:
        provider = OpenAIProvider(api_key="k", base_url=http_server.url, client=client)
        http_server.enqueue(Canned(chunks=text_stream("one")), Canned(chunks=text_stream("two")))
        await collect(provider)
        await collect(provider)
        assert not client.is_closed

    first, second = http_server.requests
    assert first.client_port == second.client_port  # one kept-alive connection


async def test_closing_the_stream_early_closes_the_response(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    slow = Canned(chunks=text_stream(*["word "] * 50), delay=0.02)
    http_server.enqueue(slow, Canned(chunks=text_stream("again")))
    stream = provider.stream(request())
    async for event in stream:
        assert event == TextDelta("word ")
        break
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator

    assert (await collect(provider))[0] == TextDelta("again")


# --- failures --------------------------------------------------------------------------------


def error_body(message: str, kind: str, code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_rate_limits_and_server_errors_are_retryable(
    http_server: CannedServer, provider: OpenAIProvider, status: int
) -> None:
    message = "Rate limit reached for gpt-4.1-nano" if status == 429 else "The server had an error"
    http_server.enqueue(Canned(status=status, body=error_body(message, "server_error")))
    error = await fail(provider)

    assert error.status == status
    assert error.retryable
    assert message in str(error)


async def test_a_bad_request_is_not_retryable(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    message = "Invalid schema for function 'get_weather'."
    http_server.enqueue(Canned(status=400, body=error_body(message, "invalid_request_error")))
    error = await fail(provider)

    assert (error.status, error.retryable) == (400, False)
    assert message in str(error)
    assert error.code == "provider_error"


async def test_x_should_retry_overrides_the_status(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    body = error_body("quota exceeded", "insufficient_quota")
    http_server.enqueue(Canned(status=500, body=body, headers={"x-should-retry": "false"}))

    assert not (await fail(provider)).retryable


async def test_an_error_body_in_another_shape_is_still_read(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    # Ollama: {"error": "..."}; and a plain-text body.
    http_server.enqueue(
        Canned(status=404, body='{"error":"model \\"qwen\\" not found, try pulling it first"}'),
        Canned(status=502, body="Bad Gateway", headers={"content-type": "text/plain"}),
    )
    assert 'model "qwen" not found' in str(await fail(provider))
    error = await fail(provider)
    assert (error.status, error.retryable) == (502, True)
    assert "Bad Gateway" in str(error)


async def test_a_body_that_is_not_an_event_stream_fails(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    page = "<html><body>Sign in to the Wi-Fi</body></html>"
    http_server.enqueue(Canned(body=page, headers={"content-type": "text/html"}))
    error = await fail(provider)

    assert "event stream" in str(error)
    assert "Wi-Fi" in str(error)
    assert not error.retryable


async def test_malformed_json_mid_stream_fails_after_the_text_before_it(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = [*sse_data(chunk({"content": "partial"})), 'data: {"id": "chatcmpl-1", "choi\n\n']
    http_server.enqueue(Canned(chunks=stream))
    seen: list[ModelEvent] = []
    with pytest.raises(ProviderError, match="malformed JSON") as caught:
        await drain(provider, seen)

    assert seen == [TextDelta("partial")]
    assert not caught.value.retryable


async def test_an_error_sent_inside_the_stream(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    payload = {"error": {"message": "The model is overloaded.", "type": "server_error"}}
    http_server.enqueue(Canned(chunks=sse_data(chunk({"content": "a"}), payload)))
    error = await fail(provider)

    assert "The model is overloaded." in str(error)
    assert error.retryable


async def test_invalid_tool_arguments_fail(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    stream = sse_data(
        chunk(call_delta(0, id="call_x", name="get_weather", arguments='{"location": "To')),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    error = await fail(provider)

    assert "not valid JSON" in str(error)
    assert "get_weather" in str(error)
    assert not error.retryable


async def test_a_connection_dropped_mid_stream_is_retryable(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("a", "b", "c"), drop_after=2))
    error = await fail(provider)

    assert error.retryable
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)


async def test_a_stream_that_ends_before_its_finish_is_retryable(
    http_server: CannedServer, provider: OpenAIProvider
) -> None:
    http_server.enqueue(Canned(chunks=sse_data(ROLE, chunk({"content": "a"}))))
    error = await fail(provider)

    assert error.retryable
    assert "before the answer was complete" in str(error)


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(api_key="k", base_url=f"http://127.0.0.1:{port}/v1")
    error = await fail(provider)

    assert error.retryable
    assert isinstance(error.__cause__, httpx.ConnectError)


async def test_a_read_timeout_is_retryable(http_server: CannedServer) -> None:
    provider = OpenAIProvider(api_key="k", base_url=http_server.url, timeout=0.2)
    http_server.enqueue(Canned(chunks=text_stream("late"), delay=0.6))
    error = await fail(provider)

    assert error.retryable
    assert isinstance(error.__cause__, httpx.ReadTimeout)

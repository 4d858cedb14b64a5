"""The Responses API provider against a real loopback server speaking OpenAI's Responses API.

The streams below follow what OpenAI sends for `POST /v1/responses` with `stream: true`: each
event named twice (`event:` and the data's `type`), numbered by `sequence_number`;
`response.created` and `response.in_progress` first; each output item opened by
`response.output_item.added` and closed by `response.output_item.done` with the whole item;
text in `response.output_text.delta` events, reasoning summaries in
`response.reasoning_summary_text.delta`, function call arguments in
`response.function_call_arguments.delta` then `.done`; and one terminal event,
`response.completed` (with `usage`), `response.incomplete` or `response.failed`. The field
names are those of openai/openai-python's `src/openai/types/responses/`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import provider_support as support
import pytest
from provider_support import collect, fail, user
from servers import (
    HTTPX_UNDER_TRIO,
    Canned,
    CannedServer,
    anyio_backend,  # noqa: F401  (the fixture: asyncio and trio)
    sse,
)

from sandbox_sessions import InvalidArgument, Tokens
from sandbox_sessions.agent._pricing import DEFAULT_PRICES, cost_of
from sandbox_sessions.providers import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    ReasoningDelta,
    ResponsesProvider,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
    resolve_provider,
)

pytestmark = [pytest.mark.anyio, HTTPX_UNDER_TRIO]

RESPONSE_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
MODEL = "gpt-4.1-2025-04-14"
WEATHER = ToolSpec(
    name="get_weather",
    description="Get the weather of a city.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
)


def response(status: str, output: list[Any], usage: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The `response` object the lifecycle events carry, trimmed to the fields that matter."""
    return {
        "id": RESPONSE_ID, "object": "response", "created_at": 1741476542, "status": status,
        "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "model": MODEL, "output": output,
        "parallel_tool_calls": True, "store": False, "usage": usage, **extra,
    }


def usage(input: int, output: int, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    }


def events(*payloads: dict[str, Any]) -> list[bytes | str]:
    """SSE frames as OpenAI writes them: `event: <type>`, and the numbered data."""
    numbered = [{**payload, "sequence_number": n} for n, payload in enumerate(payloads)]
    return sse(*((payload["type"], payload) for payload in numbered))


def opening() -> list[dict[str, Any]]:
    return [
        {"type": "response.created", "response": response("in_progress", [])},
        {"type": "response.in_progress", "response": response("in_progress", [])},
    ]


def message_events(index: int, item_id: str, *pieces: str) -> list[dict[str, Any]]:
    text = "".join(pieces)
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "text": text}
    done = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [part]}
    return [
        {"type": "response.output_item.added", "output_index": index,
         "item": {"id": item_id, "type": "message", "status": "in_progress",
                  "role": "assistant", "content": []}},
        {"type": "response.content_part.added", **where,
         "part": {"type": "output_text", "annotations": [], "text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
          for piece in pieces),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": done},
    ]


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Any:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": name}


def call_events(index: int, item_id: str, call_id: str, name: str,
                *fragments: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The call's opening and argument deltas, and its closing (`.done`, `output_item.done`),
    apart, so that two calls can be interleaved."""
    arguments = "".join(fragments)
    where = {"item_id": item_id, "output_index": index}
    opened = [
        {"type": "response.output_item.added", "output_index": index,
         "item": call_item(item_id, call_id, name, "", "in_progress")},
        *({"type": "response.function_call_arguments.delta", **where, "delta": fragment}
          for fragment in fragments),
    ]
    closed = [
        {"type": "response.function_call_arguments.done", **where, "name": name,
         "arguments": arguments},
        {"type": "response.output_item.done", "output_index": index,
         "item": call_item(item_id, call_id, name, arguments, "completed")},
    ]
    return opened, closed


def completed(output: list[Any], used: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "response.completed", "response": response("completed", output, used)}


MESSAGE_ID = "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b"


def text_stream(*pieces: str) -> list[bytes | str]:
    return events(*opening(), *message_events(0, MESSAGE_ID, *pieces),
                  completed([], usage(36, 87)))


# The function call stream for "weather in Paris", fragment for fragment.
_CALL_OPEN, _CALL_CLOSE = call_events(
    0, "fc_67ca09c6bedc8190a7abfec07b1a1332096610f474011cc0", "call_unLAR8MvFNptuiZK6K6HCy5k",
    "get_weather", '{"', "location", '":"', "Paris", ",", " France", '"}',
)
WEATHER_CALL_STREAM = events(*opening(), *_CALL_OPEN, *_CALL_CLOSE, completed([], usage(291, 23)))


def request(*messages: ModelMessage, **fields: Any) -> ModelRequest:
    return support.request(*messages, model="gpt-4.1", **fields)


@pytest.fixture
def provider(http_server: CannedServer) -> ResponsesProvider:
    return ResponsesProvider(api_key="sk-test", base_url=f"{http_server.url}/v1")


# --- the request -----------------------------------------------------------------------------


async def test_the_request_is_a_streaming_stateless_response(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Hello")))
    await collect(provider, request(user("Hi"), system="Be brief.", tools=(WEATHER,),
                                    max_tokens=256))
    sent = http_server.requests[0]

    assert (sent.method, sent.path) == ("POST", "/v1/responses")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "gpt-4.1",
        "instructions": "Be brief.",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Hi"}]}],
        "max_output_tokens": 256,
        "store": False,
        "tools": [{"type": "function", "name": "get_weather",
                   "description": "Get the weather of a city.",
                   "parameters": dict(WEATHER.parameters), "strict": False}],
        "stream": True,
    }


async def test_the_history_maps_calls_and_results_to_items(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Sunny.")))
    history = (
        user("Weather in Paris and Rome?"),
        ModelMessage("assistant", (
            TextContent("Let me look."),
            ToolCall("call_1", "get_weather", {"location": "Paris"}),
            ToolCall("call_2", "get_weather", {"location": "Rome"}),
        ), reasoning="the user wants two cities"),
        ModelMessage("user", (
            ToolResultContent("call_1", "18°C"),
            ToolResultContent("call_2", "no such city", is_error=True),
            TextContent("And tomorrow?"),
        )),
    )
    await collect(provider, request(*history))

    assert "instructions" not in http_server.requests[0].json
    assert http_server.requests[0].json["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"location": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"location": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18°C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "no such city"},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "And tomorrow?"}]},
    ]


async def test_a_call_read_back_is_sent_as_it_came(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    """The round trip: a streamed call, put in the history, goes back with its call id."""
    http_server.enqueue(Canned(chunks=WEATHER_CALL_STREAM), Canned(chunks=text_stream("Mild.")))
    call = next(e for e in await collect(provider) if isinstance(e, ToolCall))
    history = (user("Paris?"), ModelMessage("assistant", (call,)),
               ModelMessage("user", (ToolResultContent(call.id, "14°C"),)))
    await collect(provider, request(*history))

    sent = http_server.requests[1].json["input"]
    assert sent[1:] == [
        {"type": "function_call", "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k",
         "name": "get_weather", "arguments": '{"location": "Paris, France"}'},
        {"type": "function_call_output", "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k",
         "output": "14°C"},
    ]


async def test_options_are_merged_but_streaming_stays_on(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("ok")))
    options = {"reasoning": {"effort": "low", "summary": "auto"}, "stream": False}
    await collect(provider, request(options=options))
    body = http_server.requests[0].json

    assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert body["stream"] is True


async def test_a_history_with_parts_in_the_wrong_role_is_refused(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    for bad in (ModelMessage("assistant", (ToolResultContent("c", "out"),)),
                ModelMessage("user", (ToolCall("c", "ls", {}),))):
        with pytest.raises(InvalidArgument):
            await collect(provider, request(bad))
    assert http_server.requests == []


# --- the stream ------------------------------------------------------------------------------


async def test_text_streams_as_deltas_then_usage_then_finish(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("Hel", "lo", " there")))

    assert await collect(provider) == [
        TextDelta("Hel"), TextDelta("lo"), TextDelta(" there"),
        Usage(input=36, output=87), Finish("stop"),
    ]


async def test_a_function_call_is_assembled_from_its_argument_deltas(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=WEATHER_CALL_STREAM))

    assert await collect(provider) == [
        ToolCall("call_unLAR8MvFNptuiZK6K6HCy5k", "get_weather", {"location": "Paris, France"}),
        Usage(input=291, output=23),
        Finish("tool_calls"),
    ]


async def test_two_parallel_calls_interleaved_after_text(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    paris_open, paris_close = call_events(
        1, "fc_1", "call_paris", "get_weather", '{"loc', 'ation": "Pa', 'ris"}')
    rome_open, rome_close = call_events(
        2, "fc_2", "call_rome", "get_weather", '{"location":', ' "Rome"}')
    stream = events(
        *opening(), *message_events(0, "msg_1", "Checking ", "both."),
        *paris_open[:2], *rome_open[:2], *paris_open[2:], *rome_open[2:],
        *rome_close, *paris_close, completed([], usage(80, 40)),
    )
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [
        TextDelta("Checking "), TextDelta("both."),
        ToolCall("call_rome", "get_weather", {"location": "Rome"}),
        ToolCall("call_paris", "get_weather", {"location": "Paris"}),
        Usage(input=80, output=40),
        Finish("tool_calls"),
    ]


async def test_reasoning_summaries_and_reasoning_text_stream_as_reasoning(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    reasoning_id = "rs_6876cf02e0bc8192b74af0fb64b715ff06fa2fcced15a5ac"
    summary = {"item_id": reasoning_id, "output_index": 0, "summary_index": 0}
    stream = events(
        *opening(),
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": reasoning_id, "type": "reasoning", "summary": []}},
        {"type": "response.reasoning_summary_part.added", **summary,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **summary, "delta": "**Adding** "},
        {"type": "response.reasoning_summary_text.delta", **summary, "delta": "numbers"},
        {"type": "response.reasoning_summary_text.done", **summary,
         "text": "**Adding** numbers"},
        # gpt-oss on a compatible server: the raw reasoning text.
        {"type": "response.reasoning_text.delta", "item_id": reasoning_id, "output_index": 0,
         "content_index": 0, "delta": "2+2=4"},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": reasoning_id, "type": "reasoning",
                  "summary": [{"type": "summary_text", "text": "**Adding** numbers"}]}},
        *message_events(1, "msg_2", "4"),
        completed([], usage(20, 150, cached=12, reasoning=128)),
    )
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [
        ReasoningDelta("**Adding** "), ReasoningDelta("numbers"), ReasoningDelta("2+2=4"),
        TextDelta("4"),
        Usage(input=8, output=150, reasoning=128, cache_read=12),
        Finish("stop"),
    ]


async def test_a_message_sent_whole_without_deltas_is_still_read(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    item = {"id": "msg_3", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": "All at once."}]}
    stream = events(*opening(), {"type": "response.output_item.done", "output_index": 0,
                                 "item": item}, completed([item], None))
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [TextDelta("All at once."), Finish("stop")]


async def test_deltas_without_item_ids_are_not_repeated_by_the_finished_item(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    item = {"id": "msg_4", "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi!"}]}
    stream = events(*opening(),
                    {"type": "response.output_text.delta", "delta": "Hi"},
                    {"type": "response.output_text.delta", "delta": "!"},
                    {"type": "response.output_item.done", "item": item},
                    completed([item], None))
    http_server.enqueue(Canned(chunks=stream))

    assert await collect(provider) == [TextDelta("Hi"), TextDelta("!"), Finish("stop")]


async def test_an_incomplete_response_finishes_with_its_reason(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    cut = {"type": "response.incomplete", "response": response(
        "incomplete", [], usage(10, 16), incomplete_details={"reason": "max_output_tokens"})}
    http_server.enqueue(Canned(chunks=events(*opening(), *message_events(0, "m", "Once"), cut)))

    assert await collect(provider) == [TextDelta("Once"), Usage(10, 16), Finish("length")]


async def test_a_shared_client_is_reused_and_left_open(http_server: CannedServer) -> None:
    async with httpx.AsyncClient() as client:
        provider = ResponsesProvider(api_key=None, base_url=http_server.url, client=client)
        http_server.enqueue(Canned(chunks=text_stream("one")), Canned(chunks=text_stream("two")))
        await collect(provider)
        await collect(provider)
        assert not client.is_closed

    first, second = http_server.requests
    assert first.client_port == second.client_port
    assert "authorization" not in first.headers


# --- failures --------------------------------------------------------------------------------


def error_body(message: str, kind: str, code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [(429, "Rate limit reached for gpt-4.1 on tokens per min (TPM)", "tokens"),
     (500, "The server had an error while processing your request.", "server_error")],
)
async def test_rate_limits_and_server_errors_are_retryable(
    http_server: CannedServer, provider: ResponsesProvider, status: int, message: str, kind: str
) -> None:
    http_server.enqueue(Canned(status=status, body=error_body(message, kind)))
    error = await fail(provider)

    assert (error.status, error.retryable) == (status, True)
    assert message in str(error)


async def test_a_bad_request_is_not_retryable(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    message = "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'."
    http_server.enqueue(Canned(status=400, body=error_body(message, "invalid_request_error")))
    error = await fail(provider)

    assert (error.status, error.retryable) == (400, False)
    assert message in str(error)


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [("server_error", 500, True), ("rate_limit_exceeded", 429, True),
     ("invalid_prompt", None, False)],
)
async def test_a_failed_response_raises_with_its_error(
    http_server: CannedServer, provider: ResponsesProvider,
    code: str, status: int | None, retryable: bool,
) -> None:
    failure = {"code": code, "message": "The model failed to produce a response."}
    failed = {"type": "response.failed", "response": response("failed", [], error=failure)}
    http_server.enqueue(Canned(chunks=events(*opening(), *message_events(0, "m", "Par"), failed)))
    seen: list[ModelEvent] = []
    error = await fail(provider, seen)

    assert seen == [TextDelta("Par")]
    assert (error.status, error.retryable) == (status, retryable)
    assert "The model failed to produce a response." in str(error)
    assert code in str(error)


async def test_an_error_event_raises(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    error_event = {"type": "error", "code": "server_error", "param": None,
                   "message": "The server had an error while processing your request."}
    http_server.enqueue(Canned(chunks=events(*opening(), error_event)))
    error = await fail(provider)

    assert error.retryable
    assert "failed mid-stream" in str(error)
    assert "The server had an error" in str(error)


async def test_malformed_json_in_an_event_fails_after_the_text_before_it(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    good = events(*opening(), *message_events(0, "m", "partial")[:3])
    bad = 'event: response.output_text.delta\ndata: {"type": "response.output_text.del\n\n'
    http_server.enqueue(Canned(chunks=[*good, bad, *text_stream("never")]))
    seen: list[ModelEvent] = []
    error = await fail(provider, seen)

    assert seen == [TextDelta("partial")]
    assert "malformed JSON" in str(error)
    assert not error.retryable


async def test_invalid_call_arguments_fail(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    opened, closed = call_events(0, "fc_9", "call_9", "get_weather", '{"location": "Pa')
    http_server.enqueue(Canned(chunks=events(*opening(), *opened, *closed,
                                             completed([], None))))
    error = await fail(provider)

    assert "not valid JSON" in str(error)
    assert "get_weather" in str(error)


async def test_a_connection_dropped_mid_stream_is_retryable(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("a", "b", "c"), drop_after=6))
    seen: list[ModelEvent] = []
    error = await fail(provider, seen)

    assert seen == [TextDelta("a"), TextDelta("b")]
    assert error.retryable
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)


async def test_a_stream_that_ends_before_its_terminal_event_is_retryable(
    http_server: CannedServer, provider: ResponsesProvider
) -> None:
    http_server.enqueue(Canned(chunks=text_stream("a", "b")[:-1]))
    seen: list[ModelEvent] = []
    error = await fail(provider, seen)

    assert seen == [TextDelta("a"), TextDelta("b")]
    assert error.retryable
    assert "before the answer was complete" in str(error)


# --- selection and pricing -------------------------------------------------------------------


def test_the_prefix_selects_it_with_the_openai_key_and_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    provider, name = resolve_provider("openai-responses/gpt-4.1")

    assert isinstance(provider, ResponsesProvider)
    assert name == "gpt-4.1"
    assert provider.base_url == "https://api.openai.com/v1"


async def test_its_own_base_url_and_openai_key_are_used(
    http_server: CannedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # As the service passes `AgentConfig(base_url=)`: keyed by the model's prefix.
    provider, name = resolve_provider(
        "openai-responses/local", api_keys={"openai": "sk-given"},
        base_urls={"openai-responses": f"{http_server.url}/v1"},
    )
    http_server.enqueue(Canned(chunks=text_stream("hi")))
    await collect(provider, request())

    assert http_server.requests[0].path == "/v1/responses"
    assert http_server.requests[0].headers["authorization"] == "Bearer sk-given"
    assert name == "local"


def test_a_local_server_needs_no_key_but_openai_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(InvalidArgument, match="OPENAI_API_KEY"):
        resolve_provider("openai-responses/gpt-4.1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    provider, _ = resolve_provider("openai-responses/smollm2")

    assert isinstance(provider, ResponsesProvider)
    assert provider.base_url == "http://127.0.0.1:8080/v1"


def test_it_costs_what_the_same_openai_model_costs() -> None:
    tokens = Tokens(input=1_000_000, output=1_000_000)

    assert cost_of("openai-responses/gpt-4.1", tokens, DEFAULT_PRICES) == cost_of(
        "openai/gpt-4.1", tokens, DEFAULT_PRICES) == 10.0
    assert cost_of("openai-responses/unknown", tokens, DEFAULT_PRICES) == 0.0

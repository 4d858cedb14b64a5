"""What every provider promises (the `Provider.stream` contract), checked on each of them.

Each provider plays the same answer, some text then a tool call, in its own wire format: the
OpenAI (Chat Completions and Responses) and Anthropic ones from a loopback server, the scripted
one from its script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from servers import Canned, CannedServer
from test_providers_anthropic import TOOL_STREAM
from test_providers_openai import WEATHER_CALL_STREAM
from test_providers_responses import WEATHER_CALL_STREAM as RESPONSES_CALL_STREAM

from sandbox_sessions import InvalidArgument
from sandbox_sessions.providers import (
    AnthropicProvider,
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    OpenAIProvider,
    Provider,
    ReasoningDelta,
    ResponsesProvider,
    ScriptedProvider,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    Usage,
)

pytestmark = pytest.mark.anyio

REQUEST = ModelRequest(
    model="any", system=None, messages=(ModelMessage("user", (TextContent("Go"),)),)
)
SCRIPT = [{
    "text": "I'll search for that.",
    "tool_calls": [{"name": "google_search", "input": {"query": "Foo Fighters"}}],
}]

Factory = Callable[[CannedServer], Provider]


def openai(server: CannedServer) -> Provider:
    server.enqueue(Canned(chunks=WEATHER_CALL_STREAM))
    return OpenAIProvider(api_key="k", base_url=server.url)


def openai_responses(server: CannedServer) -> Provider:
    server.enqueue(Canned(chunks=RESPONSES_CALL_STREAM))
    return ResponsesProvider(api_key="k", base_url=server.url)


def anthropic(server: CannedServer) -> Provider:
    server.enqueue(Canned(chunks=TOOL_STREAM))
    return AnthropicProvider(api_key="k", base_url=server.url)


def scripted(server: CannedServer) -> Provider:
    return ScriptedProvider(SCRIPT)


PROVIDERS = pytest.mark.parametrize("factory", [openai, openai_responses, anthropic, scripted])


async def collect(provider: Provider, request: ModelRequest = REQUEST) -> list[ModelEvent]:
    return [event async for event in provider.stream(request)]


@PROVIDERS
async def test_the_stream_ends_with_one_finish_and_usage_just_before(
    http_server: CannedServer, factory: Factory
) -> None:
    events = await collect(factory(http_server))

    assert isinstance(events[-1], Finish)
    assert sum(isinstance(event, Finish) for event in events) == 1
    usages = [i for i, event in enumerate(events) if isinstance(event, Usage)]
    assert usages in ([], [len(events) - 2])


@PROVIDERS
async def test_tool_calls_come_whole_and_the_finish_says_so(
    http_server: CannedServer, factory: Factory
) -> None:
    events = await collect(factory(http_server))
    calls = [event for event in events if isinstance(event, ToolCall)]

    assert calls
    for call in calls:
        assert call.id
        assert call.name
        assert isinstance(call.input, dict)
        assert call.input  # each of these answers has arguments
    assert events[-1] == Finish("tool_calls")
    last_call = max(i for i, event in enumerate(events) if isinstance(event, ToolCall))
    deltas = [i for i, e in enumerate(events) if isinstance(e, TextDelta | ReasoningDelta)]
    assert all(i < last_call for i in deltas)


@PROVIDERS
async def test_every_event_is_a_model_event(
    http_server: CannedServer, factory: Factory
) -> None:
    kinds: tuple[type[Any], ...] = (TextDelta, ReasoningDelta, ToolCall, Usage, Finish)

    assert all(isinstance(event, kinds) for event in await collect(factory(http_server)))


# The scripted one reads no history.
@pytest.mark.parametrize("factory", [openai, openai_responses, anthropic])
async def test_a_history_with_parts_in_the_wrong_role_is_refused(
    http_server: CannedServer, factory: Factory
) -> None:
    provider = factory(http_server)
    for bad in (
        ModelMessage("assistant", (ToolResultContent("c", "out"),)),
        ModelMessage("user", (ToolCall("c", "ls", {}),)),
    ):
        with pytest.raises(InvalidArgument):
            await collect(provider, ModelRequest(model="m", system=None, messages=(bad,)))
    assert http_server.requests == []  # refused before anything was sent

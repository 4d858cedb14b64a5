"""OpenAI-compatible Chat Completions, streamed: OpenAI itself, and vLLM, Ollama, llama.cpp
server or LM Studio through `base_url`.

The wire format stays in this module. The request is built by pure functions and the stream is
read by `ChunkParser` (chunks in, neutral events out); `OpenAIProvider` only wires them to HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from .._exceptions import InvalidArgument
from . import _http
from .base import (
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

__all__ = ["DEFAULT_OPENAI_BASE_URL", "ChunkParser", "OpenAIProvider", "build_body"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_LABEL = "OpenAI-compatible API"
_FINISH_REASONS = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
}
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}

MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]


# --- the request -----------------------------------------------------------------------------


def _tool(spec: ToolSpec) -> dict[str, Any]:
    parameters = dict(spec.parameters) or dict(_EMPTY_SCHEMA)
    function = {"name": spec.name, "description": spec.description, "parameters": parameters}
    return {"type": "function", "function": function}


def _user_messages(message: ModelMessage) -> list[dict[str, Any]]:
    """Tool results first (each its own `tool` message, right after the assistant's calls),
    then the user's text."""
    wire: list[dict[str, Any]] = []
    texts: list[str] = []
    for part in message.content:
        if isinstance(part, ToolResultContent):
            wire.append({"role": "tool", "tool_call_id": part.call_id, "content": part.output})
        elif isinstance(part, TextContent):
            texts.append(part.text)
        else:
            raise InvalidArgument("a user message cannot carry a tool call")
    if texts or not wire:
        wire.append({"role": "user", "content": "\n\n".join(texts)})
    return wire


def _assistant_message(message: ModelMessage) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ToolCall):
            arguments = json.dumps(dict(part.input), ensure_ascii=False)
            function = {"name": part.name, "arguments": arguments}
            calls.append({"id": part.id, "type": "function", "function": function})
        elif isinstance(part, TextContent):
            texts.append(part.text)
        else:
            raise InvalidArgument("an assistant message cannot carry a tool result")
    wire: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        wire["tool_calls"] = calls
    elif wire["content"] is None:
        wire["content"] = ""
    return wire


def wire_messages(system: str | None, messages: tuple[ModelMessage, ...]) -> list[dict[str, Any]]:
    """The Chat Completions `messages` for a neutral history (reasoning is not sent back)."""
    wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        if message.role == "user":
            wire.extend(_user_messages(message))
        else:
            wire.append(_assistant_message(message))
    return wire


def build_body(request: ModelRequest, *, max_tokens_param: MaxTokensParam) -> dict[str, Any]:
    """The JSON body of a streaming chat completion. `request.options` are merged in last, at
    the top level (`temperature`, `reasoning_effort`, ...); streaming cannot be turned off."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": wire_messages(request.system, request.messages),
        max_tokens_param: request.max_tokens,
    }
    if request.tools:
        body["tools"] = [_tool(spec) for spec in request.tools]
    body.update(request.options)
    body["stream"] = True
    body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
    return body


# --- the stream ------------------------------------------------------------------------------


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    fragments: list[str] = field(default_factory=list)
    parsed: Mapping[str, Any] | None = None

    def add(self, delta: Mapping[str, Any]) -> None:
        self.id = self.id or str(delta.get("id") or "")
        function = delta.get("function")
        if not isinstance(function, Mapping):
            return
        self.name = self.name or str(function.get("name") or "")
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # some servers send the object itself
            self.parsed = arguments
        elif isinstance(arguments, str):
            self.fragments.append(arguments)

    def complete(self) -> ToolCall:
        if not self.name:
            raise ProviderError(f"{_LABEL} sent a tool call without a name")
        call_id = self.id or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCall(id=call_id, name=self.name, input=self._input())

    def _input(self) -> Mapping[str, Any]:
        if self.parsed is not None:
            return self.parsed
        text = "".join(self.fragments).strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ProviderError(
                f"{_LABEL}: the arguments of tool call {self.name!r} are not valid JSON: "
                f"{text[:200]!r}"
            ) from exc
        if not isinstance(value, dict):
            raise ProviderError(f"{_LABEL}: the arguments of {self.name!r} are not an object")
        return value


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(raw: Mapping[str, Any]) -> Usage:
    prompt = raw.get("prompt_tokens_details")
    completion = raw.get("completion_tokens_details")
    prompt_details = prompt if isinstance(prompt, Mapping) else {}
    completion_details = completion if isinstance(completion, Mapping) else {}
    # OpenAI counts cached tokens inside prompt_tokens; DeepSeek reports them beside it.
    cached = _int(prompt_details.get("cached_tokens")) or _int(raw.get("prompt_cache_hit_tokens"))
    return Usage(
        input=max(_int(raw.get("prompt_tokens")) - cached, 0),
        output=_int(raw.get("completion_tokens")),
        reasoning=_int(completion_details.get("reasoning_tokens")),
        cache_read=cached,
    )


@dataclass(slots=True)
class ChunkParser:
    """Reads `chat.completion.chunk` objects into neutral events, tolerantly.

    Tool call fragments are gathered by `index`; the complete calls are yielded when the
    choice's `finish_reason` arrives (or at the end). Usage (a chunk with empty `choices`, after
    the finish reason when `include_usage` is set) and `Finish` are held until `end`, so that
    `Usage` always comes right before `Finish`. Only the first choice is read.
    """

    _calls: dict[int, _PendingCall] = field(default_factory=dict)
    _made_calls: bool = False
    _finish: str | None = None
    _usage: Usage | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[ModelEvent]:
        """The events that one chunk carries; raises `ProviderError` for an in-stream error."""
        if chunk.get("error"):
            raise _http.error_from_event(_LABEL, chunk)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = _usage(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return []
        return self._choice(choices[0])

    def _choice(self, choice: Mapping[str, Any]) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            events.extend(self._delta(delta))
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self._finish = reason
            events.extend(self._complete_calls())
        return events

    def _delta(self, delta: Mapping[str, Any]) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        # vLLM and DeepSeek say `reasoning_content`, newer vLLM and Ollama `reasoning`: some
        # servers send both with the same text, so one is read, never both.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events.append(ReasoningDelta(reasoning))
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                events.append(TextDelta(text))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, Mapping):
                    index = call.get("index")
                    slot = index if isinstance(index, int) else position
                    self._calls.setdefault(slot, _PendingCall()).add(call)
        return events

    def _complete_calls(self) -> list[ModelEvent]:
        done: list[ModelEvent] = [self._calls[key].complete() for key in sorted(self._calls)]
        self._made_calls = self._made_calls or bool(done)
        self._calls.clear()
        return done

    def end(self, *, done: bool) -> list[ModelEvent]:
        """The closing events: pending calls, usage, then `Finish`.

        `done` says `[DONE]` was read. A stream that ended with neither `[DONE]` nor a finish
        reason was cut off: that raises a retryable `ProviderError`.
        """
        if not done and self._finish is None:
            raise ProviderError(
                f"{_LABEL} closed the stream before the answer was complete", retryable=True
            )
        events = self._complete_calls()
        if self._usage is not None:
            events.append(self._usage)
        events.append(Finish(self._reason()))
        return events

    def _reason(self) -> str:
        # Some servers (Ollama, older vLLM) say `stop` after tool calls.
        if self._made_calls and self._finish in (None, "stop", "tool_calls"):
            return "tool_calls"
        if self._finish is None:
            return "stop"
        return _FINISH_REASONS.get(self._finish, "other")


# --- the provider ----------------------------------------------------------------------------


def _default_max_tokens_param(base_url: str) -> MaxTokensParam:
    # OpenAI's reasoning models refuse `max_tokens`; local servers may not know the new name.
    host = urlsplit(base_url).hostname or ""
    return "max_completion_tokens" if host.endswith("openai.com") else "max_tokens"


class OpenAIProvider(_http.HTTPProvider):
    """A model behind an OpenAI-compatible Chat Completions API, streamed.

    `base_url` defaults to `$OPENAI_BASE_URL`, else OpenAI's public API; point it at vLLM,
    Ollama (`http://localhost:11434/v1`), llama.cpp server or LM Studio for local models, where
    `api_key` may be None. Without `client`, each call opens and closes its own connection;
    pass a shared `httpx.AsyncClient` to reuse connections (its owner closes it). `timeout`
    overrides the client's timeout for each call. `max_tokens_param` names the limit's field:
    by default `max_completion_tokens` for OpenAI itself and `max_tokens` elsewhere. `headers`
    are added to each request.
    """

    label = _LABEL
    env_url = "OPENAI_BASE_URL"
    default_url = DEFAULT_OPENAI_BASE_URL
    path = "/chat/completions"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_tokens_param: MaxTokensParam | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, client=client, timeout=timeout,
                         headers=headers)
        self._max_tokens_param = max_tokens_param or _default_max_tokens_param(self.base_url)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield its events in order, ending with one `Finish`.

        Raises `ProviderError` for HTTP errors (with the server's message; retryable for 408,
        409, 429 and 5xx), for connection failures and streams cut off before the end
        (retryable), and for answers that cannot be read (malformed JSON, tool arguments that
        are not a JSON object). Closing the iterator early closes the HTTP response.
        """
        body = build_body(request, max_tokens_param=self._max_tokens_param)
        parser = ChunkParser()
        done = False
        events = self.events(body)
        async with aclosing(events):
            async for event in events:
                # After [DONE] the body is read to its end, so the connection can be reused.
                done = done or event.data.strip() == "[DONE]"
                if not done:
                    for item in parser.feed(_http.parse_json_object(_LABEL, event.data)):
                        yield item
        for item in parser.end(done=done):
            yield item

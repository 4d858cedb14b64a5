"""Anthropic Messages, streamed: text, tool use and extended thinking.

The wire format stays in this module. The request is built by pure functions and the stream is
read by `EventParser` (events in, neutral events out); `AnthropicProvider` wires them to HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_ANTHROPIC_BASE_URL", "AnthropicProvider", "EventParser"]

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_LABEL = "Anthropic API"
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
}
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
_ERROR_STATUS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429}


# --- the request -----------------------------------------------------------------------------


def _tool(spec: ToolSpec) -> dict[str, Any]:
    schema = dict(spec.parameters) or dict(_EMPTY_SCHEMA)
    return {"name": spec.name, "description": spec.description, "input_schema": schema}


def _user_blocks(message: ModelMessage) -> list[dict[str, Any]]:
    """Tool results first, as the API wants them, then text (empty text blocks are refused)."""
    results: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ToolResultContent):
            results.append({
                "type": "tool_result",
                "tool_use_id": part.call_id,
                "content": part.output,
                "is_error": part.is_error,
            })
        elif isinstance(part, TextContent):
            if part.text:
                texts.append({"type": "text", "text": part.text})
        else:
            raise InvalidArgument("a user message cannot carry a tool call")
    return results + texts


def _assistant_blocks(message: ModelMessage) -> list[dict[str, Any]]:
    """Signed thinking first (returned unchanged, as the API requires), then text and calls.

    Thinking without a signature cannot be sent back, so it is left out."""
    blocks: list[dict[str, Any]] = []
    if message.reasoning_signature:
        blocks.append({
            "type": "thinking",
            "thinking": message.reasoning,
            "signature": message.reasoning_signature,
        })
    for part in message.content:
        if isinstance(part, ToolCall):
            blocks.append({
                "type": "tool_use", "id": part.id, "name": part.name, "input": dict(part.input)
            })
        elif isinstance(part, TextContent):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        else:
            raise InvalidArgument("an assistant message cannot carry a tool result")
    return blocks


def wire_messages(messages: tuple[ModelMessage, ...]) -> list[dict[str, Any]]:
    """The Messages API `messages` for a neutral history; messages left empty are dropped."""
    wire: list[dict[str, Any]] = []
    for message in messages:
        blocks = _user_blocks(message) if message.role == "user" else _assistant_blocks(message)
        if blocks:
            wire.append({"role": message.role, "content": blocks})
    return wire


def build_body(request: ModelRequest) -> dict[str, Any]:
    """The JSON body of a streaming Messages call. `request.options` are merged in last, at
    the top level: `{"thinking": {"budget_tokens": 2048}}` turns extended thinking on (the
    `"type": "enabled"` is added when missing); streaming cannot be turned off."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": wire_messages(request.messages),
    }
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = [_tool(spec) for spec in request.tools]
    body.update(request.options)
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and "type" not in thinking:
        body["thinking"] = {"type": "enabled", **thinking}
    body["stream"] = True
    return body


# --- the stream ------------------------------------------------------------------------------


@dataclass(slots=True)
class _ToolBlock:
    id: str
    name: str
    initial: Mapping[str, Any]
    fragments: list[str] = field(default_factory=list)

    def complete(self) -> ToolCall:
        text = "".join(self.fragments).strip()
        if not text:
            return ToolCall(id=self.id, name=self.name, input=self.initial)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ProviderError(
                f"{_LABEL}: the input of tool call {self.name!r} is not valid JSON: {text[:200]!r}"
            ) from exc
        if not isinstance(value, dict):
            raise ProviderError(f"{_LABEL}: the input of {self.name!r} is not an object")
        return ToolCall(id=self.id, name=self.name, input=value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(slots=True)
class EventParser:
    """Reads Messages stream events into neutral events, tolerantly.

    The order is `message_start`, then for each content block `content_block_start`, deltas and
    `content_block_stop` (where a tool call, now whole, is yielded), then `message_delta` (stop
    reason, output tokens) and `message_stop`, which yields `Usage` and `Finish`. `ping` and
    unknown events are skipped; an `error` event raises `ProviderError`.
    """

    _tools: dict[int, _ToolBlock] = field(default_factory=dict)
    _usage: dict[str, int] = field(default_factory=dict)
    _stop_reason: str | None = None
    finished: bool = False
    """Set once `message_stop` was read."""

    def feed(self, event: Mapping[str, Any]) -> list[ModelEvent]:
        """The neutral events that one stream event carries."""
        kind = event.get("type")
        if kind == "error":
            raise self._error(event)
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, Mapping):
                self._add_usage(message.get("usage"))
        elif kind == "content_block_start":
            return self._block_start(event)
        elif kind == "content_block_delta":
            return self._block_delta(event)
        elif kind == "content_block_stop":
            tool = self._tools.pop(_int(event.get("index")), None)
            return [tool.complete()] if tool is not None else []
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            self._add_usage(event.get("usage"))
        elif kind == "message_stop":
            self._stop_reason = self._stop_reason or "end_turn"
            return self.end()
        return []

    def _error(self, event: Mapping[str, Any]) -> ProviderError:
        error = _http.error_from_event(_LABEL, event)
        raw = event.get("error")
        kind = raw.get("type") if isinstance(raw, Mapping) else None
        error.status = error.status or _ERROR_STATUS.get(str(kind))
        return error

    def _add_usage(self, raw: object) -> None:
        # message_delta's counts are cumulative, and may repeat earlier ones as 0.
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                self._usage[key] = max(self._usage.get(key, 0), _int(value))

    def _block_start(self, event: Mapping[str, Any]) -> list[ModelEvent]:
        block = event.get("content_block")
        if not isinstance(block, Mapping):
            return []
        kind = block.get("type")
        if kind == "tool_use":
            initial = block.get("input")
            self._tools[_int(event.get("index"))] = _ToolBlock(
                id=_text(block.get("id")),
                name=_text(block.get("name")),
                initial=initial if isinstance(initial, Mapping) else {},
            )
        elif kind == "text" and _text(block.get("text")):
            return [TextDelta(block["text"])]
        elif kind == "thinking" and _text(block.get("thinking")):
            return [ReasoningDelta(block["thinking"])]
        return []  # redacted_thinking and server-side blocks carry nothing to show

    def _block_delta(self, event: Mapping[str, Any]) -> list[ModelEvent]:
        delta = event.get("delta")
        if not isinstance(delta, Mapping):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and _text(delta.get("text")):
            return [TextDelta(delta["text"])]
        if kind == "thinking_delta" and _text(delta.get("thinking")):
            return [ReasoningDelta(delta["thinking"])]
        if kind == "signature_delta" and _text(delta.get("signature")):
            return [ReasoningDelta("", signature=delta["signature"])]
        if kind == "input_json_delta":
            tool = self._tools.get(_int(event.get("index")))
            if tool is not None:
                tool.fragments.append(_text(delta.get("partial_json")))
        return []

    def end(self) -> list[ModelEvent]:
        """The closing events: calls whose block never stopped, `Usage`, then `Finish`.

        Raises a retryable `ProviderError` when the stream ended before any stop reason.
        """
        if self._stop_reason is None and not self.finished:
            raise ProviderError(
                f"{_LABEL} closed the stream before the answer was complete", retryable=True
            )
        if self.finished:
            return []
        self.finished = True
        events: list[ModelEvent] = [self._tools[key].complete() for key in sorted(self._tools)]
        self._tools.clear()
        usage = self._usage
        events.append(Usage(
            input=usage.get("input_tokens", 0),
            output=usage.get("output_tokens", 0),
            cache_read=usage.get("cache_read_input_tokens", 0),
            cache_write=usage.get("cache_creation_input_tokens", 0),
        ))
        events.append(Finish(_STOP_REASONS.get(self._stop_reason or "end_turn", "other")))
        return events


# --- the provider ----------------------------------------------------------------------------


class AnthropicProvider(_http.HTTPProvider):
    """A Claude model behind the Anthropic Messages API, streamed.

    `base_url` defaults to `$ANTHROPIC_BASE_URL`, else Anthropic's public API; requests go to
    `{base_url}/v1/messages`. Without `client`, each call opens and closes its own connection;
    pass a shared `httpx.AsyncClient` to reuse connections (its owner closes it). `timeout`
    overrides the client's timeout for each call. `headers` are added to each request (for
    example `anthropic-beta`).
    """

    label = _LABEL
    env_url = "ANTHROPIC_BASE_URL"
    default_url = DEFAULT_ANTHROPIC_BASE_URL
    path = "/v1/messages"

    def _request_headers(self) -> dict[str, str]:
        headers = {
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
            **self._headers,
        }
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield its events in order, ending with one `Finish`.

        Thinking arrives as `ReasoningDelta`s; the block's signature comes on a delta of its
        own (empty text, `signature` set) before the block ends. Raises `ProviderError` for
        HTTP errors (with the API's message; retryable for 408, 409, 429 and 5xx, 529
        overloaded included), for `error` events (retryable when overloaded or an API error),
        for connection failures and streams cut off before the end (retryable), and for
        answers that cannot be read. Closing the iterator early closes the HTTP response.
        """
        parser = EventParser()
        events = self.events(build_body(request))
        async with aclosing(events):
            async for event in events:
                if parser.finished:
                    continue  # read to the end, so the connection can be reused
                payload = _http.parse_json_object(_LABEL, event.data)
                payload.setdefault("type", event.event)
                for item in parser.feed(payload):
                    yield item
        for item in parser.end():
            yield item

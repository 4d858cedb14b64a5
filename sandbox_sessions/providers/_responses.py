"""OpenAI's Responses API, streamed: `POST {base_url}/responses` with `stream: true`.

The wire format stays in this module, read from the types of openai/openai-python
(`src/openai/types/responses/`: `response_create_params.py`, `easy_input_message_param.py`,
`response_function_tool_call_param.py`, `response_input_item_param.py` (`FunctionCallOutput`),
`function_tool_param.py`, `response_stream_event.py` and the event types it unites,
`response_usage.py`, `response.py`), and checked against llama.cpp's server (`/v1/responses`).

The request is built by pure functions and the stream is read by `ResponseEventParser` (events
in, neutral events out); `ResponsesProvider` only wires them to HTTP. The requests are
stateless (`store: false`): the whole history is sent each time, as for Chat Completions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import InvalidArgument
from . import _http
from ._openai import DEFAULT_OPENAI_BASE_URL
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

__all__ = ["ResponseEventParser", "ResponsesProvider", "build_body"]

_LABEL = "OpenAI Responses API"
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
# `ResponseError.code` and the `error` event's `code` (response_error.py): the retryable ones,
# and the HTTP status each stands for.
_ERROR_STATUS = {"server_error": 500, "rate_limit_exceeded": 429, "rate_limit_error": 429}
_RETRYABLE_CODES = frozenset({*_ERROR_STATUS, "overloaded_error", "timeout_error", "api_error"})
# `IncompleteDetails.reason` (response.py).
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "other"}
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


# --- the request -----------------------------------------------------------------------------


def _tool(spec: ToolSpec) -> dict[str, Any]:
    parameters = dict(spec.parameters) or dict(_EMPTY_SCHEMA)
    # `strict: false`: our schemas do not meet strict mode's rules (every property required,
    # no additional properties), and OpenAI defaults to strict when it is left out.
    return {
        "type": "function",
        "name": spec.name,
        "description": spec.description,
        "parameters": parameters,
        "strict": False,
    }


def _message(role: str, kind: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _user_items(message: ModelMessage) -> list[dict[str, Any]]:
    """Tool results first (each a `function_call_output`, right after the calls), then text."""
    items: list[dict[str, Any]] = []
    texts: list[str] = []
    for part in message.content:
        if isinstance(part, ToolResultContent):
            # The item has no error flag: the output's own words say it failed.
            items.append(
                {"type": "function_call_output", "call_id": part.call_id, "output": part.output}
            )
        elif isinstance(part, TextContent):
            texts.append(part.text)
        else:
            raise InvalidArgument("a user message cannot carry a tool call")
    if texts or not items:
        items.append(_message("user", "input_text", "\n\n".join(texts)))
    return items


def _assistant_items(message: ModelMessage) -> list[dict[str, Any]]:
    """The text as one `message` item (`output_text`), then each call as a `function_call`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ToolCall):
            arguments = json.dumps(dict(part.input), ensure_ascii=False)
            calls.append(
                {"type": "function_call", "call_id": part.id, "name": part.name,
                 "arguments": arguments}
            )
        elif isinstance(part, TextContent):
            texts.append(part.text)
        else:
            raise InvalidArgument("an assistant message cannot carry a tool result")
    text = "".join(texts)
    head = [_message("assistant", "output_text", text)] if text or not calls else []
    return head + calls


def wire_input(messages: tuple[ModelMessage, ...]) -> list[dict[str, Any]]:
    """The `input` items for a neutral history (reasoning is not sent back: see decisions)."""
    items: list[dict[str, Any]] = []
    for message in messages:
        items.extend(_user_items(message) if message.role == "user" else _assistant_items(message))
    return items


def build_body(request: ModelRequest) -> dict[str, Any]:
    """The JSON body of a streaming, stateless response. `request.options` are merged in last,
    at the top level (`temperature`, `reasoning`, `include`, ...); streaming cannot be turned
    off."""
    body: dict[str, Any] = {
        "model": request.model,
        "input": wire_input(request.messages),
        "max_output_tokens": request.max_tokens,
        "store": False,
    }
    if request.system:
        body["instructions"] = request.system
    if request.tools:
        body["tools"] = [_tool(spec) for spec in request.tools]
    body.update(request.options)
    body["stream"] = True
    return body


# --- the stream ------------------------------------------------------------------------------


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _usage(raw: Mapping[str, Any]) -> Usage:
    # `input_tokens` counts the cached ones too (response_usage.py), as in Chat Completions.
    cached = _int(_mapping(raw.get("input_tokens_details")).get("cached_tokens"))
    return Usage(
        input=max(_int(raw.get("input_tokens")) - cached, 0),
        output=_int(raw.get("output_tokens")),
        reasoning=_int(_mapping(raw.get("output_tokens_details")).get("reasoning_tokens")),
        cache_read=cached,
    )


def _error(message: object, code: object, *, failed: str) -> ProviderError:
    kind = str(code) if code else None
    shown = str(message) if message else "unknown error"
    detail = f"{shown} ({kind})" if kind and kind != shown else shown
    return ProviderError(
        f"{_LABEL} {failed}: {detail}",
        status=_ERROR_STATUS.get(kind or ""),
        retryable=kind in _RETRYABLE_CODES,
    )


def _arguments(name: str, text: str) -> Mapping[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ProviderError(
            f"{_LABEL}: the arguments of tool call {name!r} are not valid JSON: {text[:200]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise ProviderError(f"{_LABEL}: the arguments of {name!r} are not an object")
    return value


@dataclass(slots=True)
class _Call:
    call_id: str = ""
    name: str = ""
    fragments: list[str] = field(default_factory=list)
    whole: str | None = None
    """The arguments as `function_call_arguments.done` or the finished item gives them."""

    def take(self, item: Mapping[str, Any]) -> None:
        self.call_id = self.call_id or str(item.get("call_id") or "")
        self.name = self.name or str(item.get("name") or "")
        arguments = item.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.whole = arguments

    def complete(self) -> ToolCall:
        if not self.name:
            raise ProviderError(f"{_LABEL} sent a function call without a name")
        text = self.whole if self.whole is not None else "".join(self.fragments)
        call_id = self.call_id or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCall(id=call_id, name=self.name, input=_arguments(self.name, text))


@dataclass(slots=True)
class ResponseEventParser:
    """Reads Responses API stream events into neutral events, tolerantly.

    Text and reasoning come from their `.delta` events. A function call is gathered from
    `output_item.added`, its `function_call_arguments.delta`/`.done` events (keyed by `item_id`,
    else `output_index`) and `output_item.done`, and yielded whole at `output_item.done` (or at
    the end, for a server that never sends it). A message item whose text came with no delta
    is yielded whole at its `output_item.done`. Usage and `Finish` come from the terminal event
    (`response.completed` or `response.incomplete`); `response.failed` and `error` raise
    `ProviderError`. Unknown events are skipped.
    """

    _calls: dict[str, _Call] = field(default_factory=dict)
    _streamed: set[str] = field(default_factory=set)
    """Items whose text or reasoning arrived in deltas (by item id)."""
    _made_calls: bool = False
    _terminal: Mapping[str, Any] | None = None
    _terminal_type: str = ""

    @property
    def finished(self) -> bool:
        """Whether the terminal event was read (what follows it is ignored)."""
        return self._terminal is not None

    def feed(self, event: Mapping[str, Any]) -> list[ModelEvent]:
        """The events that one stream event carries; raises `ProviderError` on a failure."""
        kind = str(event.get("type") or "")
        if kind == "error":
            raise self._stream_error(event)
        if kind == "response.failed":
            failure = _mapping(_mapping(event.get("response")).get("error"))
            raise _error(failure.get("message"), failure.get("code"), failed="failed")
        if kind in _TERMINAL:
            self._terminal, self._terminal_type = _mapping(event.get("response")), kind
            return []
        return self._item_event(kind, event)

    def _item_event(self, kind: str, event: Mapping[str, Any]) -> list[ModelEvent]:
        delta = event.get("delta")
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            return self._delta(event, TextDelta)
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return self._delta(event, ReasoningDelta)
        if kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            self._call(event).fragments.append(delta)
        elif kind == "response.function_call_arguments.done":
            self._call(event).take(event)
        elif kind == "response.output_item.added":
            item = _mapping(event.get("item"))
            if item.get("type") == "function_call":
                self._call(event, item).take(item)
        elif kind == "response.output_item.done":
            return self._item_done(event)
        return []

    def _delta(
        self, event: Mapping[str, Any], make: type[TextDelta] | type[ReasoningDelta]
    ) -> list[ModelEvent]:
        self._streamed.add(str(event.get("item_id") or ""))
        delta = event.get("delta")
        return [make(delta)] if isinstance(delta, str) and delta else []

    @staticmethod
    def _key(event: Mapping[str, Any], item: Mapping[str, Any] | None = None) -> str:
        item_id = event.get("item_id") or (item or {}).get("id")
        return str(item_id) if item_id else f"#{event.get('output_index')}"

    def _call(self, event: Mapping[str, Any], item: Mapping[str, Any] | None = None) -> _Call:
        return self._calls.setdefault(self._key(event, item), _Call())

    def _item_done(self, event: Mapping[str, Any]) -> list[ModelEvent]:
        item = _mapping(event.get("item"))
        if item.get("type") == "function_call":
            call = self._calls.pop(self._key(event, item), None) or _Call()
            call.take(item)
            self._made_calls = True
            return [call.complete()]
        # A delta without an item id could be this item's: then it is taken as streamed.
        streamed = self._streamed & {str(item.get("id") or ""), ""}
        if item.get("type") == "message" and not streamed:
            texts = [part.get("text") or part.get("refusal") for part in item.get("content") or []
                     if isinstance(part, Mapping)]
            return [TextDelta(text) for text in texts if isinstance(text, str) and text]
        return []

    @staticmethod
    def _stream_error(event: Mapping[str, Any]) -> ProviderError:
        # The SDK's `ResponseErrorEvent` has `code` and `message` at the top; some servers
        # nest them in `error`, as in an HTTP error body.
        nested = _mapping(event.get("error"))
        message = event.get("message") or nested.get("message")
        code = event.get("code") or nested.get("code") or nested.get("type")
        return _error(message, code, failed="failed mid-stream")

    def end(self) -> list[ModelEvent]:
        """The closing events: calls never closed by their item, usage, then `Finish`.

        A stream that ended without `response.completed`, `.incomplete` or `.failed` was cut
        off: that raises a retryable `ProviderError`.
        """
        if self._terminal is None:
            raise ProviderError(
                f"{_LABEL} closed the stream before the answer was complete", retryable=True
            )
        events: list[ModelEvent] = [call.complete() for call in self._calls.values()]
        self._made_calls = self._made_calls or bool(events)
        self._calls.clear()
        usage = self._terminal.get("usage")
        if isinstance(usage, Mapping):
            events.append(_usage(usage))
        events.append(Finish(self._reason()))
        return events

    def _reason(self) -> str:
        if self._terminal_type == "response.incomplete":
            details = _mapping((self._terminal or {}).get("incomplete_details"))
            return _INCOMPLETE_REASONS.get(str(details.get("reason")), "other")
        return "tool_calls" if self._made_calls else "stop"


# --- the provider ----------------------------------------------------------------------------


class ResponsesProvider(_http.HTTPProvider):
    """A model behind OpenAI's Responses API (`POST {base_url}/responses`), streamed.

    `base_url` defaults to `$OPENAI_BASE_URL`, else OpenAI's public API; any server speaking
    the Responses API works (llama.cpp's server does), where `api_key` may be None. Without
    `client`, each call opens and closes its own connection; pass a shared `httpx.AsyncClient`
    to reuse connections (its owner closes it). `timeout` overrides the client's timeout for
    each call. `headers` are added to each request.
    """

    label = _LABEL
    env_url = "OPENAI_BASE_URL"
    default_url = DEFAULT_OPENAI_BASE_URL
    path = "/responses"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield its events in order, ending with one `Finish`.

        Raises `ProviderError` for HTTP errors (with the server's message; retryable for 408,
        409, 429 and 5xx), for `response.failed` and `error` events (retryable for server
        errors and rate limits), for connection failures and streams cut off before their
        terminal event (retryable), and for answers that cannot be read (malformed JSON, tool
        arguments that are not a JSON object). Closing the iterator early closes the response.
        """
        body = build_body(request)
        parser = ResponseEventParser()
        events = self.events(body)
        async with aclosing(events):
            async for event in events:
                data = event.data.strip()
                # Not part of the Responses API, but compatible servers may close with it.
                if data == "[DONE]" or parser.finished:
                    continue
                payload = _http.parse_json_object(_LABEL, data)
                payload.setdefault("type", event.event)  # the SSE name, if the data lacks it
                for item in parser.feed(payload):
                    yield item
        for item in parser.end():
            yield item

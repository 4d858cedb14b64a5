"""Token usage read from model responses as the proxy passes them on (`_proxy.py`).

Read tolerantly: whatever the response holds (SSE or one JSON body, Anthropic Messages,
OpenAI Chat Completions or Responses), the reader takes the usage it recognises and ignores
everything else. It never changes what the client gets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._types import Tokens

__all__ = ["UsageReader"]

MAX_EVENT = 1 << 20
"""Bytes of one SSE event or JSON body kept for reading usage; longer ones are skipped."""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def anthropic_tokens(usage: Mapping[str, Any]) -> Tokens:
    return Tokens(input=_int(usage.get("input_tokens")), output=_int(usage.get("output_tokens")),
                  cache_read=_int(usage.get("cache_read_input_tokens")),
                  cache_write=_int(usage.get("cache_creation_input_tokens")))


def chat_tokens(usage: Mapping[str, Any]) -> Tokens:
    # OpenAI counts cached tokens inside prompt_tokens.
    cached = _int(_map(usage.get("prompt_tokens_details")).get("cached_tokens"))
    return Tokens(input=max(_int(usage.get("prompt_tokens")) - cached, 0),
                  output=_int(usage.get("completion_tokens")),
                  reasoning=_int(_map(usage.get("completion_tokens_details")).get(
                      "reasoning_tokens")),
                  cache_read=cached)


def responses_tokens(usage: Mapping[str, Any]) -> Tokens:
    cached = _int(_map(usage.get("input_tokens_details")).get("cached_tokens"))
    return Tokens(input=max(_int(usage.get("input_tokens")) - cached, 0),
                  output=_int(usage.get("output_tokens")),
                  reasoning=_int(_map(usage.get("output_tokens_details")).get(
                      "reasoning_tokens")),
                  cache_read=cached)


def _largest(a: Tokens, b: Tokens) -> Tokens:
    """Field by field: Anthropic's later counts are cumulative and may repeat earlier ones as 0."""
    return Tokens(**{name: max(getattr(a, name), getattr(b, name)) for name in Tokens.model_fields})


class UsageReader:
    """Fed a response's body as it passes; `tokens` is its usage (None if it named none)."""

    def __init__(self, content_type: str) -> None:
        self._sse = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self._buffer = bytearray()
        self._skipping = False
        self.tokens: Tokens | None = None

    def feed(self, data: bytes) -> None:
        if not self._sse:
            if len(self._buffer) + len(data) <= MAX_EVENT:
                self._buffer += data
            else:
                self._skipping = True
            return
        self._buffer += data
        while True:
            end, size = _event_end(self._buffer)
            if end < 0:
                break
            event = bytes(self._buffer[:end])
            del self._buffer[: end + size]
            if self._skipping:
                self._skipping = False  # the tail of an event too long to read
                continue
            self._event(event)
        if len(self._buffer) > MAX_EVENT:
            self._buffer.clear()
            self._skipping = True

    def finish(self) -> Tokens | None:
        """The usage, once the whole body was fed."""
        if not self._sse and not self._skipping:
            self._object(self._buffer)
        elif self._sse and self._buffer and not self._skipping:
            self._event(bytes(self._buffer))
        self._buffer.clear()
        return self.tokens

    def _event(self, event: bytes) -> None:
        lines = event.replace(b"\r\n", b"\n").split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines
                          if line.startswith(b"data:"))
        if data and data.strip() != b"[DONE]":
            self._object(data)

    def _object(self, raw: bytes | bytearray) -> None:
        try:
            value = json.loads(raw)
        except ValueError:
            return
        if isinstance(value, Mapping):
            found = _usage_of(value)
            if found is not None:
                anthropic, tokens = found
                if self.tokens is None:
                    self.tokens = tokens
                elif anthropic:
                    self.tokens = _largest(self.tokens, tokens)
                else:
                    self.tokens = tokens  # OpenAI sends its usage once, at the end


def _event_end(buffer: bytearray) -> tuple[int, int]:
    """Where the first complete SSE event ends (a blank line), and the separator's size."""
    found = [(buffer.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r")]
    found = [(at, size) for at, size in found if at >= 0]
    return min(found) if found else (-1, 0)


def _usage_of(value: Mapping[str, Any]) -> tuple[bool, Tokens] | None:
    """(whether Anthropic's, the tokens) of one event or body, if it carries usage."""
    kind, obj = value.get("type"), value.get("object")
    if kind == "message_start":
        usage = _map(_map(value.get("message")).get("usage"))
        return (True, anthropic_tokens(usage)) if usage else None
    if kind in ("message_delta", "message"):
        usage = _map(value.get("usage"))
        return (True, anthropic_tokens(usage)) if usage else None
    if isinstance(kind, str) and kind.startswith("response."):
        usage = _map(_map(value.get("response")).get("usage"))
        return (False, responses_tokens(usage)) if usage else None
    if obj == "response":
        usage = _map(value.get("usage"))
        return (False, responses_tokens(usage)) if usage else None
    if obj in ("chat.completion", "chat.completion.chunk"):
        usage = _map(value.get("usage"))
        return (False, chat_tokens(usage)) if usage else None
    return None

"""The `Provider` protocol: a model behind an API, streamed as neutral events.

A provider turns a `ModelRequest` (system prompt, history, tools) into an async stream of
`ModelEvent`s. Wire formats (OpenAI Chat Completions, Anthropic Messages, ...) stay private to
each provider module and are parsed tolerantly. Providers run on the host: API keys never enter
a container.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._exceptions import ProviderError

__all__ = [
    "Finish",
    "ModelEvent",
    "ModelMessage",
    "ModelRequest",
    "Provider",
    "ProviderError",
    "ReasoningDelta",
    "TextContent",
    "TextDelta",
    "ToolCall",
    "ToolResultContent",
    "ToolSpec",
    "Usage",
]


# --- the request -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextContent:
    """Text in a history entry."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: `id` is the provider's call id, `input` the parsed arguments."""

    id: str
    name: str
    input: Mapping[str, Any]
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResultContent:
    """The outcome of a tool call, sent back to the model."""

    call_id: str
    output: str
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class ModelMessage:
    """One history entry. `user` carries text and tool results; `assistant` text and calls.

    `reasoning` is the assistant's thinking, where a provider must echo it back (Anthropic
    wants signed thinking blocks returned unchanged: `reasoning_signature`).
    """

    role: Literal["user", "assistant"]
    content: tuple[TextContent | ToolCall | ToolResultContent, ...]
    reasoning: str = ""
    reasoning_signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: `parameters` is a JSON Schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call: the system prompt, the history and the tools offered."""

    model: str
    """The model's name at the provider (without the `provider/` prefix)."""
    system: str | None
    messages: tuple[ModelMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 4096
    options: Mapping[str, Any] = field(default_factory=dict)
    """Provider-specific extras (e.g. `{"thinking": {"budget_tokens": 2048}}` for Anthropic)."""


# --- the stream ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the model's answer."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning."""

    text: str
    signature: str | None = None
    """Set on the delta that carries a thinking block's signature (Anthropic)."""
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one model call, as the provider reports them (0 when it does not).

    The counts are normalized across providers so that prices apply directly: the whole prompt
    is `input + cache_read + cache_write`, and `output` already includes `reasoning`.
    """

    input: int = 0
    """Prompt tokens neither read from nor written to the cache."""
    output: int = 0
    """Generated tokens, reasoning included."""
    reasoning: int = 0
    """The part of `output` spent on reasoning, where the provider says."""
    cache_read: int = 0
    """Prompt tokens read from the provider's cache."""
    cache_write: int = 0
    """Prompt tokens written to the provider's cache (Anthropic)."""
    type: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of one model call: `reason` is `stop`, `tool_calls`, `length` or `other`."""

    reason: str
    type: Literal["finish"] = "finish"


ModelEvent = TextDelta | ReasoningDelta | ToolCall | Usage | Finish
"""What a provider yields. A complete `ToolCall` is yielded once its arguments are whole."""


class Provider(Protocol):
    """A model API. Implementations: OpenAI-compatible, Anthropic, scripted."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield its events in order, ending with one `Finish`.

        Raises `ProviderError` (with `retryable` and `status`) when the call fails. Cancelling
        the iteration closes the HTTP response. Usage, when the provider reports it, comes
        before `Finish`.
        """
        ...

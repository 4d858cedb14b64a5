"""The providers: models behind APIs, streamed as neutral events.

`Provider` is the protocol to implement for a new API. Built in: `OpenAIProvider` (OpenAI and
compatible servers, Chat Completions), `ResponsesProvider` (OpenAI's Responses API),
`AnthropicProvider` and `ScriptedProvider` (deterministic, for tests and demos).
`resolve_provider("openai/gpt-4.1")` picks one from a `provider/model` name.
"""

from ._anthropic import AnthropicProvider
from ._openai import OpenAIProvider
from ._resolve import resolve_provider
from ._responses import ResponsesProvider
from ._scripted import ScriptedProvider
from .base import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    Provider,
    ProviderError,
    ReasoningDelta,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
)

__all__ = [
    "AnthropicProvider",
    "Finish",
    "ModelEvent",
    "ModelMessage",
    "ModelRequest",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "ReasoningDelta",
    "ResponsesProvider",
    "ScriptedProvider",
    "TextContent",
    "TextDelta",
    "ToolCall",
    "ToolResultContent",
    "ToolSpec",
    "Usage",
    "resolve_provider",
]

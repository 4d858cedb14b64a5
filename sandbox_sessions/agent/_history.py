"""From stored messages to the neutral history a provider takes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from .._types import (
    AssistantMessage,
    Message,
    ReasoningPart,
    StepStartPart,
    TextPart,
    ToolPart,
    ToolState,
)
from ..providers.base import ModelMessage, TextContent, ToolCall, ToolResultContent
from ._compaction import compaction_point

__all__ = ["capped", "new_id", "to_model_messages"]


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time: `prefix_<ns hex><random hex>`."""
    return f"{prefix}_{time.time_ns():016x}{secrets.token_hex(4)}"


def capped(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


def result_of(state: ToolState, limit: int) -> tuple[str, bool]:
    """What the model is told of a call in this state, and whether it is an error."""
    if state.status == "completed":
        return capped(state.output or "", limit), bool(state.metadata.get("is_error"))
    if state.status == "error":
        return capped(state.error or "the call failed", limit), True
    return "the call was interrupted before it finished", True


class _Step:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.signature: str | None = None
        self.tools: list[ToolPart] = []

    def messages(self, limit: int) -> list[ModelMessage]:
        calls = tuple(ToolCall(id=p.call_id, name=p.tool, input=p.state.input) for p in self.tools)
        text = "".join(self.text)
        content = ((TextContent(text),) if text else ()) + calls
        if not content:
            return []
        out = [ModelMessage("assistant", content, "".join(self.reasoning), self.signature)]
        if self.tools:
            results = tuple(ToolResultContent(p.call_id, *result_of(p.state, limit))
                            for p in self.tools)
            out.append(ModelMessage("user", results))
        return out


def _assistant(message: AssistantMessage, limit: int) -> list[ModelMessage]:
    steps = [_Step()]
    for part in message.parts:
        if isinstance(part, StepStartPart):
            steps.append(_Step())
        elif isinstance(part, TextPart):
            steps[-1].text.append(part.text)
        elif isinstance(part, ReasoningPart):
            steps[-1].reasoning.append(part.text)
            steps[-1].signature = part.signature or steps[-1].signature
        elif isinstance(part, ToolPart):
            steps[-1].tools.append(part)
    return [m for step in steps for m in step.messages(limit)]


SUMMARY_HEAD = "The conversation so far, summarized:\n\n"
SUMMARY_JOIN = "\n\n---\n\n"


def to_model_messages(messages: Sequence[Message], *, limit: int) -> list[ModelMessage]:
    """The conversation as a provider sees it; tool outputs capped at `limit` characters.

    After a compaction (the last summary message with its `compaction` part), only what
    follows it is sent, the summary heading the first user message (or alone)."""
    summary = None
    point = compaction_point(messages)
    if point is not None:
        messages, summary = messages[point[0] + 1:], point[1]
    history: list[ModelMessage] = []
    for message in messages:
        if isinstance(message, AssistantMessage):
            if not message.summary:  # a summary that failed: nothing of it is sent
                history.extend(_assistant(message, limit))
            continue
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        if summary is not None:
            text, summary = f"{SUMMARY_HEAD}{summary}{SUMMARY_JOIN}{text}", None
        history.append(ModelMessage("user", (TextContent(text),)))
    if summary is not None:
        history.append(ModelMessage("user", (TextContent(SUMMARY_HEAD + summary),)))
    return history

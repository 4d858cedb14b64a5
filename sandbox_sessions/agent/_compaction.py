"""Compaction: a summary of the conversation replaces the history before it.

`summarize()` runs a turn of its own (no user message, no tools, one model call) whose
assistant message is marked `summary`; when it completes, a `compaction` part holds the
summary. From then on the model is sent the summary, at the head of the first user message
after it, and what follows, not the history before it (which stays in the store). The
summary request itself sends tool outputs cut to `PRUNED_OUTPUT` characters: the summary
needs what was done, not every byte a command printed.

A turn starts with a compaction when its session's last answer had a prompt (plus output)
of `COMPACT_AT` or more of the model's context window: `AgentConfig.context_limit`, else
the window of a model known here (`MODEL_CONTEXT`), else never.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._types import AgentConfig, AssistantMessage, CompactionPart, Message, StepFinishPart

__all__ = [
    "COMPACT_AT",
    "MODEL_CONTEXT",
    "PRUNED_OUTPUT",
    "SUMMARY_PROMPT",
    "SUMMARY_SYSTEM",
    "compaction_point",
    "context_limit",
    "needs_compaction",
]

COMPACT_AT = 0.8
PRUNED_OUTPUT = 2_000
SUMMARY_SYSTEM = (
    "You summarize a coding agent's conversation so that the agent can go on from the summary "
    "alone. Be specific and complete; do not call tools."
)
SUMMARY_PROMPT = (
    "Summarize the conversation so far for continuing it: the goal; the decisions made and "
    "why; the files created, changed or deleted; the current state (what works, what fails); "
    "and the next steps."
)
MODEL_CONTEXT: dict[str, int] = {
    "gpt-4.1": 1_047_576, "gpt-4.1-mini": 1_047_576, "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000, "o3": 200_000, "o4-mini": 200_000, "gpt-5": 400_000,
    "claude-sonnet-4-5": 200_000, "claude-opus-4-1": 200_000, "claude-haiku-4-5": 200_000,
}
"""Context windows of models known here, in tokens, by the model's name (without the
provider). A name not here has no automatic compaction unless `context_limit` is set."""


def context_limit(config: AgentConfig, model_name: str) -> int | None:
    """The context window compaction is judged against, or None."""
    return config.context_limit or MODEL_CONTEXT.get(model_name)


def compaction_point(messages: Sequence[Message]) -> tuple[int, str] | None:
    """The index of the last completed summary message and its summary, or None."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AssistantMessage) and message.summary:
            for part in message.parts:
                if isinstance(part, CompactionPart):
                    return index, part.summary
    return None


def needs_compaction(messages: Sequence[Message], limit: int | None) -> bool:
    """Whether the last answer since the last summary used `COMPACT_AT` of `limit`."""
    if limit is None:
        return False
    point = compaction_point(messages)
    start = 0 if point is None else point[0] + 1
    for message in reversed(messages[start:]):
        if isinstance(message, AssistantMessage) and not message.summary:
            return _last_call(message) >= COMPACT_AT * limit
    return False


def _last_call(message: AssistantMessage) -> int:
    """The tokens of the message's last model call: its prompt, which held the whole
    history, and its output."""
    for part in reversed(message.parts):
        if isinstance(part, StepFinishPart):
            return part.tokens.total
    return message.tokens.total

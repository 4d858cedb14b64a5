"""Messages, parts, metrics and todos, as functions of a session's event log.

`project()` and `todos()` are the pure reference: a whole log in, the state out. A `Projector`
gives the same state one event at a time, so that a session's reads and turns cost what is new
since the last one, not the length of its log; it keeps each built message until an event for
that message arrives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .._types import (
    AssistantMessage,
    Event,
    Message,
    Metrics,
    Part,
    ReasoningPart,
    RevertInfo,
    SendResult,
    StepFinishPart,
    StepStartPart,
    TextPart,
    Todo,
    Tokens,
    ToolPart,
    TurnEndEvent,
)

__all__ = ["Projector", "Reverts", "final_text", "metrics", "pending_revert", "project",
           "send_result", "todos"]


class _Text:
    """A text or reasoning part being built from deltas (joined once, at the end)."""

    def __init__(self, kind: str, part_id: str) -> None:
        self.kind, self.part_id = kind, part_id
        self.chunks: list[str] = []
        self.signature: str | None = None

    @classmethod
    def following(cls, kind: str, part_id: str, built: Part | None) -> _Text:
        """A part built from deltas, going on from `built` where that is one of its kind
        (a `reset` event's message whose text is still streaming)."""
        text = cls(kind, part_id)
        if isinstance(built, TextPart | ReasoningPart) and built.type == kind:
            text.chunks.append(built.text)
            text.signature = built.signature if isinstance(built, ReasoningPart) else None
        return text

    def build(self) -> Part:
        text = "".join(self.chunks)
        self.chunks = [text]  # joined once: the next build starts from it
        if self.kind == "text":
            return TextPart(id=self.part_id, text=text)
        return ReasoningPart(id=self.part_id, text=text, signature=self.signature)


class _Draft:
    def __init__(self, message: Message) -> None:
        self.message = message
        self.parts: dict[str, Part | _Text] = {part.id: part for part in message.parts}

    def delta(self, kind: str, part_id: str, text: str, signature: str | None = None) -> None:
        part = self.parts.get(part_id)
        if not isinstance(part, _Text):
            part = self.parts[part_id] = _Text.following(kind, part_id, part)
        part.chunks.append(text)
        part.signature = signature or part.signature

    def apply(self, event: Event) -> None:
        """Take an event of this message into it (see `message_of`); others change nothing."""
        match event.type:
            case "message-updated":
                self.message = event.message
            case "text-delta" | "reasoning-delta":
                kind = "text" if event.type == "text-delta" else "reasoning"
                self.delta(kind, event.part_id, event.delta, getattr(event, "signature", None))
            case "tool-start" | "tool-running" | "tool-end" | "step-start" | "step-finish" \
                    | "retry" | "compaction" | "subtask" | "snapshot" | "patch":
                self.parts[event.part.id] = event.part
            case _:
                pass

    def build(self) -> Message:
        parts = [p.build() if isinstance(p, _Text) else p for p in self.parts.values()]
        return self.message.model_copy(update={"parts": parts})


def message_of(event: Event) -> str | None:
    """The id of the message an event changes, if it changes one."""
    if event.type == "message-updated":
        return event.message.id
    message_id = getattr(event, "message_id", None)
    return message_id if isinstance(message_id, str) else None


class Reverts:
    """Which messages reverts hide. A revert hides its message and every later one; it stays
    pending (`unreverted` shows them again) until a new message is created, which makes it
    final. A revert while one is pending hides more, and keeps the first one's `before`. An
    import's `messages-hidden` hides its messages as a final revert would."""

    def __init__(self) -> None:
        self.hidden: set[str] = set()
        self.pending: RevertInfo | None = None
        self._pending_ids: list[str] = []

    def apply(self, event: Event, order: Iterable[str]) -> None:
        """Take `event` into account; `order` is every message id so far, oldest first."""
        if event.type == "reverted":
            shown = [i for i in order if i not in self.hidden and i not in self._pending_ids]
            if event.revert.message_id in shown:
                self._pending_ids += shown[shown.index(event.revert.message_id):]
                before = self.pending.before if self.pending else event.revert.before
                self.pending = event.revert.model_copy(update={"before": before})
        elif event.type == "unreverted":
            self.pending, self._pending_ids = None, []
        elif event.type == "messages-hidden":
            self.hidden.update(event.message_ids)
        elif event.type == "message-created" and self.pending is not None:
            self.hidden.update(self._pending_ids)
            self.pending, self._pending_ids = None, []

    def shows(self, message_id: str) -> bool:
        return message_id not in self.hidden and message_id not in self._pending_ids


def pending_revert(events: Iterable[Event]) -> RevertInfo | None:
    """The revert that `unrevert()` would undo, if any."""
    reverts, order = Reverts(), list[str]()
    for event in events:
        reverts.apply(event, order)
        if event.type == "message-created":
            order.append(event.message.id)
    return reverts.pending


def project(events: Iterable[Event], *, hidden: bool = False) -> list[Message]:
    """The session's messages with their parts, in the order they were created, without
    those a revert hides (unless `hidden`). Events of a message created before the first
    event given (`messages(after=...)`) are left out."""
    drafts: dict[str, _Draft] = {}
    reverts = Reverts()
    for event in events:
        reverts.apply(event, drafts)
        if event.type == "message-created":
            drafts[event.message.id] = _Draft(event.message)
            continue
        if event.type == "reset":
            drafts = {message.id: _Draft(message) for message in event.messages}
            continue
        draft = drafts.get(message_of(event) or "")
        if draft is not None:
            draft.apply(event)
    return [draft.build() for draft in drafts.values() if hidden or reverts.shows(
        draft.message.id)]


def final_text(message: Message) -> str:
    """The text parts after the message's last step start: the answer of its final step."""
    start = 0
    for index, part in enumerate(message.parts):
        if isinstance(part, StepStartPart):
            start = index
    return "".join(p.text for p in message.parts[start:] if isinstance(p, TextPart))


def send_result(messages: Sequence[Message], end: TurnEndEvent) -> SendResult:
    """The outcome of the turn that `end` closed."""
    message = next(m for m in messages if m.id == end.message_id)
    assert isinstance(message, AssistantMessage)
    return SendResult(message_id=message.id, text=final_text(message), parts=message.parts,
                      tokens=message.tokens, cost=message.cost, reason=end.reason,
                      error=end.error)


def metrics(messages: Sequence[Message]) -> Metrics:
    """Counts, tool usage, tokens and cost over every message."""
    tools: Counter[str] = Counter()
    steps, tokens, cost = 0, Tokens(), 0.0
    for message in messages:
        if isinstance(message, AssistantMessage):
            tokens, cost = tokens + message.tokens, cost + message.cost
        for part in message.parts:
            if isinstance(part, ToolPart):
                tools[part.tool] += 1
            elif isinstance(part, StepFinishPart):
                steps += 1
    return Metrics(messages=len(messages), steps=steps, tool_calls=sum(tools.values()),
                   tool_usage=dict(tools), tokens=tokens, cost=cost)


def todos(events: Iterable[Event]) -> list[Todo]:
    """The todo list as the last `todo-updated` event left it."""
    current: list[Todo] = []
    for event in events:
        if event.type == "todo-updated" or event.type == "reset":
            current = list(event.todos)
    return current


class Projector:
    """A session's messages and todos, kept up to date by `apply()`, one event at a time, in
    seq order: after any events, `messages()` is `project()` of them and `todos()` is
    `todos()` of them.

    A message is built once and kept until an event for it arrives; text deltas are joined
    when the message is next read, not on every read.
    """

    def __init__(self) -> None:
        self.seq = 0
        """The seq of the last event applied (0: none)."""
        self._drafts: dict[str, _Draft] = {}
        self._created: dict[str, int] = {}
        self._built: dict[str, Message] = {}
        self._todos: list[Todo] = []
        self._reverts = Reverts()

    def apply(self, events: Iterable[Event]) -> None:
        """Take `events` into the state; those at or before `seq` are already in it."""
        for event in events:
            if event.seq > self.seq:
                self._apply(event)
                self.seq = event.seq

    def messages(self, *, after: int = 0, hidden: bool = False) -> list[Message]:
        """The messages with their parts, in the order they were created, without those a
        revert hides (unless `hidden`); with `after`, only those created after that seq (as
        `project()` of the events after it). Each is a copy down to its list of parts (the
        parts themselves are frozen)."""
        return [self._message(message_id) for message_id, created in self._created.items()
                if created > after and (hidden or self._reverts.shows(message_id))]

    def pending_revert(self) -> RevertInfo | None:
        """The revert that `unrevert()` would undo, if any."""
        return self._reverts.pending

    def todos(self) -> list[Todo]:
        """The todo list as the last `todo-updated` event left it."""
        return list(self._todos)

    def _message(self, message_id: str) -> Message:
        built = self._built.get(message_id)
        if built is None:
            built = self._built[message_id] = self._drafts[message_id].build()
        return built.model_copy(update={"parts": list(built.parts)})

    def _apply(self, event: Event) -> None:
        self._reverts.apply(event, self._created)
        match event.type:
            case "message-created":
                self._drafts[event.message.id] = _Draft(event.message)
                self._created[event.message.id] = event.seq
                self._built.pop(event.message.id, None)
            case "reset":
                self._reset(event.seq, event.messages, event.todos)
            case "todo-updated":
                self._todos = list(event.todos)
            case _:
                self._update(event)

    def _update(self, event: Event) -> None:
        message_id = message_of(event)
        if message_id is None or message_id not in self._drafts:
            return
        self._built.pop(message_id, None)
        self._drafts[message_id].apply(event)

    def _reset(self, seq: int, messages: Sequence[Message], todos: Sequence[Todo]) -> None:
        """The state of a `reset` event: its messages count as created at its seq."""
        self._drafts = {message.id: _Draft(message) for message in messages}
        self._created = dict.fromkeys(self._drafts, seq)
        self._built = {}
        self._todos = list(todos)


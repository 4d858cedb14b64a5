"""The permission broker: tool calls that wait for a human (or a policy) to answer.

`ask` emits `permission-asked` (stored before anyone can see it), then waits for `reply`, or
for the timeout. `reject` answers the request and every other pending request of the session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from .._exceptions import InvalidArgument, PermissionNotFound
from .._types import (
    AgentConfig,
    PermissionAskedEvent,
    PermissionRepliedEvent,
    PermissionReply,
    PermissionRequest,
)
from ..service._eventlog import EventLog

__all__ = ["Answer", "PermissionBroker"]

REPLIES = ("once", "always", "reject")


@dataclass(frozen=True, slots=True)
class Answer:
    """How a request was answered. `message` is guidance for the model on a reject."""

    reply: PermissionReply
    message: str | None = None
    timed_out: bool = False


class _Pending:
    def __init__(self, request: PermissionRequest) -> None:
        self.request = request
        self.answered = anyio.Event()
        self.answer: Answer | None = None


class PermissionBroker:
    """Pending permission requests of every session."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        self._pending: dict[str, _Pending] = {}

    async def ask(self, request: PermissionRequest, config: AgentConfig) -> Answer:
        """Publish `request` and wait for its answer (or the configured timeout policy)."""
        pending = self._pending[request.id] = _Pending(request)
        try:
            self._events.emit(request.session_id, PermissionAskedEvent, request=request)
            await self._events.flush()
            with anyio.move_on_after(config.permission_timeout):
                await pending.answered.wait()
            if pending.answer is None:
                reply: PermissionReply = "once" if config.on_timeout == "allow" else "reject"
                pending.answer = Answer(reply, "no reply before the permission timeout",
                                        timed_out=True)
                self._events.emit(request.session_id, PermissionRepliedEvent,
                                  request_id=request.id, reply="timeout",
                                  message=f"timed out: {config.on_timeout}")
            return pending.answer
        finally:
            self._pending.pop(request.id, None)

    def reply(
        self, session_id: str, request_id: str, reply: str, message: str | None = None
    ) -> None:
        """Answer a pending request. `reject` also rejects every other pending request of the
        session. An unknown or already answered request raises `PermissionNotFound`."""
        if reply not in REPLIES:
            raise InvalidArgument(f"reply must be one of {', '.join(REPLIES)}, not {reply!r}")
        pending = self._pending.get(request_id)
        if pending is None or pending.request.session_id != session_id or pending.answer:
            raise PermissionNotFound(request_id)
        self._answer(pending, Answer(reply, message))  # type: ignore[arg-type]
        if reply == "reject":
            for other in list(self._pending.values()):
                if other.request.session_id == session_id and other.answer is None:
                    self._answer(other, Answer("reject", message))

    def _answer(self, pending: _Pending, answer: Answer) -> None:
        pending.answer = answer
        self._events.emit(pending.request.session_id, PermissionRepliedEvent,
                          request_id=pending.request.id, reply=answer.reply,
                          message=answer.message)
        pending.answered.set()

    def pending(self, session_id: str) -> list[PermissionRequest]:
        """The session's requests still waiting for an answer."""
        return [p.request for p in self._pending.values()
                if p.request.session_id == session_id and p.answer is None]


def now() -> float:
    """Unix time, in seconds: the clock of events, parts and requests."""
    return time.time()

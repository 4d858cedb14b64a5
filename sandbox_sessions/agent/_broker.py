"""The permission broker: tool calls that wait for a human (or a policy) to answer.

`ask` emits `permission-asked` (stored before anyone can see it), then waits for `reply`, or
for the timeout. `reject` answers the request and every other pending request of the session.

A request waits in the process that runs its turn. Another process on the same store (a
`sandbox-sessions reply` beside an embedded run) leaves its answer in the store
(`Store.post_reply`), and the waiting process takes it from there (`wait_for_answer` looks
every `MAILBOX_POLL` seconds) and applies it as its own `reply`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

import anyio

from .._exceptions import InvalidArgument, PermissionNotFound, StoreError
from .._types import (
    AgentConfig,
    PermissionAskedEvent,
    PermissionRepliedEvent,
    PermissionReply,
    PermissionRequest,
)
from ..service._eventlog import EventLog

__all__ = ["MAILBOX_POLL", "Answer", "PermissionBroker", "wait_for_answer"]

log: logging.Logger = logging.getLogger("sandbox_sessions.agent")

REPLIES = ("once", "always", "reject")
MAILBOX_POLL = 0.25
"""Seconds between two looks at the store for answers left by other processes."""


async def wait_for_answer(answered: anyio.Event, collect: Callable[[], Awaitable[None]]
                          ) -> None:
    """Wait until `answered` is set, calling `collect` (which takes the answers other
    processes left in the store, and may set it) every `MAILBOX_POLL` seconds meanwhile."""
    while not answered.is_set():
        with anyio.move_on_after(MAILBOX_POLL):
            await answered.wait()
        if not answered.is_set():
            try:
                await collect()
            except StoreError as exc:  # a locked store: look again next time
                log.debug("answers left in the store not read: %s", exc)


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
                await wait_for_answer(pending.answered,
                                      lambda: self._collect(request.session_id))
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

    async def _collect(self, session_id: str) -> None:
        """Apply the answers other processes left for the session's requests."""
        for request_id, body in await self._events.store.take_replies(session_id, "permission"):
            with suppress(PermissionNotFound, InvalidArgument, ValueError, KeyError, TypeError):
                data = json.loads(body)
                self.reply(session_id, request_id, data["reply"], data.get("message"))

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

"""The question broker: the agent's questions (its `question` tool) waiting for the user.

`ask` emits `question-asked` (stored before anyone can see it), then waits for `reply`, or
for the session's `question_timeout`, after which `on_question_timeout` decides: the call
fails (`error`) or the first option is the answer (`first`). Like permission requests, the
pending questions live in the process that runs the turn (the server, over HTTP), and an
answer another process left in the store is taken from there (see `_broker.py`).
"""

from __future__ import annotations

import json
from contextlib import suppress

import anyio

from .._exceptions import InvalidArgument, QuestionNotFound
from .._types import AgentConfig, QuestionAskedEvent, QuestionRepliedEvent, QuestionRequest
from .._validation import check_text
from ..service._eventlog import EventLog
from ._broker import wait_for_answer

__all__ = ["MAX_ANSWER", "QuestionBroker", "check_answer"]

MAX_ANSWER = 64 * 1024
"""Longest answer taken, in characters."""


def check_answer(request: QuestionRequest, answer: str) -> None:
    """`InvalidArgument` for an empty or too long answer, or one not among the options of a
    question that takes no other."""
    check_text(answer, "answer", empty=False)
    if len(answer) > MAX_ANSWER:
        raise InvalidArgument(f"an answer is at most {MAX_ANSWER} characters")
    if request.options and not request.allow_custom and answer not in request.options:
        raise InvalidArgument(f"the answer must be one of the options: "
                              f"{', '.join(repr(o) for o in request.options)}")


class _Pending:
    def __init__(self, request: QuestionRequest) -> None:
        self.request = request
        self.answered = anyio.Event()
        self.answer: str | None = None


class QuestionBroker:
    """Pending questions of every session."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        self._pending: dict[str, _Pending] = {}

    async def ask(self, request: QuestionRequest, config: AgentConfig) -> str | None:
        """Publish `request` and wait for its answer; None when it timed out without one
        (the caller fails the call)."""
        pending = self._pending[request.id] = _Pending(request)
        try:
            self._events.emit(request.session_id, QuestionAskedEvent, request=request)
            await self._events.flush()
            with anyio.move_on_after(config.question_timeout):
                await wait_for_answer(pending.answered,
                                      lambda: self._collect(request.session_id))
            if pending.answer is None:
                first = config.on_question_timeout == "first" and request.options
                pending.answer = request.options[0] if first else None
                self._events.emit(request.session_id, QuestionRepliedEvent,
                                  request_id=request.id, answer=pending.answer, timed_out=True)
            return pending.answer
        finally:
            self._pending.pop(request.id, None)

    async def _collect(self, session_id: str) -> None:
        """Apply the answers other processes left for the session's questions."""
        for request_id, body in await self._events.store.take_replies(session_id, "question"):
            with suppress(QuestionNotFound, InvalidArgument, ValueError, KeyError, TypeError):
                self.reply(session_id, request_id, str(json.loads(body)["answer"]))

    def reply(self, session_id: str, request_id: str, answer: str) -> None:
        """Answer a pending question. `QuestionNotFound` if it is not pending in this
        session; `InvalidArgument` (and the question stays pending) for an empty or too long
        answer, or one not among the options of a question that takes no other."""
        pending = self._pending.get(request_id)
        if pending is None or pending.request.session_id != session_id \
                or pending.answered.is_set():
            raise QuestionNotFound(request_id)
        check_answer(pending.request, answer)
        pending.answer = answer
        self._events.emit(session_id, QuestionRepliedEvent, request_id=request_id,
                          answer=answer)
        pending.answered.set()

    def pending(self, session_id: str) -> list[QuestionRequest]:
        """The session's questions still waiting for an answer."""
        return [p.request for p in self._pending.values()
                if p.request.session_id == session_id and not p.answered.is_set()]

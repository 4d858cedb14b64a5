"""Answers to requests that wait in another process.

A permission request or a question waits in the process that runs its turn (its broker).
When another process on the same store answers it (`sandbox-sessions reply` beside an
embedded `run`, or a second client), the answer is checked here against the request as the
log has it, and left in the store; the waiting broker takes it from there within
`MAILBOX_POLL` seconds (`agent/_broker.py`). An answer for a request that is not open in a
turn another client is running is refused as the local broker would refuse it.
"""

from __future__ import annotations

import json
from typing import Literal

from .._types import PermissionRequest, QuestionRequest
from ._eventlog import EventLog
from ._turn_leases import TurnLeases

__all__ = ["leave_answer", "open_request"]

Kind = Literal["permission", "question"]


async def open_request(leases: TurnLeases, events: EventLog, session_id: str, kind: Kind,
                       request_id: str) -> PermissionRequest | QuestionRequest | None:
    """The request `request_id` of `kind` when it waits, unanswered, in a turn that another
    client runs; else None."""
    lease = await events.store.get_lease(session_id)
    if lease is None or lease.kind != "turn" or lease.owner == str(leases.owner) \
            or leases.stale(lease):
        return None
    await events.refresh(session_id)
    found: PermissionRequest | QuestionRequest | None = None
    for event in await events.history(session_id, after=lease.after):
        if event.type == "turn-end" and event.message_id == lease.holder:
            return None  # the turn is over: nothing of it waits
        if event.type in ("permission-asked", "question-asked"):
            if event.type == f"{kind}-asked" and event.request.id == request_id:
                found = event.request
        elif event.type in ("permission-replied", "question-replied") \
                and event.type == f"{kind}-replied" and event.request_id == request_id:
            return None  # answered already
    return found


async def leave_answer(events: EventLog, session_id: str, kind: Kind, request_id: str,
                       answer: dict[str, str | None]) -> None:
    """Leave `answer` for the waiting request (see `open_request`)."""
    await events.store.post_reply(session_id, kind, request_id, json.dumps(answer))

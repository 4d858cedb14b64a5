"""The global event stream: every session's events of a store, in the order they were stored.

Each chunk of the store has a position given in its append transaction (`EventChunk.position`,
in commit order, across every process writing the store). A reader's cursor names the last
event it has: `"<position>-<seq>"`, that chunk's position and the event's seq; a bare
`"<position>"` means everything up to and including that chunk. Resuming after a cursor gives
exactly what was stored after it, from whichever process. A cursor inside a run of deltas
folded since (see `_eventlog.py`) resumes with a `reset` event for that session instead.

The reader reads the store, never a queue of live events: it is woken when this process stores
a batch (and looks anyway every `POLL_INTERVAL`, for other processes' events), then reads what
came after its cursor, `CHUNKS_PER_READ` chunks at a time. So a slow reader costs no memory
and misses nothing: it is only behind.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from .._exceptions import InvalidArgument
from .._types import Event
from ._eventlog import POLL_INTERVAL, EventLog, parsed

__all__ = ["CHUNKS_PER_READ", "Cursor", "subscribe_all"]

CHUNKS_PER_READ = 256
"""Chunks a global reader takes from the store at once."""
_CURSOR = re.compile(r"(\d{1,18})(?:-(\d{1,18}))?")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A place in the global stream: after the event `seq` of the chunk at `position` (after
    the whole chunk when `seq` is None)."""

    position: int
    seq: int | None = None

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor `text` names; `InvalidArgument` when it names none."""
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise InvalidArgument(f"{text[:40]!r} is not an event stream cursor "
                                  f"(<position> or <position>-<seq>)")
        seq = match[2]
        return cls(int(match[1]), None if seq is None else int(seq))

    def __str__(self) -> str:
        return str(self.position) if self.seq is None else f"{self.position}-{self.seq}"


async def subscribe_all(log: EventLog, *, after: Cursor | None = None
                        ) -> AsyncIterator[tuple[Cursor, Event]]:
    """Every session's events stored after `after` (with None: from now on), each with the
    cursor that resumes right after it. Never ends by itself."""
    cursor = after if after is not None else Cursor(await log.store.last_position())
    while True:
        wake = log.stored_signal()  # taken before the read: a batch stored during it wakes us
        # a cursor inside a chunk reads that chunk again, from its next event
        start = cursor.position - 1 if cursor.seq is not None else cursor.position
        chunks = await log.store.read_all_events(after=start, limit=CHUNKS_PER_READ)
        for chunk in chunks:
            events = parsed(chunk)
            if chunk.position == cursor.position and cursor.seq is not None:
                # inside this chunk: from its next event, or a reset if its deltas were folded
                events = await log.resumed(chunk.session_id, cursor.seq,
                                           [e for e in events if e.seq > cursor.seq])
            for event in events:
                cursor = Cursor(chunk.position, event.seq)
                yield cursor, event
            cursor = Cursor(chunk.position)
        if len(chunks) < CHUNKS_PER_READ:
            with anyio.move_on_after(POLL_INTERVAL):
                await wake.wait()

"""Each session's projection, kept in memory between its reads.

The store is the truth, and other processes write it too: before each read a session's
`Projector` takes the events stored after the last one it applied (only the rows after it are
read), so what it gives is what `project()` of the whole stored log gives, whoever wrote it.
Where that place falls inside a run of deltas the store has folded since (the projector had
part of the run), the projector is built again from the whole log: rare, as a read at the
start of every turn keeps it past the runs that get folded.

At most `KEPT` sessions are kept, the least recently read dropped first; a session that ends is
dropped at once. A dropped session is built again from its log when it is next read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import anyio

from ._eventlog import EventLog
from ._projection import Projector

__all__ = ["KEPT", "Views"]

KEPT = 64
"""Sessions whose projection stays in memory between reads."""


@dataclass(eq=False)
class _Kept:
    projector: Projector = field(default_factory=Projector)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """One catch-up at a time: two would read, and apply, the same events."""


class Views:
    """The projections of the sessions of one event log."""

    def __init__(self, events: EventLog, *, kept: int = KEPT) -> None:
        self._events = events
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._limit = kept

    async def current(self, session_id: str) -> Projector:
        """The session's projector, caught up with every event stored so far (`flush` the
        log first for this process's latest). Read it before the next await: it moves on."""
        kept = self._kept.pop(session_id, None) or _Kept()
        self._kept[session_id] = kept
        while len(self._kept) > self._limit:
            self._kept.popitem(last=False)
        async with kept.lock:
            await self._catch_up(session_id, kept)
        return kept.projector

    def forget(self, session_id: str) -> None:
        """Drop the session's projection (it is built again if the session is read)."""
        self._kept.pop(session_id, None)

    def clear(self) -> None:
        """Drop every projection."""
        self._kept.clear()

    async def _catch_up(self, session_id: str, kept: _Kept) -> None:
        after = kept.projector.seq
        events = await self._events.history(session_id, after=after)
        if await self._events.folded_at(session_id, after, events) is not None:
            kept.projector = Projector()  # it has part of a run folded since: start over
            events = await self._events.history(session_id)
        kept.projector.apply(events)

"""The `Store` protocol: where sessions live between processes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .._types import SessionInfo

__all__ = ["EventChunk", "Store"]


@dataclass(frozen=True, slots=True)
class EventChunk:
    """Consecutive events of one session, stored together: a JSON array of them."""

    session_id: str
    first_seq: int
    last_seq: int
    data: bytes


class Store(Protocol):
    """Durable session records. Every write is on disk before the call returns."""

    @property
    def owner_id(self) -> str:
        """A stable id of this store, put on every container it owns."""
        ...

    @property
    def location(self) -> str:
        """Where the store lives (a file path), so orphans of a deleted store can be found."""
        ...

    async def put_session(self, info: SessionInfo) -> None:
        """Insert or replace the record of `info.id`."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget a session; a missing one is not an error."""
        ...

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """The record, or None when there is no such session."""
        ...

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """Every session, newest first."""
        ...

    async def append_events(self, chunks: Sequence[EventChunk]) -> dict[str, int]:
        """Append chunks of events in one transaction, durable on return, if each session's
        first chunk continues its stored log exactly (its `first_seq` = stored head + 1).

        Otherwise append nothing and return `{session_id: stored head}` for each session that
        moved on (another process wrote to it): the caller renumbers and tries again. An empty
        result means the chunks are stored.
        """
        ...

    async def read_events(
        self, session_id: str, *, after: int = 0, upto: int | None = None
    ) -> list[bytes]:
        """The chunks (JSON arrays of events) holding any event with `after < seq <= upto`,
        in seq order. A chunk may also hold events outside that range: filter by seq."""
        ...

    async def last_seq(self, session_id: str) -> int:
        """The highest seq stored for the session, 0 when it has none."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources; pending writes are already durable."""
        ...

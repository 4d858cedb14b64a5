"""The `Store` protocol: where sessions live between processes.

Several processes may share one store. What must not race between them (a session's creation
against the reaper, two turns of one session) is decided by *leases*: one row per session,
taken and handed over only by compare-and-swap inside one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .._types import SessionInfo, SessionStatus, Tokens

__all__ = ["EventChunk", "Lease", "LeaseKind", "Store"]

LeaseKind = Literal["create", "turn"]


@dataclass(frozen=True, slots=True)
class EventChunk:
    """Consecutive events of one session, stored together: a JSON array of them.

    `position` orders every chunk of the store (across sessions): given by the store when it
    appends the chunk, in commit order; 0 on a chunk not stored yet."""

    session_id: str
    first_seq: int
    last_seq: int
    data: bytes
    position: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """Who is working on a session, and until when; a session has at most one lease.

    `kind` is `create` while its container is being made, `turn` while a turn runs. `owner`
    names the holding process (opaque to the store). `holder` is the turn's assistant message
    id (empty for a creation); `after` the session's last seq when the turn began (its events
    come after it). `expires` is a Unix time: the owner renews the lease before then.
    """

    session_id: str
    kind: LeaseKind
    owner: str
    expires: float
    holder: str = ""
    after: int = 0


class Store(Protocol):
    """Durable session records. Every write is on disk before the call returns.

    Every method raises `StoreError` (and nothing else) when the store cannot be read or
    written, and when a stored row cannot be read back (naming the session and the row).
    """

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

    async def update_session(self, info: SessionInfo, *, expect: SessionStatus) -> bool:
        """Replace the record of `info.id` only if its stored status is `expect`; False (and
        nothing written) otherwise."""
        ...

    async def add_usage(self, session_id: str, tokens: Tokens, cost: float) -> None:
        """Add a turn's tokens and cost to the record's totals, in one transaction (two
        processes adding at once both count); a missing session is not an error."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget a session and its lease; a missing one is not an error."""
        ...

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """The record, or None when there is no such session."""
        ...

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """Every session, newest first; without `include_ended`, only usable ones (neither
        `ended` nor `creating`)."""
        ...

    async def create_session(self, info: SessionInfo, lease: Lease) -> None:
        """Insert the record of a session being made (status `creating`) together with its
        `create` lease, in one transaction."""
        ...

    async def finish_create(self, lease: Lease, info: SessionInfo | None) -> bool:
        """End a creation, in one transaction: if `lease` (all its fields) is still the
        session's lease and the record still says `creating`, store `info` (or forget the
        session when None) and return True. The lease is dropped whenever it matches."""
        ...

    async def take_lease(self, lease: Lease, *, replacing: Lease | None = None) -> Lease | None:
        """Make `lease` the session's lease if its current one is exactly `replacing` (all
        fields; None: no lease). Returns None when taken, else the current lease."""
        ...

    async def renew_lease(self, lease: Lease) -> bool:
        """Set the expiry of the session's lease to `lease.expires`, if it is still held by the
        same owner for the same holder; False when it was lost (taken over)."""
        ...

    async def release_lease(self, lease: Lease) -> bool:
        """Drop the session's lease if it is still held by the same owner for the same holder;
        False when it was not."""
        ...

    async def get_lease(self, session_id: str) -> Lease | None:
        """The session's lease, or None."""
        ...

    async def list_leases(self) -> list[Lease]:
        """Every lease of the store."""
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
    ) -> list[EventChunk]:
        """The chunks holding any event with `after < seq <= upto`, in seq order. A chunk may
        also hold events outside that range: filter by seq."""
        ...

    async def read_all_events(self, *, after: int = 0, limit: int = 1000
                              ) -> list[EventChunk]:
        """Up to `limit` chunks of any session with `position > after`, in position order:
        a chunk committed later never gets a lower position than one already readable."""
        ...

    async def last_position(self) -> int:
        """The highest chunk position stored, 0 when there is none."""
        ...

    async def last_seq(self, session_id: str) -> int:
        """The highest seq stored for the session, 0 when it has none."""
        ...

    async def fold_deltas(self, session_id: str, *, upto: int) -> int:
        """Fold the session's stored chunks that end at or before seq `upto` and were not
        folded yet: in each, a run of consecutive `text-delta` (or `reasoning-delta`) events
        of one part becomes one event of that type carrying the run's text joined, with the
        seq, time and fields of the run's last delta (a reasoning run keeps its last
        signature). The log's seqs stay increasing, with gaps where runs were; each chunk
        keeps its place (`first_seq`, `last_seq`, `position`); what `project()` makes of the
        log does not change. Returns how many events were removed.

        Safe while another process appends to the session or folds it too (each chunk is
        folded once). A `StoreError` leaves the log as it was, or folded in part.

        Folding is an optimization: a store may fold nothing (return 0, and None from
        `folded_from`); its logs then keep every delta, and no reader ever gets a reset.
        """
        ...

    async def folded_from(self, session_id: str, seq: int) -> int | None:
        """The first seq of the run of deltas that the stored event `seq` stands for since
        the run was folded; None when `seq` is no folded event."""
        ...

    async def post_reply(self, session_id: str, kind: str, request_id: str, body: str) -> None:
        """Leave an answer (`body`, JSON) to the request `request_id` of `kind`
        (`permission` or `question`), which waits in another process."""
        ...

    async def take_replies(self, session_id: str, kind: str) -> list[tuple[str, str]]:
        """Remove and return the answers left for the session's requests of `kind`, as
        `(request_id, body)` pairs in the order they were left."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources; pending writes are already durable."""
        ...

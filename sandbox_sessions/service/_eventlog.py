"""The event log: every change to a session, stored durably before it is published.

Emitting is synchronous and cheap: the event gets its `seq` and joins a queue. A writer task
commits the queue in batches (one transaction, one fsync, however many events arrived
meanwhile), then publishes the batch to live subscribers. So a reader never sees an event that
is not on disk, and a fast producer is not held to one fsync per event.

A subscriber registers for live events first, then replays the store, then takes live events
past what it replayed, filling any gap from the store (events another process wrote) and
looking in the store whenever it has been quiet for `POLL_INTERVAL`: resuming after a seq loses
nothing and duplicates nothing. Its live queue is bounded (`LIVE_BUFFER`): a subscriber that
falls that far behind stops getting live events and reads the store instead until it has caught
up, so it still gets everything, in order, and a slow reader costs no unbounded memory.

The store folds the deltas of a session's older turns (`Store.fold_deltas`): a run of deltas
of one part becomes one event, at the seq of the run's last delta. A reader resuming from
inside such a run (it had part of its text) gets, in place of the folded event, a `reset`
event carrying the session's state as of that seq, then the events after it: never part of a
text twice, never a silent gap.

A store that fails (locked by another process past its busy timeout, full) does not break the
log: the batch that could not be written stays queued, in order, ahead of what came after it,
and the writer tries it again with backoff (`RETRY_DELAYS`) until the store takes it. Whoever
waits on those events meanwhile (`flush()`, a strict subscriber) gets a `StoreError`; once the
store is healthy everything is written and published as if nothing happened.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import TypeAdapter, ValidationError

from .._exceptions import StoreError
from .._types import Event, EventBase, ResetEvent
from ..store.base import EventChunk, Store
from ._projection import project, todos

__all__ = ["CHUNK", "EVENTS", "LIVE_BUFFER", "EventLog", "parsed"]

log: logging.Logger = logging.getLogger("sandbox_sessions.events")

EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
CHUNK: TypeAdapter[list[Event]] = TypeAdapter(list[Event])
POLL_INTERVAL = 0.25
"""Seconds a quiet subscriber waits before it looks in the store for other processes' events."""
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Seconds the writer waits before each new attempt at a batch the store refused (the last
repeats)."""
LIVE_BUFFER = 1024
"""Live events (or store failures) a subscriber's queue holds; one that falls further behind
reads the store until it has caught up."""
MAX_BATCH = 4 * LIVE_BUFFER
"""Events stored in one append at most, so that a stored chunk (what a reader catching up
parses at once) stays bounded."""
E = TypeVar("E", bound=EventBase)
DELTAS = frozenset({"text-delta", "reasoning-delta"})
"""The event types the store folds."""


@dataclass(eq=False)
class _Live:
    """A subscriber's live queue; `behind` once it overflowed (live events are dropped for it
    until it has caught up from the store), `dropped` whether some were, `failed` a store
    failure it could not be told."""

    send: MemoryObjectSendStream[Event | StoreError]
    behind: bool = False
    dropped: bool = False
    failed: StoreError | None = None

    def offer(self, item: Event | StoreError) -> None:
        try:
            if self.behind:
                raise anyio.WouldBlock
            self.send.send_nowait(item)
        except anyio.WouldBlock:
            self.behind = self.dropped = True
            if isinstance(item, StoreError):  # an event is in the store later; this is not
                self.failed = item

    def take_failure(self) -> list[StoreError]:
        """The store failure it could not be told through its queue, once."""
        failed, self.failed = self.failed, None
        return [] if failed is None else [failed]


class EventLog:
    """Appends, stores and fans out the events of every session of one store."""

    def __init__(self, store: Store, task_group: anyio.abc.TaskGroup) -> None:
        self._store = store
        self._seq: dict[str, int] = {}
        self._durable: dict[str, int] = {}
        self._pending: list[Event] = []
        self._inflight: list[Event] = []
        self._emitted = 0
        self._published = 0
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._failures = 0
        self._error: StoreError | None = None
        self._closed: StoreError | None = None
        self._subscribers: dict[str, set[_Live]] = defaultdict(set)
        self._stored_signal = anyio.Event()
        self._init_lock = anyio.Lock()
        task_group.start_soon(self._writer)

    async def open(self, session_id: str) -> None:
        """Load the session's last seq; needed once before `emit` or `subscribe`."""
        if session_id in self._seq:
            return
        async with self._init_lock:
            if session_id not in self._seq:
                last = await self._store.last_seq(session_id)
                self._seq[session_id] = self._durable[session_id] = last

    async def refresh(self, session_id: str) -> None:
        """Catch up with events another process stored for the session, when none of ours
        are waiting to be written (those get renumbered by the writer instead)."""
        await self.open(session_id)
        if any(event.session_id == session_id for event in self._inflight + self._pending):
            return
        stored = await self._store.last_seq(session_id)
        if stored > self._seq[session_id]:
            self._seq[session_id] = self._durable[session_id] = stored

    def emit(self, session_id: str, kind: type[E], **fields: Any) -> E:
        """Give a new event of `kind` the session's next seq and queue it for the writer."""
        seq = self._seq[session_id] + 1
        self._seq[session_id] = seq
        event = kind(session_id=session_id, seq=seq, time=time.time(), **fields)
        self._pending.append(cast(Event, event))
        self._emitted += 1
        self._wake.set()
        return event

    @property
    def store(self) -> Store:
        """The store the log is kept in."""
        return self._store

    def stored_signal(self) -> anyio.Event:
        """An event set once the next batch of this process's events is stored."""
        return self._stored_signal

    def backlog(self) -> int:
        """The most live events waiting in any one subscriber's queue (at most
        `LIVE_BUFFER`)."""
        return max((live.send.statistics().current_buffer_used
                    for lives in self._subscribers.values() for live in lives), default=0)

    def head(self, session_id: str) -> int:
        """The last seq emitted for the session (stored or about to be)."""
        return self._seq[session_id]

    async def flush(self) -> None:
        """Return once every event emitted before the call is stored and published.

        Raises `StoreError` (retryable) as soon as an attempt to store those events fails; they
        stay queued and the writer keeps trying, so a later `flush()` may succeed. Cancelling
        the wait leaves the events queued.
        """
        target, failures = self._emitted, self._failures
        while self._published < target:
            if self._closed is not None:
                raise StoreError(str(self._closed))
            if self._failures != failures and self._error is not None:
                raise _unstored(self._error)
            await self._progress.wait()

    async def _writer(self) -> None:
        try:
            await self._write_batches()
        finally:  # cancelled with the client: nobody may wait for a flush that cannot come
            lost = len(self._inflight) + len(self._pending)
            if lost:
                log.error("the event log closed with %d events not stored", lost)
            self._closed = StoreError("the event log is closed")
            self._progress.set()

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            attempt = 0
            while self._pending:
                self._inflight = self._pending[:MAX_BATCH]
                self._pending = self._pending[MAX_BATCH:]
                try:
                    batch = await self._append()
                except StoreError as exc:
                    # Nothing dropped, nothing reordered: the batch goes back ahead of the rest.
                    self._pending, self._inflight = self._inflight + self._pending, []
                    self._failed(exc, attempt)
                    await anyio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                    attempt += 1
                    continue
                if attempt:
                    log.warning("the session store takes events again (after %d failed "
                                "attempts)", attempt)
                attempt, self._inflight = 0, []
                self._publish(batch)
                self._published += len(batch)
                self._progressed()

    def _failed(self, exc: StoreError, attempt: int) -> None:
        if attempt == 0:
            log.warning("the session store refused %d events; retrying: %s",
                        len(self._pending), exc)
        self._failures += 1
        self._error = exc
        for session_id in {event.session_id for event in self._pending}:
            for subscriber in self._subscribers.get(session_id, ()):
                subscriber.offer(exc)
        self._progressed()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def _append(self) -> list[Event]:
        """Store the in-flight batch, one chunk per session; where another process wrote to a
        session meanwhile, renumber that session's unpublished events to follow its stored
        log, and try again."""
        while True:
            heads = await self._store.append_events(_chunks(self._inflight))
            if not heads:
                return self._inflight
            for session_id, head in heads.items():
                first = next(e.seq for e in self._inflight if e.session_id == session_id)
                shift = head + 1 - first
                log.info("session %s moved on elsewhere: renumbering by %d", session_id, shift)
                self._inflight = _shifted(self._inflight, session_id, shift)
                self._pending = _shifted(self._pending, session_id, shift)
                self._seq[session_id] += shift

    def _publish(self, batch: list[Event]) -> None:
        for event in batch:
            self._durable[event.session_id] = event.seq
            for subscriber in self._subscribers.get(event.session_id, ()):
                subscriber.offer(event)
        self._stored_signal.set()
        self._stored_signal = anyio.Event()

    async def subscribe(
        self, session_id: str, *, after: int = 0, strict: bool = False
    ) -> AsyncIterator[Event]:
        """Every event of the session with seq > `after`: the stored ones, then live ones.

        The iteration never ends by itself; leave it (break, or cancel) when done. A failing
        store only delays live events, unless `strict`: then the first failed attempt to store
        this session's events raises `StoreError` here.
        """
        await self.open(session_id)
        send, receive = anyio.create_memory_object_stream[Event | StoreError](LIVE_BUFFER)
        live = _Live(send)
        self._subscribers[session_id].add(live)
        last = after
        try:
            for event in await self._replayed(session_id, last):
                last = event.seq
                yield event
            while True:
                items = _drain(receive)  # what is queued, without a loop trip per event
                if not items and live.behind:
                    items = list(await self._catch_up(session_id, last, live))
                if not items:
                    with anyio.move_on_after(POLL_INTERVAL):
                        items = [await receive.receive()]
                    if not items:  # quiet here: another process may be writing the session
                        live.behind = True  # read as if behind: a window at a time
                        items = list(await self._catch_up(session_id, last, live))
                events = _events([*live.take_failure(), *items], strict=strict)
                for event in events:
                    if event.seq > last + 1:  # written elsewhere meanwhile: those come first
                        for missed in await self._replayed(session_id, last,
                                                           upto=event.seq - 1):
                            last = missed.seq
                            yield missed
                    if event.seq > last:
                        last = event.seq
                        yield event
        finally:
            self._subscribers[session_id].discard(live)
            send.close()
            receive.close()

    async def _catch_up(self, session_id: str, last: int, live: _Live) -> list[Event]:
        """The next stored events of a subscriber that fell behind, `LIVE_BUFFER` at a time;
        once it has all, it takes live events again (and what was stored meanwhile)."""
        # Whole chunks: a chunk (one stored batch) may hold more than a window, and cutting
        # it would parse it again for each window (quadratic in a long turn).
        window = await self._replayed(session_id, last, upto=last + LIVE_BUFFER, whole=True)
        if window and window[-1].seq >= last + LIVE_BUFFER:
            return window
        live.behind = False  # from here on, live events reach its queue again
        if not live.dropped:
            return window
        live.dropped = False  # what was dropped is stored: read what came after the window
        return window + await self._replayed(session_id, window[-1].seq if window else last)

    async def _stored(self, session_id: str, after: int, upto: int | None = None, *,
                      whole: bool = False) -> list[Event]:
        """The stored events after `after`, up to `upto`; with `whole`, every event of the
        chunks that reach `upto` (so more than asked, never fewer)."""
        chunks = await self._store.read_events(session_id, after=after, upto=upto)
        high = math.inf if upto is None or whole else upto
        return [event for chunk in chunks for event in parsed(chunk)
                if after < event.seq <= high]

    async def _replayed(self, session_id: str, after: int, upto: int | None = None, *,
                        whole: bool = False) -> list[Event]:
        """`_stored`, for a reader that has the log up to `after` (see `resumed`)."""
        return await self.resumed(session_id, after,
                                  await self._stored(session_id, after, upto, whole=whole))

    async def resumed(self, session_id: str, after: int, events: list[Event]) -> list[Event]:
        """`events`, the stored events right after `after`, for a reader that has the log up
        to `after`: where `after` falls inside a run of deltas folded since, the folded event
        is replaced by a `reset` as of its seq."""
        folded = await self.folded_at(session_id, after, events)
        if folded is None:
            return events
        return [await self.reset(session_id, folded), *events[1:]]

    async def folded_at(self, session_id: str, after: int, events: list[Event]) -> int | None:
        """The seq of the first of `events` (the stored events right after `after`) when it
        stands for a folded run of deltas that `after` falls inside; None when `events`
        follow `after` exactly. A store lookup only when they start with a delta (the seqs
        need not jump: a run folded at seq 10 may have begun at 8, and `after` be 9)."""
        if not events or after == 0 or events[0].type not in DELTAS:
            return None
        first = await self._store.folded_from(session_id, events[0].seq)
        return events[0].seq if first is not None and first <= after else None

    async def reset(self, session_id: str, seq: int) -> ResetEvent:
        """A `reset` event: the session's messages and todos as its stored events up to `seq`
        make them."""
        events = await self._stored(session_id, 0, upto=seq)
        return ResetEvent(session_id=session_id, seq=seq, time=time.time(),
                          messages=project(events), todos=todos(events))

    async def history(self, session_id: str, *, after: int = 0) -> list[Event]:
        """The stored events of the session with seq > `after`, in order (call `flush` first
        for the latest)."""
        return await self._stored(session_id, after)


def _shifted(events: list[Event], session_id: str, shift: int) -> list[Event]:
    return [e.model_copy(update={"seq": e.seq + shift}) if e.session_id == session_id else e
            for e in events]


def _drain(receive: MemoryObjectReceiveStream[Event | StoreError]) -> list[Event | StoreError]:
    items: list[Event | StoreError] = []
    try:
        while True:
            items.append(receive.receive_nowait())
    except anyio.WouldBlock:
        return items


def _events(items: list[Event | StoreError], *, strict: bool) -> list[Event]:
    """The events among what a subscriber received; a store failure raises if `strict`."""
    events: list[Event] = []
    for item in items:
        if not isinstance(item, StoreError):
            events.append(item)
        elif strict:
            raise _unstored(item)
    return events


def _unstored(error: StoreError) -> StoreError:
    """A fresh error for one waiter (a shared instance would collect every waiter's
    traceback)."""
    fresh = StoreError(f"events could not be stored (they stay queued and are retried): "
                       f"{error}")
    fresh.retryable = True
    fresh.__cause__ = error
    return fresh


def parsed(chunk: EventChunk) -> list[Event]:
    """The events of a stored chunk; a corrupt one is a `StoreError` naming its row."""
    try:
        return CHUNK.validate_json(chunk.data)
    except ValidationError as exc:
        detail = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise StoreError(
            f"session {chunk.session_id}: its stored events row first_seq={chunk.first_seq} "
            f"(events {chunk.first_seq}..{chunk.last_seq}) is corrupt: {detail}") from exc


def _chunks(batch: list[Event]) -> list[EventChunk]:
    """The batch as one chunk per session (its events are consecutive within the batch)."""
    by_session: dict[str, list[Event]] = {}
    for event in batch:
        by_session.setdefault(event.session_id, []).append(event)
    return [EventChunk(session_id=sid, first_seq=events[0].seq, last_seq=events[-1].seq,
                       data=CHUNK.dump_json(events)) for sid, events in by_session.items()]

"""The event log: every change to a session, stored durably before it is published.

Emitting is synchronous and cheap: the event gets its `seq` and joins a queue. A writer task
commits the queue in batches (one transaction, one fsync, however many events arrived
meanwhile), then publishes the batch to live subscribers. So a reader never sees an event that
is not on disk, and a fast producer is not held to one fsync per event.

A subscriber registers for live events first, then replays the store, then takes live events
past what it replayed, filling any gap from the store (events another process wrote) and
looking in the store whenever it has been quiet for `POLL_INTERVAL`: resuming after a seq loses
nothing and duplicates nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import TypeAdapter

from ._exceptions import StoreError
from ._types import Event, EventBase
from .store.base import EventChunk, Store

__all__ = ["CHUNK", "EVENTS", "EventLog"]

log: logging.Logger = logging.getLogger("sandbox_sessions.events")

EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
CHUNK: TypeAdapter[list[Event]] = TypeAdapter(list[Event])
POLL_INTERVAL = 0.25
"""Seconds a quiet subscriber waits before it looks in the store for other processes' events."""
E = TypeVar("E", bound=EventBase)


class EventLog:
    """Appends, stores and fans out the events of every session of one store."""

    def __init__(self, store: Store, task_group: anyio.abc.TaskGroup) -> None:
        self._store = store
        self._seq: dict[str, int] = {}
        self._durable: dict[str, int] = {}
        self._pending: list[Event] = []
        self._emitted = 0
        self._published = 0
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._failure: StoreError | None = None
        self._subscribers: dict[str, set[MemoryObjectSendStream[Event]]] = defaultdict(set)
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
        if any(event.session_id == session_id for event in self._pending):
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

    def head(self, session_id: str) -> int:
        """The last seq emitted for the session (stored or about to be)."""
        return self._seq[session_id]

    async def flush(self) -> None:
        """Return once every event emitted before the call is stored and published."""
        target = self._emitted
        while self._published < target:
            if self._failure is not None:
                raise self._failure
            await self._progress.wait()
        if self._failure is not None:
            raise self._failure

    async def _writer(self) -> None:
        try:
            await self._write_batches()
        finally:  # cancelled with the client: nobody may wait for a flush that cannot come
            self._failure = self._failure or StoreError("the event log is closed")
            self._progress.set()

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                batch = await self._append(batch)
            except StoreError as exc:
                log.error("event log write failed: %s", exc)
                self._failure = exc
            else:
                self._publish(batch)
            self._published += len(batch)
            self._progress.set()
            self._progress = anyio.Event()

    async def _append(self, batch: list[Event]) -> list[Event]:
        """Store `batch`, one chunk per session; where another process wrote to a session
        meanwhile, renumber that session's unpublished events to follow its stored log, and
        try again."""
        while True:
            heads = await self._store.append_events(_chunks(batch))
            if not heads:
                return batch
            for session_id, head in heads.items():
                first = next(e.seq for e in batch if e.session_id == session_id)
                shift = head + 1 - first
                log.info("session %s moved on elsewhere: renumbering by %d", session_id, shift)
                batch = _shifted(batch, session_id, shift)
                self._pending = _shifted(self._pending, session_id, shift)
                self._seq[session_id] += shift

    def _publish(self, batch: list[Event]) -> None:
        for event in batch:
            self._durable[event.session_id] = event.seq
            for subscriber in self._subscribers.get(event.session_id, ()):
                subscriber.send_nowait(event)

    async def subscribe(self, session_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """Every event of the session with seq > `after`: the stored ones, then live ones.

        The iteration never ends by itself; leave it (break, or cancel) when done.
        """
        await self.open(session_id)
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._subscribers[session_id].add(send)
        last = after
        try:
            for event in await self._stored(session_id, last):
                last = event.seq
                yield event
            while True:
                events = _drain(receive)  # what is queued, without a loop trip per event
                if not events:
                    with anyio.move_on_after(POLL_INTERVAL):
                        events = [await receive.receive()]
                    if not events:  # quiet here: another process may be writing the session
                        events = await self._stored(session_id, last)
                for event in events:
                    if event.seq > last + 1:  # written elsewhere meanwhile: those come first
                        for missed in await self._stored(session_id, last, upto=event.seq - 1):
                            last = missed.seq
                            yield missed
                    if event.seq > last:
                        last = event.seq
                        yield event
        finally:
            self._subscribers[session_id].discard(send)
            send.close()
            receive.close()

    async def _stored(self, session_id: str, after: int, upto: int | None = None) -> list[Event]:
        chunks = await self._store.read_events(session_id, after=after, upto=upto)
        high = math.inf if upto is None else upto
        return [event for chunk in chunks for event in CHUNK.validate_json(chunk)
                if after < event.seq <= high]

    async def history(self, session_id: str, *, after: int = 0) -> list[Event]:
        """The stored events of the session with seq > `after`, in order (call `flush` first
        for the latest)."""
        return await self._stored(session_id, after)


def _shifted(events: list[Event], session_id: str, shift: int) -> list[Event]:
    return [e.model_copy(update={"seq": e.seq + shift}) if e.session_id == session_id else e
            for e in events]


def _drain(receive: MemoryObjectReceiveStream[Event]) -> list[Event]:
    events: list[Event] = []
    try:
        while True:
            events.append(receive.receive_nowait())
    except anyio.WouldBlock:
        return events


def _chunks(batch: list[Event]) -> list[EventChunk]:
    """The batch as one chunk per session (its events are consecutive within the batch)."""
    by_session: dict[str, list[Event]] = {}
    for event in batch:
        by_session.setdefault(event.session_id, []).append(event)
    return [EventChunk(session_id=sid, first_seq=events[0].seq, last_seq=events[-1].seq,
                       data=CHUNK.dump_json(events)) for sid, events in by_session.items()]

"""The event log on a real SQLite file: durable before published, gap-free seq, no duplicates,
across chunk boundaries and across two writers of one store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from agent_support import take

from sandbox_sessions._types import TextDeltaEvent
from sandbox_sessions.service._allevents import Cursor, subscribe_all
from sandbox_sessions.service._eventlog import CHUNK, LIVE_BUFFER, MAX_BATCH, EventLog
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = pytest.mark.anyio
T = TypeVar("T")


def emit(log: EventLog, session: str, text: str) -> None:
    log.emit(session, TextDeltaEvent, message_id="m", part_id="p", delta=text)




async def test_reads_start_and_stop_inside_stored_chunks(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("s")
        for batch in range(3):  # three flushes: three chunks of 10
            for index in range(10):
                emit(log, "s", f"{batch}.{index}")
            await log.flush()
        middle = await take(log.subscribe("s", after=15), 10)
        everything = await log.history("s")
        group.cancel_scope.cancel()
    await store.aclose()

    assert [event.seq for event in middle] == list(range(16, 26))
    assert [event.seq for event in everything] == list(range(1, 31))
    assert [e.delta for e in everything if isinstance(e, TextDeltaEvent)][:2] == ["0.0", "0.1"]


async def test_a_reader_sees_stored_then_live_events_once_each(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("s")
        for index in range(5):
            emit(log, "s", str(index))
        await log.flush()
        reader = log.subscribe("s", after=2)
        first = await take(reader, 3)  # 3..5 from the store
        for index in range(5, 9):
            emit(log, "s", str(index))
        rest = await take(reader, 4)  # 6..9 live
        await reader.aclose()  # type: ignore[attr-defined]
        group.cancel_scope.cancel()
    await store.aclose()

    assert [event.seq for event in first + rest] == list(range(3, 10))


async def test_two_writers_of_one_store_keep_one_gap_free_log(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    first_store, second_store = SQLiteStore(path), SQLiteStore(path)
    async with anyio.create_task_group() as group:
        first, second = EventLog(first_store, group), EventLog(second_store, group)
        await first.open("s")
        await second.open("s")  # both believe the log is empty
        for index in range(3):
            emit(first, "s", f"a{index}")
        await first.flush()
        for index in range(4):
            emit(second, "s", f"b{index}")  # numbered 1..4 here: renumbered to 4..7
        await second.flush()
        emit(first, "s", "a3")  # this writer is behind too: renumbered to 8
        await first.flush()
        seen_by_first = await take(first.subscribe("s"), 8)
        group.cancel_scope.cancel()
    stored = [e for e in seen_by_first if isinstance(e, TextDeltaEvent)]
    await first_store.aclose()
    await second_store.aclose()

    assert [event.seq for event in seen_by_first] == list(range(1, 9))
    assert [event.delta for event in stored] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "a3"]


async def test_a_reader_that_stops_reading_gets_everything_later_from_bounded_memory(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    total = 5 * LIVE_BUFFER
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("s")
        emit(log, "s", "first")
        await log.flush()
        reader = log.subscribe("s")
        first = await take(reader, 1)  # registered for live events, then stops reading
        backlogs = []
        for index in range(total):
            emit(log, "s", str(index))
            if index % 100 == 99:
                await log.flush()
                backlogs.append(log.backlog())
        await log.flush()
        rest = await take(reader, total)
        emit(log, "s", "live again")  # caught up: live events reach it again
        last = await take(reader, 1)
        await reader.aclose()  # type: ignore[attr-defined]
        group.cancel_scope.cancel()
    await store.aclose()

    assert max(backlogs) <= LIVE_BUFFER  # the queue of the idle reader stayed bounded
    seqs = [event.seq for event in first + rest + last]
    assert seqs == list(range(1, total + 3))  # everything, in order, once
    deltas = [e.delta for e in rest if isinstance(e, TextDeltaEvent)]
    assert deltas == [str(index) for index in range(total)]


async def test_a_burst_is_stored_in_bounded_chunks_and_a_reader_behind_gets_it_all(
    tmp_path: Path,
) -> None:
    """A burst emitted at once (a long turn's text) is stored in chunks of at most MAX_BATCH
    events, so what a reader catching up parses at once stays bounded."""
    store = SQLiteStore(tmp_path / "log.db")
    total = 3 * MAX_BATCH + 7
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("s")
        reader = log.subscribe("s")
        for index in range(total):  # no checkpoint: the writer sees the whole burst queued
            emit(log, "s", str(index))
        await log.flush()
        taken = await take(reader, total)
        await reader.aclose()  # type: ignore[attr-defined]
        group.cancel_scope.cancel()
    chunks = await store.read_events("s")
    await store.aclose()

    assert [e.delta for e in taken if isinstance(e, TextDeltaEvent)] == [
        str(index) for index in range(total)]
    assert [event.seq for event in taken] == list(range(1, total + 1))
    sizes = [chunk.last_seq - chunk.first_seq + 1 for chunk in chunks]
    assert sum(sizes) == total
    assert max(sizes) <= MAX_BATCH


OLD_EVENTS_TABLE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY, status TEXT NOT NULL, time_created REAL NOT NULL,
                       info TEXT NOT NULL);
CREATE TABLE events (session_id TEXT NOT NULL, first_seq INTEGER NOT NULL,
                     last_seq INTEGER NOT NULL, data BLOB NOT NULL,
                     PRIMARY KEY (session_id, first_seq)) WITHOUT ROWID;
CREATE TABLE leases (session_id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL,
                     expires REAL NOT NULL, holder TEXT NOT NULL, after INTEGER NOT NULL);
INSERT INTO meta VALUES ('owner_id', 'old');
"""
"""A store as made before chunks had a global position."""


async def test_a_store_without_positions_is_migrated_in_place_and_streams_globally(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_EVENTS_TABLE)
    for session, first in (("b", 1), ("a", 1), ("a", 3)):
        events = [TextDeltaEvent(session_id=session, seq=seq, time=0.0, message_id="m",
                                 part_id="p", delta=f"{session}{seq}")
                  for seq in (first, first + 1)]
        old.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                    (session, first, first + 1, CHUNK.dump_json(list(events))))
    old.commit()
    old.close()

    store = SQLiteStore(path)
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("a")
        emit(log, "a", "new")
        await log.flush()
        everything = await take(subscribe_all(log, after=Cursor(0)), 7)
        after_third = await take(subscribe_all(log, after=Cursor(2, 3)), 4)
        group.cancel_scope.cancel()
    await store.aclose()
    reopened = SQLiteStore(path)  # a second open of a migrated store changes nothing
    positions = [chunk.position for chunk in await reopened.read_all_events()]
    await reopened.aclose()

    order = [(event.session_id, event.seq) for _, event in everything]
    # old chunks numbered in (session, seq) order, then what came after the migration
    assert order == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2), ("a", 5)]
    assert [str(cursor) for cursor, _ in everything][:3] == ["1-1", "1-2", "2-3"]
    assert [(event.session_id, event.seq) for _, event in after_third] == order[3:]
    assert positions == [1, 2, 3, 4]

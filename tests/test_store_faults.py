"""The event log against a store that fails: locked by another connection past its busy
timeout, really full, or holding corrupt rows. Nothing is dropped or reordered, waiters get a
`StoreError`, and everything works again once the store is healthy."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    SandboxOptions,
    SessionInfo,
    StoreError,
    TextPart,
    UserMessage,
)
from sandbox_sessions._types import (
    Event,
    MessageCreatedEvent,
    SessionStatusEvent,
    TextDeltaEvent,
    TurnEndEvent,
)
from sandbox_sessions.service._eventlog import EventLog
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def emit(log: EventLog, text: str, session: str = "s") -> None:
    log.emit(session, TextDeltaEvent, message_id="m", part_id="p", delta=text)


def deltas(events: list[Event]) -> list[str]:
    return [event.delta for event in events if isinstance(event, TextDeltaEvent)]


@asynccontextmanager
async def event_log(store: SQLiteStore) -> AsyncIterator[tuple[EventLog, anyio.abc.TaskGroup]]:
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await log.open("s")
        yield log, group
        group.cancel_scope.cancel()
    await store.aclose()


async def collect(log: EventLog, into: list[Event | StoreError], strict: bool,
                  full: anyio.Event) -> None:
    """Read the session's log into `into` until it fails; `full` is set at 5 items."""
    try:
        async for event in log.subscribe("s", strict=strict):
            into.append(event)
            if len(into) == 5:
                full.set()
    except StoreError as exc:
        into.append(exc)


async def test_a_locked_store_delays_events_and_loses_none(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        async with event_log(store) as (log, group):
            emit(log, "before")
            await log.flush()
            seen: list[Event | StoreError] = []
            strict: list[Event | StoreError] = []
            all_seen = anyio.Event()
            group.start_soon(collect, log, seen, False, all_seen)
            group.start_soon(collect, log, strict, True, anyio.Event())
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            for index in range(3):
                emit(log, f"locked {index}")
            with anyio.fail_after(10), pytest.raises(StoreError) as refused:
                await log.flush()
            emit(log, "still locked")
            other.execute("COMMIT")  # healthy again
            with anyio.fail_after(10):
                await log.flush()
                await all_seen.wait()
            stored = await log.history("s")

    assert refused.value.retryable
    assert "locked" in str(refused.value)
    expected = ["before", "locked 0", "locked 1", "locked 2", "still locked"]
    assert deltas(stored) == expected
    assert [event.seq for event in stored] == [1, 2, 3, 4, 5]
    assert seen == stored  # a plain reader just waited: every event once, in order
    assert isinstance(strict[-1], StoreError)  # a strict one was told


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs). Tests run as root in CI: not being able to mount it is
    a failure, not a skip."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (run as root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its filesystem is full; returns the file."""
    filler = folder / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    return filler


async def test_a_full_store_keeps_its_events_until_there_is_room(small_disk: Path) -> None:
    store = SQLiteStore(small_disk / "log.db")
    async with event_log(store) as (log, _):
        emit(log, "before")
        await log.flush()
        filler = fill(small_disk)
        for index in range(40):
            emit(log, f"{index}:" + "x" * 4096)
        with anyio.fail_after(10), pytest.raises(StoreError) as refused:
            await log.flush()
        filler.unlink()  # room again
        with anyio.fail_after(10):
            await log.flush()
        stored = await log.history("s")

    assert "full" in str(refused.value)
    assert deltas(stored)[0] == "before"
    assert [text.split(":")[0] for text in deltas(stored)[1:]] == [str(i) for i in range(40)]
    assert [event.seq for event in stored] == list(range(1, 42))


def session_info(session_id: str) -> SessionInfo:
    now = datetime.now(UTC)
    return SessionInfo(id=session_id, title="t", agent="a", status="idle", time_created=now,
                       time_updated=now, sandbox=SandboxOptions())


async def seed(path: Path) -> None:
    """Two sessions, each with its record and a user message in its log."""
    store = SQLiteStore(path)
    async with event_log(store) as (log, _):
        for session_id in ("ses_a", "ses_b"):
            await store.put_session(session_info(session_id))
            await log.open(session_id)
            message = UserMessage(id=f"msg_{session_id}", session_id=session_id, time_created=0,
                                  parts=[TextPart(id="prt_1", text="hello")])
            log.emit(session_id, MessageCreatedEvent, message=message)
            await log.flush()


def corrupt(path: Path, statement: str, *args: object) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        assert other.execute(statement, args).rowcount == 1


async def test_a_corrupt_session_record_is_a_store_error_naming_it(store_path: Path) -> None:
    await seed(store_path)
    corrupt(store_path, "UPDATE sessions SET info='{\"id\": 12' WHERE id=?", "ses_a")

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        failures = []
        session = client.session("ses_a")
        for read in (session.get_info, client.list_sessions, lambda: session.update(title="x"),
                     lambda: session.shell("true")):
            with pytest.raises(StoreError) as caught:
                await read()
            failures.append(str(caught.value))
        healthy = await client.session("ses_b").get_info()

    assert all("ses_a" in text and "sessions" in text for text in failures)
    assert healthy.id == "ses_b"


async def test_a_corrupt_events_row_is_a_store_error_naming_it(store_path: Path) -> None:
    await seed(store_path)
    corrupt(store_path, "UPDATE events SET data=? WHERE session_id=?", b"[{\"type\": 1", "ses_a")

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        session = client.session("ses_a")
        failures = []
        for read in (session.get_messages, session.get_metrics, session.get_todos):
            with pytest.raises(StoreError) as caught:
                await read()
            failures.append(str(caught.value))
        with pytest.raises(StoreError) as caught:
            async for _ in session.events():
                pass
        failures.append(str(caught.value))
        healthy = await client.session("ses_b").get_messages()

    assert all("ses_a" in text and "first_seq=1" in text for text in failures)
    assert [message.id for message in healthy] == ["msg_ses_b"]


@pytest.mark.docker
async def test_send_on_a_locked_store_raises_store_error_and_then_all_is_stored(
    store_path: Path, image: str
) -> None:
    script: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "bash", "input": {"command": "sleep 1"}}]}, {"text": "done"}]
    with closing(sqlite3.connect(store_path, isolation_level=None)) as other:
        async with (AsyncSandboxClient(store=store_path) as client,
                    anyio.create_task_group() as group):
            agent = client.agent("locked", model="scripted", script=script * 2, image=image)
            session = await agent.create_session()

            async def unlock_later() -> None:
                # Past one busy timeout (10 s) after the tool ends: its events fail once.
                await anyio.sleep(20)
                other.execute("COMMIT")

            def lock(event: Event) -> None:
                if event.type == "tool-running" and not other.in_transaction:
                    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                    group.start_soon(unlock_later)

            with anyio.fail_after(90), pytest.raises(StoreError) as refused:
                await session.send("go", on_event=lock)
            first = await session.get_messages()  # healthy again: everything is stored
            again = await session.send("again")
            events = await _until_idle(session)
            await session.end()

    assert refused.value.retryable
    assert "locked" in str(refused.value)
    assert [message.role for message in first] == ["user", "assistant"]
    ends = [event for event in events if isinstance(event, TurnEndEvent)]
    assert [end.message_id for end in ends] == [first[1].id, again.message_id]
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert again.reason == "completed"


async def _until_idle(session: AsyncSessionHandle) -> list[Event]:
    """The session's stored events up to its second `turn-end` and the idle after it."""
    events: list[Event] = []
    with anyio.fail_after(10):
        async for event in session.events():
            events.append(event)
            ends = sum(isinstance(seen, TurnEndEvent) for seen in events)
            if ends == 2 and isinstance(event, SessionStatusEvent):
                return events
    raise AssertionError("unreachable: events() never ends by itself")


@pytest.mark.docker
async def test_gc_keeps_a_container_whose_record_is_corrupt(store_path: Path, image: str) -> None:
    async with AsyncSandboxClient(store=store_path) as client:
        session = await client.agent("kept", image=image).create_session()
        info = await session.get_info()
        corrupt(store_path, "UPDATE sessions SET info='not json' WHERE id=?", session.id)
        removed = await client.gc()  # neither raises nor removes what it cannot read
        still_there = (await session.shell("echo here")).stdout
        corrupt(store_path, "UPDATE sessions SET info=? WHERE id=?", info.model_dump_json(),
                session.id)
        await session.end()

    assert info.container_id not in removed
    assert still_there == "here\n"

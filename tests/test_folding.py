"""Folded deltas on a real SQLite file: the store keeps a finished run of deltas as one event,
the projection does not change, readers resuming inside a folded run get a `reset`, and the
projections kept in memory follow what another process appends and folds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
from agent_support import take
from workers import read_line, spawn

from sandbox_sessions._types import (
    AssistantMessage,
    Event,
    MessageCreatedEvent,
    MessageUpdatedEvent,
    ReasoningDeltaEvent,
    ResetEvent,
    SessionStatusEvent,
    TextDeltaEvent,
    TextPart,
    Todo,
    TodoUpdatedEvent,
    TurnEndEvent,
    UserMessage,
)
from sandbox_sessions.service._allevents import Cursor, subscribe_all
from sandbox_sessions.service._eventlog import EventLog
from sandbox_sessions.service._projection import project, todos
from sandbox_sessions.service._views import Views
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = pytest.mark.anyio
T = TypeVar("T")


def text(log: EventLog, message: str, part: str, delta: str) -> None:
    log.emit("s", TextDeltaEvent, message_id=message, part_id=part, delta=delta)


def turn(log: EventLog, number: int) -> None:
    """A user message and the start of its answer (`a<number>`)."""
    user = UserMessage(id=f"u{number}", session_id="s", time_created=1.0,
                       parts=[TextPart(id=f"t{number}", text="go")])
    log.emit("s", MessageCreatedEvent, message=user)
    answer = AssistantMessage(id=f"a{number}", session_id="s", parent_id=user.id,
                              model="scripted", time_created=2.0)
    log.emit("s", MessageCreatedEvent, message=answer)


async def write_log(log: EventLog) -> int:
    """Two turns in three chunks: runs across a chunk boundary, runs cut by another event,
    reasoning with signatures, two parts back to back, a todo list. The seq the second
    chunk ends at (the first turn's end)."""
    await log.open("s")
    turn(log, 1)
    for word in ("a ", "b ", "c ", "d ", "e "):
        text(log, "a1", "p1", word)
    await log.flush()  # a chunk boundary inside the run of p1
    for word in ("f ", "g ", "h "):
        text(log, "a1", "p1", word)
    for delta, signature in (("think ", None), ("more ", "sig1"), ("still", ""),
                             (".", None)):
        log.emit("s", ReasoningDeltaEvent, message_id="a1", part_id="r1", delta=delta,
                 signature=signature)
    log.emit("s", SessionStatusEvent, status="busy")  # cuts the next run of p1 in two
    text(log, "a1", "p1", "i ")
    text(log, "a1", "p1", "j")
    for word in ("x", "y", "z"):
        text(log, "a1", "p2", word)  # another part right after: a run of its own
    log.emit("s", TodoUpdatedEvent, todos=[Todo(id="1", content="fold")])
    done = AssistantMessage(id="a1", session_id="s", parent_id="u1", model="scripted",
                            time_created=2.0, time_completed=3.0)
    log.emit("s", MessageUpdatedEvent, message=done)
    end = log.emit("s", TurnEndEvent, message_id="a1", reason="completed")
    await log.flush()
    turn(log, 2)
    for word in ("one ", "two ", "three"):
        text(log, "a2", "p3", word)
    await log.flush()
    return end.seq




def deltas(events: list[Event]) -> list[tuple[int, str]]:
    return [(e.seq, e.delta) for e in events if isinstance(e, TextDeltaEvent)]


async def test_folding_keeps_the_projection_and_stores_each_run_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        upto = await write_log(log)
        before = await log.history("s")
        removed = await store.fold_deltas("s", upto=upto)
        after = await log.history("s")
        again = await store.fold_deltas("s", upto=upto)
        runs = {seq: await store.folded_from("s", seq) for seq, _ in deltas(after)}
        rest = await store.fold_deltas("s", upto=await store.last_seq("s"))
        last = await log.history("s")
        group.cancel_scope.cancel()
    await store.aclose()

    assert project(after) == project(before) == project(last)
    assert todos(after) == todos(before) == [Todo(id="1", content="fold")]
    seqs = [event.seq for event in after]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == before[-1].seq
    assert (removed, again, rest) == (len(before) - len(after), 0, len(after) - len(last))
    first_chunk_end = next(e.seq for e in before if isinstance(e, TextDeltaEvent)
                           and e.delta == "e ")
    assert deltas(after) == [
        (first_chunk_end, "a b c d e "),  # each chunk's part of a run is folded in place
        (first_chunk_end + 3, "f g h "), (first_chunk_end + 10, "i j"),
        (first_chunk_end + 13, "xyz"),
        *deltas(before)[-3:]]  # the second turn is past `upto`: as it was
    assert runs == {first_chunk_end: 3, first_chunk_end + 3: first_chunk_end + 1,
                    first_chunk_end + 10: first_chunk_end + 9,
                    first_chunk_end + 13: first_chunk_end + 11,
                    **{seq: None for seq, _ in deltas(before)[-3:]}}
    (reasoning,) = [e for e in after if isinstance(e, ReasoningDeltaEvent)]
    assert (reasoning.delta, reasoning.signature) == ("think more still.", "sig1")
    assert deltas(last)[-1] == (before[-1].seq, "one two three")


async def test_a_reader_resuming_inside_a_folded_run_gets_a_reset(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        upto = await write_log(log)
        before = await log.history("s")
        await store.fold_deltas("s", upto=upto)
        after = await log.history("s")
        folded = deltas(after)[1][0]  # "f g h ": it stands for three deltas
        inside = await take(log.subscribe("s", after=folded - 1), 3)
        at_start = await take(log.subscribe("s", after=folded - 3), 2)  # before the run
        at_end = await take(log.subscribe("s", after=folded), 1)
        everything = await take(log.subscribe("s"), len(after))
        (chunk, *_) = [c for c in await store.read_all_events()
                       if c.first_seq <= folded <= c.last_seq]
        global_inside = await take(subscribe_all(log, after=Cursor(chunk.position,
                                                                   folded - 2)), 2)
        group.cancel_scope.cancel()
    await store.aclose()

    reset = inside[0]
    assert isinstance(reset, ResetEvent)
    assert reset.seq == folded
    assert reset.messages == project(e for e in before if e.seq <= folded)
    assert inside[1:] == [e for e in after if e.seq > folded][:2]
    assert project([reset, *[e for e in after if e.seq > folded]]) == project(before)
    assert at_start == [e for e in after if e.seq > folded - 3][:2]  # a run's edge: exact
    assert not isinstance(at_start[0], ResetEvent)
    assert at_end == [e for e in after if e.seq > folded][:1]
    assert everything == after  # from 0: no reset
    (cursor, global_reset), (_, following) = global_inside
    assert isinstance(global_reset, ResetEvent)
    assert (cursor, global_reset.messages) == (Cursor(chunk.position, folded), reset.messages)
    assert following == next(e for e in after if e.seq > folded)


async def test_folding_while_another_connection_appends_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer_store, folder_store = SQLiteStore(path), SQLiteStore(path, busy_timeout=30)
    emitted: list[Event] = []
    async with anyio.create_task_group() as group:
        log = EventLog(writer_store, group)
        await log.open("s")

        async def write() -> None:
            for number in range(1, 31):
                turn(log, number)
                for word in range(40):
                    emitted.append(log.emit("s", TextDeltaEvent, message_id=f"a{number}",
                                            part_id=f"p{number}", delta=f"{word} "))
                    if word % 15 == 0:
                        await log.flush()
                log.emit("s", TurnEndEvent, message_id=f"a{number}", reason="completed")
                await log.flush()
                await anyio.lowlevel.checkpoint()

        async def fold() -> None:
            for _ in range(60):
                await folder_store.fold_deltas("s", upto=await folder_store.last_seq("s"))
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as both:
            both.start_soon(write)
            both.start_soon(fold)
        unfolded_project = project(await EventLog(folder_store, group).history("s"))
        await folder_store.fold_deltas("s", upto=await folder_store.last_seq("s"))
        stored = await log.history("s")
        group.cancel_scope.cancel()
    await writer_store.aclose()
    await folder_store.aclose()

    texts = {m.id: "".join(p.text for p in m.parts if isinstance(p, TextPart))
             for m in project(stored)}
    assert texts == {**{f"u{n}": "go" for n in range(1, 31)},
                     **{f"a{n}": "".join(f"{w} " for w in range(40)) for n in range(1, 31)}}
    assert project(stored) == unfolded_project
    assert len(deltas(stored)) < len(emitted) / 5  # folded: a few events per turn
    seqs = [event.seq for event in stored]
    assert seqs == sorted(set(seqs))


async def test_a_kept_projection_follows_another_process_that_appends_and_folds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    SQLiteStore(path)  # made before the worker opens it
    store = SQLiteStore(path)
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        views = Views(log)
        with spawn("write", str(path), "s") as writer:
            assert read_line(writer)["written"] == 11
            first = (await views.current("s")).messages()
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
            report = read_line(writer)
            second = (await views.current("s")).messages()
        history = await log.history("s")
        group.cancel_scope.cancel()
    await store.aclose()

    assert report["removed"] > 0  # the other process folded the deltas this one had read
    assert [p.text for p in first[1].parts if isinstance(p, TextPart)] == ["w0 w1 w2 w3 w4 "
                                                                          "w5 w6 w7 w8 w9 "]
    assert second == project(history)
    words = "".join(f"w{index} " for index in range(20))
    assert [p.text for p in second[1].parts if isinstance(p, TextPart)] == [words]


def test_the_fold_tables_exist_in_a_store_made_before_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SQLiteStore(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE folds")
        db.execute("DROP TABLE folded")
    SQLiteStore(path)  # opening an older store adds them
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"folds", "folded"} <= tables


async def test_projections_dropped_from_memory_are_built_again_from_the_log(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    async with anyio.create_task_group() as group:
        log = EventLog(store, group)
        await write_log(log)  # session "s"
        await log.open("t")
        log.emit("t", TodoUpdatedEvent, todos=[Todo(id="9", content="other")])
        await log.flush()
        views = Views(log, kept=1)  # one session at a time: each read drops the other
        reads = [(await views.current(sid)).messages() for sid in ("s", "t", "s")]
        turn(log, 3)
        text(log, "a3", "p9", "late")
        await log.flush()
        views.forget("s")
        again = (await views.current("s")).messages()
        todo_lists = [(await views.current(sid)).todos() for sid in ("t", "s")]
        history = await log.history("s")
        group.cancel_scope.cancel()
    await store.aclose()

    assert reads[0] == reads[2] == project(e for e in history if e.seq <= reads_end(history))
    assert reads[1] == []
    assert again == project(history)
    assert todo_lists == [[Todo(id="9", content="other")], [Todo(id="1", content="fold")]]


def reads_end(history: list[Event]) -> int:
    """The seq of the last event written by `write_log` (before the third turn)."""
    return next(e.seq for e in history if isinstance(e, MessageCreatedEvent)
                and e.message.id == "u3") - 1

"""A long session's history: the projection kept in memory equals the pure one on real turns,
a finished turn's deltas are folded in the store once a later turn ends, and a reader resuming
inside a folded run gets a `reset`. Real containers, the scripted model, both transports (see
conftest.py)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_support import read_log, settled

from sandbox_sessions import (
    AssistantMessage,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Event,
    Message,
    TextPart,
)
from sandbox_sessions._types import ResetEvent, TextDeltaEvent
from sandbox_sessions.service._projection import Projector, project, todos

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


def head(store: Path, session_id: str) -> int:
    """The session's last stored seq."""
    with sqlite3.connect(store) as db:
        row = db.execute("SELECT MAX(last_seq) FROM events WHERE session_id=?",
                         (session_id,)).fetchone()
    return int(row[0])


async def folded(store: Path, session_id: str, *, upto: int, within: float = 30) -> None:
    """Return once the session's log is folded up to `upto` at least (the fold runs in the
    background after a turn ends)."""
    with anyio.fail_after(within):
        while True:
            with sqlite3.connect(store) as db:
                row = db.execute("SELECT upto FROM folded WHERE session_id=?",
                                 (session_id,)).fetchone()
            if row is not None and row[0] >= upto:
                return
            await anyio.sleep(0.05)


def answer_text(messages: Sequence[Message]) -> list[str]:
    return ["".join(p.text for p in m.parts if isinstance(p, TextPart))
            for m in messages if isinstance(m, AssistantMessage)]


async def test_a_reader_resuming_inside_a_folded_run_gets_a_reset_then_the_rest(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    script: list[dict[str, Any]] = [
        {"reasoning": "let me think this through", "text": "one two three four five six"},
        {"text": "second answer"}]
    agent = client.agent("history", model="scripted", script=script, image=image, tools=[])
    async with await agent.create_session() as session:
        await session.send("first")
        first = head(store_path, session.id)
        await session.send("second")  # its end folds the first turn's deltas
        await folded(store_path, session.id, upto=first)
        stored = await read_log(session, settled(2))
        messages = await session.get_messages()
        run = next(e for e in stored if isinstance(e, TextDeltaEvent))
        before = stored[stored.index(run) - 1].seq  # the event before the folded run
        inside = await read_log(session, settled(2), after=run.seq - 1)
        exact = await read_log(session, settled(2), after=before)

    assert run.delta == "one two three four five six"  # one event, not one per word
    assert run.seq - before > 2  # the seqs of the deltas it stands for are gone
    reset = inside[0]
    assert isinstance(reset, ResetEvent)
    assert (reset.seq, reset.session_id, reset.todos) == (run.seq, session.id, [])
    assert answer_text(reset.messages) == ["one two three four five six"]
    assert inside[1:] == [e for e in stored if e.seq > run.seq]
    assert project(inside) == messages == project(stored)
    assert exact == [e for e in stored if e.seq > before]  # from a run's edge: no reset


async def test_the_global_stream_resumed_inside_a_folded_run_gets_a_reset(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    words = " ".join(f"w{index}" for index in range(50))
    script: list[dict[str, Any]] = [{"text": words}, {"text": "second answer"}]
    agent = client.agent("history", model="scripted", script=script, image=image, tools=[])
    async with await agent.create_session() as session:
        await session.send("first")
        seen: list[tuple[str, Event]] = []
        with anyio.fail_after(30):
            async for cursor, event in client.events(after="0"):  # from the store's start
                seen.append((cursor, event))
                if sum(e.type == "text-delta" for _, e in seen) == 3:
                    break  # a reader that stops inside the first answer's run
        first = head(store_path, session.id)
        await session.send("second")  # its end folds the first turn's deltas
        await folded(store_path, session.id, upto=first)
        resumed: list[Event] = []
        with anyio.fail_after(30):
            async for _, event in client.events(after=seen[-1][0]):
                resumed.append(event)
                if sum(e.type == "turn-end" for e in resumed) == 2:  # the first's, the second's
                    break
        messages = await session.get_messages()

    reset = resumed[0]
    assert isinstance(reset, ResetEvent)
    assert answer_text(reset.messages) == [words]
    assert project(resumed) == messages  # nothing twice, nothing missing
    assert answer_text(messages) == [words, "second answer"]


async def test_a_stream_left_behind_by_a_fold_still_ends_with_its_whole_text(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    words = " ".join(f"w{index}" for index in range(20_000))
    script: list[dict[str, Any]] = [{"text": words}, {"text": "short"}]
    agent = client.agent("history", model="scripted", script=script, image=image, tools=[])
    async with await agent.create_session() as session:
        stream = session.stream("long")
        seen = [await anext(stream) for _ in range(10)]  # then it stops reading a while
        await idle(session)
        long_turn = head(store_path, session.id)
        await session.send("short")  # its end folds the long turn, under the reader
        await folded(store_path, session.id, upto=long_turn)
        with anyio.fail_after(60):
            seen += [event async for event in stream]
        messages = await session.get_messages()

    assert seen[-1].type == "turn-end"
    assert answer_text(project(seen)) == [words]  # nothing twice, nothing missing
    assert answer_text(messages) == [words, "short"]
    # One reset when the reader's place was folded under it; none when it had read the turn
    # before the fold (socket buffers over HTTP; a loaded machine's scheduling in-process).
    # The test above makes sure a resume inside a folded run gets its reset.
    assert len([event for event in seen if isinstance(event, ResetEvent)]) <= 1


async def idle(session: AsyncSessionHandle) -> None:
    with anyio.fail_after(30):
        while True:
            if (await session.get_info()).status == "idle":
                return
            await anyio.sleep(0.05)


def check_projector(events: list[Event], rng: random.Random) -> None:
    """A `Projector` fed `events` in random batches equals `project()` after each batch,
    with the messages reverts hide too, and from a random seq on (`messages(after=)`: the
    messages created after it, as the whole log shows them)."""
    projector = Projector()
    done = 0
    while done < len(events):
        done = min(len(events), done + rng.randint(1, 12))
        projector.apply(events[:done])  # what it has already is skipped
        shown = project(events[:done])
        assert projector.messages() == shown
        assert projector.messages(hidden=True) == project(events[:done], hidden=True)
        assert projector.todos() == todos(events[:done])
        cut = rng.randrange(done)
        after = events[cut - 1].seq if cut else 0
        later = {m.id for m in project(events[cut:done], hidden=True)}
        assert projector.messages(after=after) == [m for m in shown if m.id in later]


async def test_the_kept_projection_equals_the_pure_one_on_real_turns(
    embedded_client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    helper = embedded_client.agent("helper", model="scripted", image=image, tools=[],
                                   script=[{"text": "helped you"}])
    script: list[dict[str, Any]] = [
        {"reasoning": "first I think", "text": "running things",
         "tool_calls": [{"name": "bash", "input": {"command": "echo hi > hi.txt"}},
                        {"name": "todowrite", "input": {"todos": [
                            {"content": "fold", "status": "in_progress"}]}}]},
        {"text": "ran them"},
        {"text": "SUMMARY: ran things"},
        {"tool_calls": [{"name": "task", "input": {"agent": "helper", "prompt": "help",
                                                   "description": "Help"}}]},
        {"text": "all done"},
        {"text": "last"},
        {"text": "after the revert"}]
    agent = embedded_client.agent("history", model="scripted", script=script, image=image,
                                  tools=["bash", "todowrite", "task"],
                                  permissions={"bash": {"*": "allow"}},
                                  subagents={"helper": helper})
    async with await agent.create_session() as session:
        live: list[Event] = []
        async with anyio.create_task_group() as group:
            async def collect() -> None:
                async for event in session.events():
                    live.append(event)

            group.start_soon(collect)
            await session.send("go")
            await session.summarize()
            await session.send("delegate")
            delegated = head(store_path, session.id)
            await session.send("again")  # folds the turns before the last
            await folded(store_path, session.id, upto=delegated)
            prompts = [m for m in await session.get_messages() if m.role == "user"]
            await session.revert(prompts[-1].id)
            await session.unrevert()
            await session.revert(prompts[-2].id)  # hides "delegate" and "again"
            await session.send("after")
            stored = await read_log(session, settled(5))
            messages = await session.get_messages()
            group.cancel_scope.cancel()

    live = live[:len([e for e in live if e.seq <= stored[-1].seq])]
    kinds = {event.type for event in live}
    assert {"reasoning-delta", "text-delta", "tool-end", "todo-updated", "compaction",
            "subtask", "message-updated", "snapshot", "patch", "reverted",
            "unreverted"} <= kinds
    assert len(project(live, hidden=True)) - len(messages) == 4
    assert len(stored) < len(live)  # folded
    assert project(live) == project(stored) == messages
    rng = random.Random(8)
    for _ in range(3):
        check_projector(live, rng)
        check_projector(stored, rng)

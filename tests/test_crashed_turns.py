"""Every turn ends, even when the process running it is killed: the next process to look at
the session closes it, exactly once; a turn alive in another process is left alone."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from workers import read_line, spawn

from sandbox_sessions import (
    AssistantMessage,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Event,
    SessionBusy,
    ToolPart,
)
from sandbox_sessions._types import SessionStatusEvent, TurnEndEvent

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def stored_events(session: AsyncSessionHandle) -> list[Event]:
    """What the session's log holds now (`events()` never ends by itself)."""
    events: list[Event] = []
    with anyio.move_on_after(1):
        async for event in session.events():
            events.append(event)
    return events


async def sleepers(session: AsyncSessionHandle) -> str:
    """How many `sleep` processes run in the container, once the count is 0 or after 15 s."""
    count = ""
    with anyio.move_on_after(15):
        while count != "0":
            count = (await session.shell("pgrep -x sleep | wc -l")).stdout.strip()
            await anyio.sleep(0.2)
    return count


async def test_a_turn_whose_process_was_killed_is_closed_once_when_next_listed(
    store_path: Path, image: str
) -> None:
    with spawn("turn", str(store_path), image, "sleep 1000") as runner:
        session_id = read_line(runner)["session"]
        assert "running" in read_line(runner)  # its bash tool runs `sleep 1000` now
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)

    with (spawn("list", str(store_path)) as first, spawn("list", str(store_path)) as second,
          spawn("list", str(store_path)) as third):
        listers = (first, second, third)
        for lister in listers:
            assert read_line(lister)["ready"]
        for lister in listers:  # three processes notice the dead turn at the same moment
            assert lister.stdin is not None
            lister.stdin.write("go\n")
            lister.stdin.flush()
        listings = [read_line(lister)["listed"] for lister in listers]

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        session = client.session(session_id)
        events = await stored_events(session)
        messages = await session.get_messages()
        left = await sleepers(session)
        info = await session.get_info()
        again = await session.send("go on")  # the session is free again
        await session.end()

    assert listings == [[session_id]] * 3
    ends = [event for event in events if isinstance(event, TurnEndEvent)]
    assert [(end.reason, end.error) for end in ends] == [
        ("error", "interrupted: the process running this turn is gone")]
    assert isinstance(events[-1], SessionStatusEvent)
    assert events[-1].status == "idle"
    tool = next(part for part in messages[-1].parts if isinstance(part, ToolPart))
    assert (tool.state.status, tool.state.error) == ("error", "interrupted")
    assert left == "0"  # the command died with the process that ran the turn
    assert info.status == "idle"
    assert again.reason == "completed"
    assert again.text == "done"


async def test_opening_a_session_closes_its_dead_turn(store_path: Path, image: str) -> None:
    with spawn("turn", str(store_path), image, "sleep 1000") as runner:
        session_id = read_line(runner)["session"]
        assert "running" in read_line(runner)
    # the runner is killed (SIGKILL) and reaped on leaving the block

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        messages = await client.session(session_id).get_messages()  # first use: no listing
        await client.session(session_id).end()

    assert isinstance(messages[-1], AssistantMessage)
    assert messages[-1].error == "interrupted: the process running this turn is gone"
    tool = next(part for part in messages[-1].parts if isinstance(part, ToolPart))
    assert tool.state.status == "error"


async def test_a_turn_alive_in_another_process_is_left_alone(
    store_path: Path, image: str
) -> None:
    with spawn("turn", str(store_path), image, "sleep 1000") as runner:
        session_id = read_line(runner)["session"]
        assert "running" in read_line(runner)
        async with AsyncSandboxClient(store=store_path) as client:
            session = client.session(session_id)
            listed = [info.id for info in await client.list_sessions()]
            messages = await session.get_messages()
            events = await stored_events(session)
            with pytest.raises(SessionBusy):
                await session.send("me too")  # one turn at a time, across processes
            running = (await session.shell("pgrep -x sleep | wc -l")).stdout.strip()
            status = (await session.get_info()).status
        assert runner.poll() is None  # still running its turn, untouched
    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        await client.session(session_id).end()

    assert listed == [session_id]
    assert not any(isinstance(event, TurnEndEvent) for event in events)
    tool = next(part for part in messages[-1].parts if isinstance(part, ToolPart))
    assert tool.state.status == "running"
    assert running == "1"
    assert status == "busy"

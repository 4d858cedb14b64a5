"""Helpers shared by the agent tests: scripted sessions and bounded reads of the log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, Event, ToolPart
from sandbox_sessions._types import SessionStatusEvent, TurnEndEvent

Script = list[dict[str, Any]]


@asynccontextmanager
async def opened(
    client: AsyncSandboxClient, image: str, script: Script | str, **agent: Any
) -> AsyncIterator[AsyncSessionHandle]:
    """A new session of a scripted agent, ended however the test leaves it."""
    session = await client.agent("tester", model="scripted", script=script, image=image,
                                 **agent).create_session(title="agent test")
    async with session:
        yield session


async def read_log(
    session: AsyncSessionHandle, until: Callable[[list[Event]], bool], *, after: int = 0,
    within: float = 10,
) -> list[Event]:
    """The session's events after `after`, up to the first point where `until` holds (or
    what came within `within` seconds: `events()` never ends by itself)."""
    events: list[Event] = []
    with anyio.move_on_after(within):
        async for event in session.events(after=after):
            events.append(event)
            if until(events):
                break
    return events


def settled(turns: int) -> Callable[[list[Event]], bool]:
    """True once `turns` turns have ended and the session went idle after the last."""

    def check(events: list[Event]) -> bool:
        ends = sum(isinstance(event, TurnEndEvent) for event in events)
        last = events[-1]
        return ends == turns and isinstance(last, SessionStatusEvent) and last.status == "idle"

    return check


def tool_parts(parts: list[Any]) -> list[ToolPart]:
    return [part for part in parts if isinstance(part, ToolPart)]


T = TypeVar("T")


async def take(events: AsyncIterator[T], count: int) -> list[T]:
    """The first `count` items of `events`, within 5 s."""
    taken: list[T] = []
    with anyio.fail_after(5):
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


SLEEPING: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 30"}}]}, {"text": "done"}]
"""A script whose first turn runs `sleep 30` (allow bash): a session busy until aborted."""


async def wait_for(session: AsyncSessionHandle, kind: str) -> Event:
    """The first event of type `kind` in the session's log (within 30 s)."""
    with anyio.fail_after(30):
        async for event in session.events():
            if event.type == kind:
                return event
    raise AssertionError("events() ended")  # pragma: no cover


async def start_busy(session: AsyncSessionHandle, group: anyio.abc.TaskGroup,
                     prompt: str = "go") -> None:
    """Send `prompt` in `group` and return once its tool call runs (the session is then busy
    until the turn is aborted or ends)."""
    group.start_soon(session.send, prompt)
    await wait_for(session, "tool-running")

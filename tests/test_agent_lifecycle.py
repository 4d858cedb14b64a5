"""What happens to a turn when its client closes: it ends, stored, and leaves nothing running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_sessions import AsyncSandboxClient, Event

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SLEEPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 300"}}]},
    {"text": "ok"},
]


async def _stored_events(client: AsyncSandboxClient, session_id: str) -> list[Event]:
    events: list[Event] = []
    with anyio.move_on_after(1):
        async for event in client.session(session_id).events():
            events.append(event)
    return events


async def test_closing_the_client_mid_turn_ends_the_turn_and_kills_its_command(
    store_path: Path, image: str
) -> None:
    async with AsyncSandboxClient(store=store_path) as client:
        agent = client.agent("closer", model="scripted", script=SLEEPER, image=image)
        session = await agent.create_session()
        running = anyio.Event()

        async def consume() -> None:
            async for event in session.stream("go"):
                if event.type == "tool-running":
                    running.set()

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            with anyio.fail_after(30):
                await running.wait()
            group.cancel_scope.cancel()  # the consumer goes; the turn runs on until close

    async with AsyncSandboxClient(store=store_path) as client:
        events = await _stored_events(client, session.id)
        ends = [event for event in events if event.type == "turn-end"]
        sleepers = await client.session(session.id).shell("pgrep -x sleep | wc -l")
        info = await client.session(session.id).get_info()
        await client.session(session.id).end()

    assert [end.reason for end in ends] == ["aborted"]
    assert events[-1].type == "session-status"
    tool_end = next(event for event in events if event.type == "tool-end")
    assert tool_end.part.state.status == "error"
    assert tool_end.part.state.error == "aborted"
    assert sleepers.stdout.strip() == "0"
    assert info.status == "idle"

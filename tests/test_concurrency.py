"""Many things at once on one client: two turns on one session, bursts of sessions, and a
client closed while its calls still run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_sessions import (
    AsyncAgent,
    AsyncSandboxClient,
    AsyncSessionHandle,
    SandboxSessionsError,
    SendResult,
    SessionBusy,
)
from sandbox_sessions.sandbox._engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

ENGINE = Engine()

SLEEPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 300"}}]},
    {"text": "ok"},
]
QUICK: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 1"}}]},
    {"text": "done"},
]


async def test_two_sends_at_once_one_runs_the_other_is_busy(
    store_path: Path, image: str
) -> None:
    outcomes: list[SendResult | BaseException] = []

    async def send(session: AsyncSessionHandle) -> None:
        try:
            outcomes.append(await session.send("go"))
        except SessionBusy as exc:
            outcomes.append(exc)

    async with AsyncSandboxClient(store=store_path) as client:
        agent = client.agent("twice", model="scripted", script=QUICK * 2, image=image)
        async with await agent.create_session() as session:
            async with anyio.create_task_group() as group:
                group.start_soon(send, session)
                group.start_soon(send, session)
            after = await session.send("again")  # free once the first is over
    # leaving the client raised nothing: no KeyError, no ExceptionGroup

    results = [outcome for outcome in outcomes if isinstance(outcome, SendResult)]
    busy = [outcome for outcome in outcomes if isinstance(outcome, SessionBusy)]
    assert len(results) == 1
    assert len(busy) == 1
    assert results[0].reason == "completed"
    assert after.reason == "completed"


async def test_fifty_sessions_at_once_twenty_times_without_a_warning(
    store_path: Path, image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # the engine's pool says "full, discarding" at WARNING
    for _round in range(20):
        async with AsyncSandboxClient(store=store_path) as client:
            agent = client.agent("burst", image=image)
            sessions: list[AsyncSessionHandle] = []

            async def create() -> None:
                sessions.append(await agent.create_session())  # noqa: B023

            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(create)
            async with anyio.create_task_group() as group:
                for session in sessions:
                    group.start_soon(session.end)
        assert len(sessions) == 50
        assert [record.getMessage() for record in caplog.records] == []
    async with AsyncSandboxClient(store=store_path) as client:
        left = await client.list_sessions()

    assert left == []


async def _record(errors: list[BaseException], call: Callable[[], Awaitable[object]]) -> None:
    try:
        await call()
    except Exception as exc:
        errors.append(exc)


async def test_closing_the_client_while_calls_run_raises_only_our_errors(
    tmp_path: Path, store_path: Path, image: str
) -> None:
    errors: list[BaseException] = []
    running: list[str] = []
    both_running = anyio.Event()

    def on_event(event: Any) -> None:
        if event.type == "tool-running":
            running.append(event.session_id)
            if len(running) == 2:
                both_running.set()

    async def stream(session: AsyncSessionHandle) -> None:
        async for event in session.stream("go"):
            on_event(event)

    async def watch(session: AsyncSessionHandle) -> None:
        async for _ in session.events():
            pass

    made: list[str] = []

    async def create(agent: AsyncAgent) -> None:
        made.append((await agent.create_session()).id)

    with anyio.fail_after(120):
        # The calls run in a task group that outlives the client.
        async with anyio.create_task_group() as group, AsyncSandboxClient(
                store=store_path) as client:
            agent = client.agent("closer", model="scripted", script=SLEEPER, image=image)
            sender, streamer = await agent.create_session(), await agent.create_session()
            await streamer.shell("head -c 200000000 /dev/zero > /artifacts/big")
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: sender.send("go", on_event=on_event),
                lambda: stream(streamer),
                lambda: sender.shell("sleep 300"),
                lambda: streamer.shell("sleep 300"),
                lambda: watch(sender),
                lambda: streamer.download_artifacts(tmp_path / "out"),
                *[lambda: create(agent)] * 5,
            ]
            for call in calls:
                group.start_soon(_record, errors, call)
            await both_running.wait()  # both turns run their tools
        # closed here, with every call still running: closing raised nothing
    foreign = [exc for exc in errors if not isinstance(exc, SandboxSessionsError)]
    labels = {"sandbox-sessions.store": str(await anyio.Path(store_path).resolve())}
    containers = {c["Labels"]["sandbox-sessions.session"] for c in ENGINE.list_containers(labels)}

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as reopened:
        records = await reopened.list_sessions(include_ended=True)
        for record in records:
            await reopened.session(record.id).end()

    assert foreign == []
    # Each creation under way at close either made a whole session or left nothing.
    assert containers == {sender.id, streamer.id, *made}
    assert {record.id: record.status for record in records} == dict.fromkeys(containers, "idle")

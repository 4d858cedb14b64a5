"""Child processes of the multi-process tests: each runs the library on a store it shares with
the test. `spawn()` runs one; it reports on stdout, one JSON object a line.

    python tests/workers.py create <store> <image> <count>   make sessions, one after another
    python tests/workers.py gc <store> <stop-file>           open clients and gc until stopped
    python tests/workers.py turn <store> <image> <command>   run a turn whose bash tool runs
                                                             <command>, then wait to be killed
    python tests/workers.py list <store>                     list the store's sessions once a
                                                             line comes on stdin
    python tests/workers.py write <store> <session>          append a message and ten deltas
                                                             to a session's log; once a line
                                                             comes, ten more, then fold them
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def spawn(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Run a worker of this checkout's library, its stdin and stdout piped (`read_line`); it
    is killed (if still running) and reaped on exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, str(Path(__file__)), *args], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT) as process:
        try:
            yield process
        finally:
            process.kill()


def read_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The worker's next report; fails when it exits without one."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"worker exited with {process.wait()} before reporting"
    report: dict[str, Any] = json.loads(line)
    return report


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _create(store: str, image: str, count: str) -> None:
    from sandbox_sessions import AsyncSandboxClient

    async with AsyncSandboxClient(store=store) as client:
        agent = client.agent("worker", image=image)
        for _ in range(int(count)):
            session = await agent.create_session()
            _say(created=session.id)


async def _gc(store: str, stop: str) -> None:
    from sandbox_sessions import AsyncSandboxClient

    rounds = 0
    while not await anyio.Path(stop).exists():
        async with AsyncSandboxClient(store=store) as client:  # reaps at open, too
            await client.gc()
        rounds += 1
    _say(rounds=rounds)


async def _turn(store: str, image: str, command: str) -> None:
    from sandbox_sessions import AsyncSandboxClient, Event

    script: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "bash", "input": {"command": command}}]}, {"text": "done"}]
    async with AsyncSandboxClient(store=store) as client:
        agent = client.agent("worker", model="scripted", script=script, image=image)
        session = await agent.create_session()
        _say(session=session.id)

        def report(event: Event) -> None:
            if event.type == "tool-running":
                _say(running=event.part.call_id)

        await session.send("go", on_event=report)
        _say(finished=True)
        await anyio.sleep_forever()


async def _list(store: str) -> None:
    from sandbox_sessions import AsyncSandboxClient

    async with AsyncSandboxClient(store=store, reap_orphans=False) as client:
        _say(ready=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the go
        _say(listed=[info.id for info in await client.list_sessions()])


async def _write(store: str, session_id: str) -> None:
    from sandbox_sessions._types import (
        AssistantMessage,
        MessageCreatedEvent,
        MessageUpdatedEvent,
        TextDeltaEvent,
        TextPart,
        UserMessage,
    )
    from sandbox_sessions.service._eventlog import EventLog
    from sandbox_sessions.store._sqlite import SQLiteStore

    user = UserMessage(id="u1", session_id=session_id, time_created=1.0,
                       parts=[TextPart(id="t1", text="go")])
    answer = AssistantMessage(id="a1", session_id=session_id, parent_id="u1", model="x",
                              time_created=2.0)
    sqlite = SQLiteStore(store)
    async with anyio.create_task_group() as group:
        log = EventLog(sqlite, group)
        await log.open(session_id)
        log.emit(session_id, MessageCreatedEvent, message=user)
        log.emit(session_id, MessageCreatedEvent, message=answer)
        for index in range(20):
            if index == 10:
                await log.flush()
                _say(written=log.head(session_id) - 1)
                await anyio.to_thread.run_sync(sys.stdin.readline)  # the go
            log.emit(session_id, TextDeltaEvent, message_id="a1", part_id="p1",
                     delta=f"w{index} ")
        log.emit(session_id, MessageUpdatedEvent,
                 message=answer.model_copy(update={"time_completed": 3.0}))
        await log.flush()
        _say(removed=await sqlite.fold_deltas(session_id, upto=log.head(session_id)))
        group.cancel_scope.cancel()
    await sqlite.aclose()


COMMANDS: dict[str, Callable[..., Awaitable[None]]] = {
    "create": _create, "gc": _gc, "turn": _turn, "list": _list, "write": _write}

if __name__ == "__main__":
    anyio.run(COMMANDS[sys.argv[1]], *sys.argv[2:])

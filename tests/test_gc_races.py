"""The reaper against sessions being created, with real processes sharing one store: it never
takes a container whose creation is under way, and takes the one a dead creator left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from workers import read_line, spawn

from sandbox_sessions import AsyncAgent, AsyncSandboxClient, SessionEnded, SessionInfo
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

ENGINE = Engine()
CREATED = 6


def containers_of(session_id: str) -> list[str]:
    found = ENGINE.list_containers({"sandbox-sessions.session": session_id})
    return [str(container["Id"]) for container in found]


async def being_created(store: SQLiteStore) -> list[SessionInfo]:
    return [info for info in await store.list_sessions(include_ended=True)
            if info.status == "creating"]


async def test_a_reaper_in_a_loop_spares_every_session_being_created(
    tmp_path: Path, store_path: Path, image: str
) -> None:
    stop = tmp_path / "stop"
    with spawn("gc", str(store_path), str(stop)) as reaper:
        try:
            with spawn("create", str(store_path), image, str(CREATED)) as creator:
                created = [read_line(creator)["created"] for _ in range(CREATED)]
                assert creator.wait(timeout=120) == 0
        finally:
            stop.touch()
        reaped_rounds = read_line(reaper)["rounds"]
        assert reaper.wait(timeout=60) == 0

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        outputs = [(await client.session(sid).shell("echo alive")).stdout for sid in created]
        statuses = [(await client.session(sid).get_info()).status for sid in created]
        for session_id in created:
            await client.session(session_id).end()

    assert reaped_rounds > 0
    assert outputs == ["alive\n"] * CREATED
    assert statuses == ["idle"] * CREATED


async def test_a_creator_killed_mid_create_leaves_a_container_that_gc_removes(
    store_path: Path, image: str
) -> None:
    victim: SessionInfo | None = None
    store = SQLiteStore(store_path)  # opened once: its reads never wait for the creator
    with spawn("create", str(store_path), image, "100") as creator:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            os.kill(creator.pid, signal.SIGSTOP)  # frozen while we look: no race with it
            caught = [info for info in await being_created(store) if containers_of(info.id)]
            if caught:
                victim = caught[0]
                break
            os.kill(creator.pid, signal.SIGCONT)
            await anyio.sleep(0.01)
    await store.aclose()  # the creator is killed (SIGKILL) and reaped: its pid is gone
    assert victim is not None, "never caught a session between its container and its record"
    container = containers_of(victim.id)[0]

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as client:
        listed = [info.id for info in await client.list_sessions()]
        removed = await client.gc()
        record = await client.session(victim.id).get_info()
        survivors = [info for info in await client.list_sessions()]
        alive = [(await client.session(info.id).shell("echo ok")).stdout for info in survivors]
        for info in survivors:
            await client.session(info.id).end()

    assert victim.id not in listed  # a session being created is not listed as usable
    assert container in removed
    assert containers_of(victim.id) == []
    assert record.status == "ended"
    assert record.container_id is None
    assert alive == ["ok\n"] * len(survivors)  # what the creator finished is untouched


async def _create_into(agent: AsyncAgent, outcome: list[str | SessionEnded]) -> None:
    try:
        outcome.append((await agent.create_session()).id)
    except SessionEnded as exc:
        outcome.append(exc)


async def test_ending_a_session_being_created_fails_its_creation_and_leaves_nothing(
    store_path: Path, image: str
) -> None:
    async with (AsyncSandboxClient(store=store_path) as creator,
                AsyncSandboxClient(store=store_path, reap_orphans=False) as other):
        agent = creator.agent("build", image=image)
        ended: SessionInfo | None = None
        for _attempt in range(10):
            outcome: list[str | SessionEnded] = []
            async with anyio.create_task_group() as group:
                group.start_soon(_create_into, agent, outcome)
                while not outcome and ended is None:
                    creating = [info for info in await other.list_sessions(include_ended=True)
                                if info.status == "creating"]
                    if creating:
                        ended = await other.session(creating[0].id).end()
                    await anyio.sleep(0.005)
            if ended is not None:
                break
            assert isinstance(outcome[0], str)
            await creator.session(outcome[0]).end()  # made before we could look: again
        assert ended is not None, "never saw a session being created"
        record = await other.session(ended.id).get_info()

    assert isinstance(outcome[0], SessionEnded)
    assert outcome[0].session_id == ended.id
    assert containers_of(ended.id) == []
    assert record.status == "ended"

"""Orphan reaping on real containers: what `gc()` removes, and what it must leave alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, SessionInfo
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

ENGINE = Engine()


def running(container_id: str | None) -> bool:
    assert container_id is not None
    state = ENGINE.inspect(container_id)
    return state is not None and bool(state["State"]["Running"])


def exists(container_id: str | None) -> bool:
    assert container_id is not None
    return ENGINE.inspect(container_id) is not None


async def new_session(client: AsyncSandboxClient, image: str) -> tuple[AsyncSessionHandle, str]:
    session = await client.agent("build", image=image).create_session()
    container_id = (await session.get_info()).container_id
    assert container_id is not None
    return session, container_id


async def rewrite_store(store_path: Path, info: SessionInfo, change: str) -> None:
    """Change the session's row behind the client's back, through a second store connection."""
    store = SQLiteStore(store_path)
    try:
        if change == "ended":
            await store.put_session(info.model_copy(update={"status": "ended"}))
        elif change == "unknown":
            await store.delete_session(info.id)
        else:  # the row points at another container
            await store.put_session(info.model_copy(update={"container_id": "0" * 64}))
    finally:
        await store.aclose()


@pytest.mark.parametrize("change", ["ended", "unknown", "replaced"])
async def test_gc_reaps_containers_the_store_no_longer_owns(
    client: AsyncSandboxClient, image: str, store_path: Path, change: str
) -> None:
    orphan, orphan_container = await new_session(client, image)
    async with (await new_session(client, image))[0] as live:
        live_container = (await live.get_info()).container_id
        await rewrite_store(store_path, await orphan.get_info(), change)

        removed = await client.gc()

        assert orphan_container in removed
        assert not exists(orphan_container)
        assert live_container not in removed
        assert running(live_container)
        assert (await live.shell("echo still here")).stdout == "still here\n"


async def test_gc_leaves_live_sessions_alone(client: AsyncSandboxClient, image: str) -> None:
    session, container_id = await new_session(client, image)
    async with session:
        removed = await client.gc()

        assert container_id not in removed
        assert running(container_id)
        assert (await session.shell("true")).ok


async def test_gc_after_end_finds_nothing_of_that_session(
    client: AsyncSandboxClient, image: str
) -> None:
    session, container_id = await new_session(client, image)
    await session.end()

    assert container_id not in await client.gc()
    assert not exists(container_id)


async def test_any_client_reaps_containers_of_a_deleted_store(
    tmp_path: Path, store_path: Path, image: str
) -> None:
    doomed_store = tmp_path / "doomed" / "sessions.db"
    async with AsyncSandboxClient(store=doomed_store) as doomed:
        _, container_id = await new_session(doomed, image)
    assert running(container_id)  # closing a client leaves its sessions running
    shutil.rmtree(doomed_store.parent)

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as other:
        assert exists(container_id)  # reap_orphans=False: nothing happened at open
        removed = await other.gc()

    assert container_id in removed
    assert not exists(container_id)


async def test_opening_a_client_reaps_orphans(
    tmp_path: Path, store_path: Path, image: str
) -> None:
    doomed_store = tmp_path / "doomed" / "sessions.db"
    async with AsyncSandboxClient(store=doomed_store) as doomed:
        _, container_id = await new_session(doomed, image)
    shutil.rmtree(doomed_store.parent)

    async with AsyncSandboxClient(store=store_path):
        assert not exists(container_id)


async def test_sessions_of_another_live_store_are_not_reaped(
    tmp_path: Path, store_path: Path, image: str
) -> None:
    kept_store = tmp_path / "kept" / "sessions.db"
    async with AsyncSandboxClient(store=kept_store) as owner:
        session, container_id = await new_session(owner, image)

    try:
        async with AsyncSandboxClient(store=store_path) as other:
            removed = await other.gc()
        assert container_id not in removed
        assert running(container_id)
    finally:
        async with AsyncSandboxClient(store=kept_store) as owner:
            resumed = owner.session(session.id)
            assert (await resumed.shell("echo mine")).stdout == "mine\n"
            await resumed.end()
    assert not exists(container_id)


async def test_reopening_the_same_store_keeps_its_live_sessions(
    store_path: Path, image: str
) -> None:
    async with AsyncSandboxClient(store=store_path) as first:
        session, container_id = await new_session(first, image)

    async with AsyncSandboxClient(store=store_path) as second:  # reaps at open
        assert running(container_id)
        async with second.session(session.id) as resumed:
            assert (await resumed.shell("echo alive")).stdout == "alive\n"

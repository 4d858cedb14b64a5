"""A session's record: title, archived, pinned and metadata; listing with filters; an ended
session's record. Real containers and SQLite files, both transports (see conftest.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest
from agent_support import SLEEPING, start_busy

from sandbox_sessions import (
    AsyncSandboxClient,
    InvalidArgument,
    SessionEnded,
    SessionInfo,
    SessionNotFound,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def test_metadata_flags_and_title_are_kept_and_announced(
    client: AsyncSandboxClient, image: str
) -> None:
    agent = client.agent("build", image=image)
    async with await agent.create_session(title="t", metadata={"ci": "123"}) as session:
        assert (await session.get_info()).metadata == {"ci": "123"}

        updated = await session.update(title="renamed", archived=True, pinned=True,
                                       metadata={"ci": "124", "job/step": "lint"})
        assert (updated.title, updated.archived, updated.pinned, updated.metadata) == (
            "renamed", True, True, {"ci": "124", "job/step": "lint"})
        assert await session.get_info() == updated

        kept = await session.update(pinned=False)  # what is left None stays
        assert (kept.title, kept.archived, kept.pinned, kept.metadata) == (
            "renamed", True, False, {"ci": "124", "job/step": "lint"})
        assert (await session.shell("echo usable")).stdout == "usable\n"  # archived, usable

        events = []
        async for event in session.events():
            if event.type == "session-updated":
                events.append((event.title, event.archived, event.pinned, event.metadata))
            if len(events) == 2:
                break
    assert events == [("renamed", True, True, {"ci": "124", "job/step": "lint"}),
                      ("renamed", True, False, {"ci": "124", "job/step": "lint"})]


async def test_list_sessions_filters(client: AsyncSandboxClient, image: str) -> None:
    build, review = client.agent("build", image=image), client.agent("review", image=image)
    first = await build.create_session(title="first")
    archived = await build.create_session(title="archived")
    other = await review.create_session(title="other")
    ended = await build.create_session(title="ended")
    try:
        await archived.update(archived=True)
        await ended.end()

        def titles(infos: list[SessionInfo]) -> list[str]:
            return [info.title for info in infos]

        assert titles(await client.list_sessions()) == ["other", "first"]  # newest first
        assert titles(await client.list_sessions(archived=True)) == ["archived"]
        assert titles(await client.list_sessions(archived=None)) == ["other", "archived",
                                                                      "first"]
        assert titles(await client.list_sessions(agent="review")) == ["other"]
        assert titles(await client.list_sessions(agent="nobody")) == []
        assert titles(await client.list_sessions(status="ended")) == ["ended"]
        assert titles(await client.list_sessions(status="idle", agent="build")) == ["first"]
        assert titles(await client.list_sessions(include_ended=True, archived=None)) == [
            "ended", "other", "archived", "first"]
        with pytest.raises(InvalidArgument):
            await client.list_sessions(status="sleeping")  # type: ignore[arg-type]
    finally:
        for session in (first, archived, other):
            await session.end()


async def test_a_running_turn_lists_as_busy(client: AsyncSandboxClient, image: str) -> None:
    agent = client.agent("build", model="scripted", script=SLEEPING, image=image,
                         permissions={"bash": {"*": "allow"}})
    async with await agent.create_session() as session, anyio.create_task_group() as group:
        await start_busy(session, group)
        busy = [info.id for info in await client.list_sessions(status="busy")]
        idle = [info.id for info in await client.list_sessions(status="idle")]
        await session.abort()
    assert (busy, idle) == ([session.id], [])


async def test_an_ended_sessions_record_stays_readable_but_not_writable(
    client: AsyncSandboxClient, image: str
) -> None:
    session = await client.agent("build", image=image).create_session(metadata={"k": "v"})
    await session.end()

    info = await session.get_info()
    assert (info.status, info.metadata) == ("ended", {"k": "v"})
    assert await client.session(session.id).get_info() == info
    with pytest.raises(SessionEnded):
        await session.update(archived=True)
    assert await session.get_info() == info
    with pytest.raises(SessionNotFound):
        await client.session("ses_000000000000000000000000").update(pinned=True)


@pytest.mark.parametrize("metadata", [
    {f"k{n}": "v" for n in range(65)},
    {"": "empty key"},
    {"a key": "space"},
    {"k" * 65: "long key"},
    {"k": "v" * 1025},
    {"k": "nul\x00"},
    {"k": 1},
])
async def test_bad_metadata_is_refused_and_changes_nothing(
    client: AsyncSandboxClient, image: str, metadata: dict[str, object]
) -> None:
    agent = client.agent("build", image=image)
    with pytest.raises(InvalidArgument, match="metadata"):
        await agent.create_session(metadata=metadata)  # type: ignore[arg-type]
    async with await agent.create_session(metadata={"ok": "1"}) as session:
        with pytest.raises(InvalidArgument, match="metadata"):
            await session.update(metadata=metadata, title="not this")  # type: ignore[arg-type]
        info = await session.get_info()
    assert (info.metadata, info.title != "not this") == ({"ok": "1"}, True)
    assert len(await client.list_sessions(include_ended=True, archived=None)) == 1


async def test_records_from_before_these_fields_read_with_defaults(
    embedded_client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    session = await embedded_client.agent("build", image=image).create_session(title="old")
    with sqlite3.connect(store_path) as db:  # the record as an older version wrote it
        (raw,) = db.execute("SELECT info FROM sessions WHERE id = ?", (session.id,)).fetchone()
        record = json.loads(raw)
        for key in ("archived", "pinned", "metadata"):
            del record[key]
        db.execute("UPDATE sessions SET info = ? WHERE id = ?",
                   (json.dumps(record), session.id))
    try:
        info = await session.get_info()
        assert (info.title, info.archived, info.pinned, info.metadata) == ("old", False,
                                                                            False, {})
        assert [i.id for i in await embedded_client.list_sessions()] == [session.id]
    finally:
        await session.end()

"""Forks: a new session with the history and a copy of the workspace, then diverging; child
sessions listed. Real containers, both transports (see conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    CreateSessionRequest,
    InvalidArgument,
    SandboxClient,
    SessionNotFound,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

SCRIPT: list[dict[str, Any]] = [{"text": "one"}, {"text": "two"}, {"text": "three"},
                                {"text": "four"}]


async def _parent(client: AsyncSandboxClient, image: str) -> AsyncSessionHandle:
    agent = client.agent("build", model="scripted", script=SCRIPT, image=image)
    session = await agent.create_session(title="parent", metadata={"ci": "9"})
    await session.send("first")
    await session.send("second")
    await session.put_file("src/app.py", "print('v1')\n")
    await session.shell("chmod +x src/app.py && mkdir -p empty/dir")
    return session


async def test_a_fork_copies_history_and_workspace_then_diverges(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _parent(client, image) as parent, await parent.fork() as child:
        info = await child.get_info()
        copied = await child.shell("cat src/app.py; test -x src/app.py && echo x; "
                                   "test -d empty/dir && echo dir")
        await child.put_file("src/app.py", "print('v2')\n")
        await parent.put_file("parent-only.txt", "p")
        in_child = await child.shell("cat src/app.py; ls parent-only.txt 2>&1 || true")
        in_parent = await parent.get_file("src/app.py")
        answer = await child.send("third")
        parent_messages = await parent.get_messages()
        child_messages = await child.get_messages()
        children = await parent.children()
        listed = await client.list_sessions(parent_id=parent.id)
    assert (info.parent_id, info.title, info.metadata) == (parent.id, "parent (fork)",
                                                           {"ci": "9"})
    assert copied.stdout == "print('v1')\nx\ndir\n"
    assert in_child.stdout.startswith("print('v2')\n")
    assert "No such file" in in_child.stdout
    assert in_parent == "print('v1')\n"
    assert answer.text == "three"  # the script goes on after the copied model calls
    assert len(parent_messages) == 4
    assert [m.role for m in child_messages] == ["user", "assistant"] * 3
    assert [c.id for c in children] == [child.id] == [s.id for s in listed]


async def test_a_fork_at_a_message_takes_the_history_before_it(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _parent(client, image) as parent:
        second_prompt = (await parent.get_messages())[2]
        before = await client.list_sessions(include_ended=True, archived=None)
        with pytest.raises(InvalidArgument, match="no message"):
            await parent.fork("msg_unknown", workspace=False)
        assert await client.list_sessions(include_ended=True, archived=None) == before
        async with await parent.fork(second_prompt.id, workspace=False, title="t") as child:
            messages = await child.get_messages()
            files = await child.shell("ls -A")
    assert [m.role for m in messages] == ["user", "assistant"]
    assert files.stdout == ""


async def test_an_unknown_parent_is_refused(embedded_client: AsyncSandboxClient,
                                            image: str) -> None:
    request = CreateSessionRequest(agent="x", parent_id="ses_000000000000000000000000")
    with pytest.raises(SessionNotFound):
        await embedded_client.service.create_session(request)
    assert await embedded_client.list_sessions(include_ended=True) == []


def test_the_blocking_twin(sync_client: SandboxClient, image: str, tmp_path: Path) -> None:
    agent = sync_client.agent("build", image=image)
    with agent.create_session() as parent:
        parent.put_file("f.txt", "kept")
        with parent.fork(title="copy") as child:
            assert child.get_file("f.txt") == "kept"
            assert [c.id for c in parent.children()] == [child.id]

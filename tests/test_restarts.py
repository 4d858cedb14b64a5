"""A stopped container is not the end of its session: the call that was running gets
`ContainerDied`, the next one starts the container again with its files, and the log says so.
Only a removed container ends a session (see `test_bad_input.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sandbox_support import (
    assert_still_works,
    container_of,
    docker_cli,
    killed_mid_command,
    restarts,
)

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, ContainerDied
from sandbox_sessions.sandbox._container import SHELL_GRACE

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

KILLED = "exited with code 137 (killed)"


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("restarts", image=image).create_session() as handle:
        await handle.put_file("kept.txt", "written before")
        yield handle


async def assert_back_with_its_files(session: AsyncSessionHandle) -> None:
    """The container runs again with its files, and the helper is its PID 1 again."""
    result = await session.shell("cat kept.txt; echo; echo $PPID")
    assert result.stdout == "written before\n1\n"


async def test_killed_mid_command(session: AsyncSessionHandle) -> None:
    container = await container_of(session)
    died = await killed_mid_command(session)

    assert died.reason == KILLED
    await assert_back_with_its_files(session)
    assert await restarts(session) == [KILLED]
    assert (await docker_cli("inspect", "-f", "{{.Id}}", container)).strip() == container


async def test_stopped_between_calls(session: AsyncSessionHandle) -> None:
    # `docker stop` sends SIGTERM, which PID 1 does not take; the kill follows after 1 s.
    await docker_cli("stop", "-t", "1", await container_of(session))

    await assert_back_with_its_files(session)  # no call was running: none fails
    assert await restarts(session) == [KILLED]


async def test_stopped_then_resumed_by_another_process(
    session: AsyncSessionHandle, store_path: Path
) -> None:
    await docker_cli("stop", "-t", "1", await container_of(session))

    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as other:
        await assert_back_with_its_files(other.session(session.id))
    await assert_still_works(session)  # this process reconnects to the running container
    assert await restarts(session) == [KILLED]


async def test_oom_killed(client: AsyncSandboxClient, image: str) -> None:
    async with await client.agent("oom", image=image, memory="128m").create_session() as session:
        await session.put_file("kept.txt", "written before")
        # Only root can make the helper the OOM killer's choice; the hog lowers its own score.
        await docker_cli("exec", "-u", "0", await container_of(session), "sh", "-c",
                         "echo 1000 > /proc/1/oom_score_adj")
        with anyio.fail_after(60), pytest.raises(ContainerDied) as died:
            await session.shell(
                "echo 0 > /proc/self/oom_score_adj; python3 -c 'b = bytearray(512 << 20)'")

        assert died.value.reason == "oom-killed"
        await assert_back_with_its_files(session)
        assert await restarts(session) == ["oom-killed"]


async def test_paused(session: AsyncSessionHandle) -> None:
    container = await container_of(session)
    await docker_cli("pause", container)
    try:
        with anyio.fail_after(1 + SHELL_GRACE + 10), pytest.raises(ContainerDied) as died:
            await session.shell("echo late > late.txt", timeout=1)
    finally:
        state = await docker_cli("inspect", "-f", "{{.State.Status}}", container)

    assert state.strip() == "paused"  # the library did not resume it behind the call's back
    assert died.value.reason == "paused"
    await assert_back_with_its_files(session)
    assert await restarts(session) == ["paused"]

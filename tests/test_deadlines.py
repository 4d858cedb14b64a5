"""Timeouts are bounds, enforced on the host too: `shell(timeout=...)` returns within the
timeout plus `SHELL_GRACE` whatever the container does, and file calls give up once the helper
makes no progress for `FILE_IDLE_TIMEOUT`.

The bounds asserted here are generous (`fail_after`): they prove "does not hang", not speed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from sandbox_support import (
    assert_still_works,
    container_of,
    main_helper_host_pid,
    restarts,
    stopped_process,
)

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, OperationTimeout
from sandbox_sessions.sandbox._container import SHELL_GRACE
from sandbox_sessions.sandbox._runtime import FILE_IDLE_TIMEOUT

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MARGIN = 10.0
"""Slack on top of the documented bound, for a loaded machine."""


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("deadlines", image=image).create_session() as handle:
        yield handle


async def test_a_command_that_closed_its_output_and_runs_on(session: AsyncSessionHandle) -> None:
    with anyio.fail_after(1 + SHELL_GRACE + MARGIN):  # never the 100 s of the sleep
        result = await session.shell("echo begun; exec >&- 2>&-; sleep 100", timeout=1)

    assert (result.timed_out, result.exit_code, result.stdout) == (True, 124, "begun\n")
    left = await session.shell("pgrep -c -f '[s]leep 100'")
    assert left.stdout == "0\n"  # killed with its group, not left behind


async def test_zero_timeout_times_out_at_once(session: AsyncSessionHandle) -> None:
    with anyio.fail_after(SHELL_GRACE + MARGIN):
        result = await session.shell("sleep 5; echo too late", timeout=0)

    assert (result.timed_out, result.exit_code, result.stdout) == (True, 124, "")
    await assert_still_works(session)


async def test_a_wedged_helper_with_a_command(session: AsyncSessionHandle) -> None:
    await assert_still_works(session)
    helper = await main_helper_host_pid(await container_of(session))

    async with stopped_process(helper):
        with anyio.fail_after(1 + SHELL_GRACE + MARGIN):
            result = await session.shell("echo hi", timeout=1)
        assert (result.timed_out, result.exit_code, result.stdout) == (True, 124, "")

        await assert_still_works(session)  # through a new helper, while the old one is stopped
    await assert_still_works(session)
    assert await restarts(session) == []  # the container ran all along


async def test_a_wedged_helper_with_a_file_call(session: AsyncSessionHandle) -> None:
    await session.put_file("kept.txt", "kept")
    helper = await main_helper_host_pid(await container_of(session))

    async with stopped_process(helper):
        with anyio.fail_after(FILE_IDLE_TIMEOUT + SHELL_GRACE + MARGIN), \
                pytest.raises(OperationTimeout) as caught:
            await session.get_file("kept.txt")
        assert caught.value.retryable is True
        assert caught.value.code == "operation_timeout"

        assert await session.get_file("kept.txt") == "kept"  # retried: a new helper answers

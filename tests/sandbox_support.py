"""Helpers shared by the resilience tests: the container from outside, and the session's log."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import anyio.to_thread
from agent_support import read_log

from sandbox_sessions import AsyncSessionHandle, ContainerDied, Event
from sandbox_sessions._types import SandboxRestartedEvent, ShellRunEvent
from sandbox_sessions.sandbox._channel import HelperChannel
from sandbox_sessions.sandbox._container import HELPER_ARGV, open_channel
from sandbox_sessions.sandbox._engine import Engine

HELPER_MARK = "sandbox-sessions-helper"
"""In the command line of every helper (the name its source is compiled under)."""


async def docker_cli(*args: str) -> str:
    """Run the docker CLI; its stdout."""
    done = await anyio.run_process(["docker", *args])
    return done.stdout.decode()


async def container_of(session: AsyncSessionHandle) -> str:
    container = (await session.get_info()).container_id
    assert container is not None
    return container


async def assert_still_works(session: AsyncSessionHandle) -> None:
    result = await session.shell("echo still here")
    assert (result.exit_code, result.stdout) == (0, "still here\n")


async def killed_mid_command(session: AsyncSessionHandle) -> ContainerDied:
    """Kill the session's container from outside while a command runs; the call's error."""
    container = await container_of(session)
    started = anyio.Event()

    async def kill_when_started() -> None:
        await started.wait()
        await docker_cli("kill", container)

    with anyio.fail_after(120):  # long before the command's own 30 s would end it
        async with anyio.create_task_group() as group:
            group.start_soon(kill_when_started)
            try:
                await session.shell("echo begun; sleep 30", on_stdout=lambda _: started.set())
            except ContainerDied as died:
                return died
    raise AssertionError("the command outlived its container")


async def main_helper_host_pid(container: str) -> int:
    """The host pid of the container's oldest helper (its main process, in our image)."""
    listing = await docker_cli("top", container, "-eo", "pid,args")
    pids = [int(pid) for pid, args in (line.split(None, 1) for line in listing.splitlines()[1:])
            if args.startswith("python3") and HELPER_MARK in args]
    assert pids, listing
    return min(pids, key=_start_time)


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[19])


@asynccontextmanager
async def stopped_process(host_pid: int) -> AsyncIterator[None]:
    """SIGSTOP a container's process from the host (a wedged helper); SIGCONT at the end."""
    os.kill(host_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(host_pid, signal.SIGCONT)


async def restarts(session: AsyncSessionHandle) -> list[str]:
    """The reasons of every `sandbox-restarted` event so far (a marker command bounds the
    read: the log is read up to its `shell-run`)."""
    marker = "echo end-of-restarts"
    await session.shell(marker)

    def seen(events: list[Event]) -> bool:
        return any(isinstance(e, ShellRunEvent) and e.command == marker for e in events)

    events = await read_log(session, seen)
    assert seen(events), "the marker command never reached the log"
    return [event.reason for event in events if isinstance(event, SandboxRestartedEvent)]


@asynccontextmanager
async def second_helper(container: str) -> AsyncIterator[HelperChannel]:
    """A helper of our own in the container, started with `docker exec`, for raw frames."""
    engine = Engine()
    try:
        async with anyio.create_task_group() as tasks:
            sock = await anyio.to_thread.run_sync(
                partial(engine.exec_socket, container, HELPER_ARGV, user="1000:1000"))
            channel = await open_channel(sock, tasks)
            try:
                yield channel
            finally:
                await channel.aclose()
    finally:
        engine.close()

"""`DockerSandbox`: one session's container, as the rest of the library uses it.

It connects lazily, on the first command or file call, and keeps the session alive through
what can happen to a container:

- **Stopped** (killed, OOM-killed, its helper gone, the engine restarted): the call that was
  running raises `ContainerDied`; the next call starts the container again (its writable layer,
  so its files, survive a stop), reconnects, and reports the restart (`on_restart`).
- **Paused**: a call that runs into it raises `ContainerDied` (reason `paused`) once its
  deadline passes; the next call unpauses it and reports that the same way.
- **Removed**: `ContainerGone`, for good.
- **A helper that stops answering** (stopped, wedged) in a running container: the call gets its
  timed-out result, or `OperationTimeout`; the connection is dropped, and the next call starts
  a new helper.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from functools import partial
from importlib import resources
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from .._exceptions import (
    ContainerDied,
    ContainerGone,
    InvalidArgument,
    OperationTimeout,
    ProtocolError,
    SandboxError,
)
from .._types import SandboxOptions, ShellResult
from ._channel import CANCEL_WAIT, ChannelClosed, HelperChannel
from ._engine import Engine
from ._exec_runtime import ExecRuntime
from ._runtime import CANCEL_SETTLE, DONE_WAIT, CommandStalled, HelperRuntime
from ._tunnel import Listener, TunnelStream
from .base import FileEntry, RestartCallback, ShellRequest

T = TypeVar("T")

__all__ = ["DockerSandbox", "death_of", "open_channel", "start_attached"]

log: logging.Logger = logging.getLogger("sandbox_sessions.docker")

HELPER_MODULES = ("_helper_frames", "_helper_commands", "_helper_reads", "_helper_uploads",
                  "_helper_tunnels", "_helper")
"""The helper's modules, in the order they load: each imports only those before it, and the
last, `_helper`, runs the main loop."""


def helper_source() -> bytes:
    """The helper as one program: it makes each of `HELPER_MODULES` from its source, in order."""
    files = resources.files(__package__)
    lines = [
        "import sys, types",
        "def _module(name, source):",
        "    module = sys.modules[name] = types.ModuleType(name)",
        "    exec(compile(source, name + '.py', 'exec'), module.__dict__)",
    ]
    for name in HELPER_MODULES:
        source = files.joinpath(f"{name}.py").read_text(encoding="utf-8")
        lines.append(f"_module({name!r}, {source!r})")
    return "\n".join(lines).encode()


HELPER_SOURCE = helper_source()
# A short command line that reads the helper's source from stdin, so `ps` stays readable.
_STUB = (
    "import os\nn={size};s=b''\nwhile len(s)<n:s+=os.read(0,n-len(s)) or exit(1)\n"
    "exec(compile(s,'sandbox-sessions-helper','exec'))"
)
HELPER_ARGV = ["python3", "-c", _STUB.format(size=len(HELPER_SOURCE))]
HELLO_TIMEOUT = 15.0
STALL_CHECK = 1.5
"""Seconds spent finding out why a helper did not answer in time: a ping, then an inspect."""
SHELL_GRACE: float = DONE_WAIT + CANCEL_WAIT + CANCEL_SETTLE + STALL_CHECK
"""A command with a timeout returns within `timeout + SHELL_GRACE` (6 s), whatever the
container does: waiting for the helper's answer, cancelling, and finding out why."""


class _Runtime(Protocol):
    @property
    def closed(self) -> bool: ...

    async def shell(self, request: ShellRequest) -> ShellResult: ...

    def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]: ...

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None
    ) -> None: ...

    async def walk(self, root: str) -> list[FileEntry]: ...

    async def aclose(self) -> None: ...


async def open_channel(sock: socket.socket, task_group: anyio.abc.TaskGroup) -> HelperChannel:
    """Send the helper its source over `sock`, start reading, and wait for its greeting.

    Raises `ChannelClosed` or `TimeoutError` when no helper answers (no python3 in the image).
    """
    stream = await anyio.abc.SocketStream.from_socket(sock)
    channel = HelperChannel(stream)
    task_group.start_soon(channel.run)
    try:
        await stream.send(HELPER_SOURCE)
        with anyio.fail_after(HELLO_TIMEOUT):
            await channel.wait_ready()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await channel.aclose()
        raise
    return channel


async def start_attached(
    engine: Engine, container: str, task_group: anyio.abc.TaskGroup
) -> HelperChannel:
    """Attach to a created or stopped container of our image, start it, and greet the helper
    that is its main process (attached first, so nothing it says is missed)."""
    sock = await anyio.to_thread.run_sync(engine.attach_socket, container)
    try:
        await anyio.to_thread.run_sync(engine.start, container)
    except (SandboxError, InvalidArgument) as exc:
        sock.close()
        if type(exc) not in (SandboxError, InvalidArgument):
            raise
        # The runtime could not start the helper (no python3 in an image derived from ours):
        # the engine answers 400 (InvalidArgument) or 500; the container's state says which.
        state = await anyio.to_thread.run_sync(engine.inspect, container)
        raise death_of(state) or exc from exc
    except BaseException:
        sock.close()
        raise
    try:
        return await open_channel(sock, task_group)
    except (ChannelClosed, TimeoutError):
        state = await anyio.to_thread.run_sync(engine.inspect, container)
        raise death_of(state) or ProtocolError("the sandbox helper did not start") from None


def death_of(state: Mapping[str, Any] | None) -> SandboxError | None:
    """The error for a container in this inspect state, or None when it is running."""
    if state is None:
        return ContainerGone("the session's container is gone (removed outside the library)")
    status = state.get("State") or {}
    if status.get("Running") and not status.get("Paused"):
        return None
    if status.get("OOMKilled"):
        reason = "oom-killed"
    elif status.get("Paused"):
        reason = "paused"
    else:
        code = status.get("ExitCode")
        reason = f"exited with code {code}" + (" (killed)" if code == 137 else "")
    return ContainerDied(f"the session's container stopped: {reason}", reason=reason)


class DockerSandbox:
    """One session's container. Connects to it lazily, on the first command or file call, and
    starts (or unpauses) it again when a call finds it stopped (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        options: SandboxOptions,
        *,
        task_group: anyio.abc.TaskGroup,
        channel: HelperChannel | None = None,
        on_restart: RestartCallback | None = None,
    ) -> None:
        self._engine = engine
        self._container_id = container_id
        self._options = options
        self._task_group = task_group
        self._runtime: _Runtime | None = None if channel is None else HelperRuntime(channel)
        self._connect_lock = anyio.Lock()
        self._on_restart = on_restart
        # A call found the container in trouble: look at it again before the next call.
        self._suspect = False

    @property
    def id(self) -> str:
        return self._container_id

    async def _ensure_runtime(self) -> _Runtime:
        async with self._connect_lock:
            if self._runtime is not None and self._runtime.closed:
                await self._close_runtime()  # the helper went away between two calls
            # The exec fallback holds no connection that would tell of a stop: look each time.
            if self._runtime is None or self._suspect or isinstance(self._runtime, ExecRuntime):
                self._runtime = await self._connect()
                self._suspect = False
            return self._runtime

    async def _inspect(self) -> dict[str, Any] | None:
        return await anyio.to_thread.run_sync(
            self._engine.inspect, self._container_id, abandon_on_cancel=True)

    async def _connect(self) -> _Runtime:
        """Bring the container back if it stopped or was paused, then connect to it."""
        state = await self._inspect()
        trouble = death_of(state)
        if trouble is not None and not isinstance(trouble, ContainerDied):
            raise trouble  # removed: nothing to bring back
        channel = None
        if isinstance(trouble, ContainerDied):
            channel = await self._revive(state or {})
            log.warning("container %s was %s; it runs again", self._container_id[:12],
                        trouble.reason)
            if self._on_restart is not None:
                await self._on_restart(trouble.reason)
        if channel is not None:
            return HelperRuntime(channel)
        if self._runtime is not None and not self._runtime.closed:
            return self._runtime  # still connected: the container was only paused
        await self._close_runtime()
        return await self._exec_helper()

    async def _revive(self, state: Mapping[str, Any]) -> HelperChannel | None:
        """Unpause or start the container; our image's helper answers on the attach."""
        if (state.get("State") or {}).get("Paused"):
            await anyio.to_thread.run_sync(self._engine.unpause, self._container_id)
            return None
        await self._close_runtime()
        if (state.get("Config") or {}).get("OpenStdin"):  # the helper is its main process
            return await start_attached(self._engine, self._container_id, self._task_group)
        await anyio.to_thread.run_sync(self._engine.start, self._container_id)
        return None

    async def _exec_helper(self) -> _Runtime:
        sock = await anyio.to_thread.run_sync(
            partial(self._engine.exec_socket, self._container_id, HELPER_ARGV,
                    user=self._options.user)
        )
        try:
            return HelperRuntime(await open_channel(sock, self._task_group))
        except (ChannelClosed, TimeoutError):
            await self._raise_if_dead()
            log.info("no python3 helper in %s; using docker exec", self._container_id[:12])
            return ExecRuntime(self._engine, self._container_id, self._options)

    async def _raise_if_dead(self) -> None:
        # The engine may report the container running for a moment after its processes died.
        for _ in range(10):
            error = death_of(await self._inspect())
            if error is not None:
                self._suspect = True
                raise error
            await anyio.sleep(0.1)

    async def _after_stall(self) -> None:
        """A helper did not answer in time. Raise why when the container is paused or
        stopped; else drop the connection, unless a ping shows the helper alive."""
        runtime = self._runtime
        with anyio.move_on_after(STALL_CHECK):
            if isinstance(runtime, HelperRuntime):
                with anyio.move_on_after(STALL_CHECK / 2), suppress(ChannelClosed):
                    await runtime.ping()
                    return  # only that call was slow; the helper serves the others
            error: SandboxError | None = None
            with suppress(SandboxError):  # an engine that does not answer tells nothing
                error = death_of(await self._inspect())
            if error is not None:
                self._suspect = True
                raise error
        if runtime is self._runtime:
            await self._close_runtime()

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[_Runtime]:
        """Yield the runtime; turn a dropped connection into the reason the container died."""
        try:
            yield await self._ensure_runtime()
        except ChannelClosed:
            await self._close_runtime()  # the dropped connection's socket is still ours to close
            await self._raise_if_dead()
            raise ProtocolError(
                "the sandbox helper went away mid-call (killed?); the next call starts another"
            ) from None
        except OperationTimeout:
            await self._after_stall()
            raise
        except SandboxError as exc:
            if type(exc) is not SandboxError:  # a subclass already names what went wrong
                raise
            # An unnamed engine error (an exec into a stopped container is a 409 "is not
            # running"): say that the container died, where it did.
            error = death_of(await self._inspect())
            if error is None:
                raise
            self._suspect = True
            raise error from exc

    async def shell(self, request: ShellRequest) -> ShellResult:
        """See `Sandbox.shell`. With a timeout, returns within `timeout + SHELL_GRACE`."""
        if request.cwd is None:
            request = dataclasses.replace(request, cwd=self._options.workdir)
        try:
            async with self._guard() as runtime:
                return await runtime.shell(request)
        except CommandStalled as stalled:  # the container runs: its helper is mute
            return stalled.result

    async def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        """See `Sandbox.stream_file`."""
        async with self._guard() as runtime:
            async for chunk in runtime.stream_file(path, max_bytes=max_bytes):
                yield chunk

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None
    ) -> None:
        """See `Sandbox.write_file`."""
        async with self._guard() as runtime:
            await runtime.write_file(path, data, mode=mode)

    async def walk(self, root: str) -> list[FileEntry]:
        """See `Sandbox.walk`."""
        async with self._guard() as runtime:
            return await runtime.walk(root)

    @asynccontextmanager
    async def _through_helper(self, what: str, opened: Callable[[HelperRuntime],
                              AbstractAsyncContextManager[T]]) -> AsyncIterator[T]:
        """`opened(runtime)` entered for the block (`what` names it in the error of an image
        without the helper); the guard covers opening it, not the block."""
        async with AsyncExitStack() as stack:
            async with self._guard() as runtime:
                if not isinstance(runtime, HelperRuntime):
                    raise SandboxError(f"a loopback {what} needs the sandbox helper, which "
                                       "needs python3 in the image")
                entered = await stack.enter_async_context(opened(runtime))
            yield entered

    def listen(self, port: int = 0) -> AbstractAsyncContextManager[Listener]:
        """Listen on 127.0.0.1:`port` inside the container (0: any free port) for the block;
        each connection made there reaches the host through the helper (`_tunnel`). Leaving
        closes the listener and its connections. Needs the helper (python3 in the image)."""
        return self._through_helper("listener", lambda runtime: runtime.listen(port))

    def connect(self, port: int) -> AbstractAsyncContextManager[TunnelStream]:
        """A connection to a server listening on 127.0.0.1:`port` inside the container, for
        the block, tunnelled through the helper (`_tunnel.connect`)."""
        return self._through_helper("connection", lambda runtime: runtime.connect(port))

    async def _close_runtime(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            with anyio.CancelScope(shield=True):
                await runtime.aclose()

    async def aclose(self) -> None:
        """See `Sandbox.aclose`."""
        await self._close_runtime()


"""Commands and files over a `HelperChannel`: the fast path of the Docker sandbox.

Every call is bounded in time on the host, whatever the container does. A command with a
timeout gets the helper's answer until `timeout + DONE_WAIT`; past that the runtime cancels it
and raises `CommandStalled`, carrying a timed-out result with whatever output arrived. A file
call raises `OperationTimeout` once the helper makes no progress for `FILE_IDLE_TIMEOUT`.
`DockerSandbox` then finds out why (a paused or stopped container, or a wedged helper).
"""

from __future__ import annotations

import codecs
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio

from .._exceptions import (
    FileTooLarge,
    OperationTimeout,
    ProtocolError,
    SandboxError,
    SandboxFileNotFound,
    SandboxPermissionError,
)
from .._types import ShellResult
from ._channel import (
    ACK,
    DATA_IN,
    DATA_OUT,
    DONE,
    END_IN,
    ERR,
    FAIL,
    OUT,
    Call,
    HelperChannel,
    decode_json,
)
from ._tunnel import Listener, TunnelStream, connect, listen
from .base import FileEntry, OutputCallback, ShellRequest

log: logging.Logger = logging.getLogger("sandbox_sessions")

_KINDS: Mapping[str, Any] = {"f": "file", "d": "dir", "l": "link", "o": "other"}
# Why the helper refused to read a path that exists (its FAIL frame's `what`); the text is
# ours, not the container's.
_NOT_REGULAR: Mapping[str, str] = {
    "link": "is a symbolic link; links are not followed",
    "link_in_path": "a folder on its path is a symbolic link; links are not followed",
    "fifo": "is a FIFO, not a regular file",
    "socket": "is a socket, not a regular file",
    "char_device": "is a device, not a regular file",
    "block_device": "is a device, not a regular file",
    "pseudo": "is a kernel interface (/proc, /sys), not a regular file",
}
T = TypeVar("T")

DONE_WAIT = 2.5
"""Seconds past a command's timeout that its answer is awaited (the helper needs about 1 s to
kill the group and let its pipes close)."""
FILE_IDLE_TIMEOUT = 30.0
"""A file call fails with `OperationTimeout` when the helper makes no progress for this long."""
UPLOAD_CHUNK = 256 * 1024
CANCEL_SETTLE = 1.0
"""Seconds a cancelled command may take to be reported killed and reaped by the helper."""
UPLOAD_WINDOW = 16
"""Upload chunks sent ahead of the helper's ACKs: at most 4 MiB waits in the container."""


class CommandStalled(OperationTimeout):
    """The helper did not answer a command by its deadline; `result` is what the caller gets
    if the container turns out to be running (a wedged or mute helper)."""

    def __init__(self, result: ShellResult) -> None:
        super().__init__("the sandbox helper did not answer by the command's deadline")
        self.result = result


async def within(step: Awaitable[T], what: str) -> T:
    """Await one step of a file call; `OperationTimeout` past `FILE_IDLE_TIMEOUT`."""
    with anyio.move_on_after(FILE_IDLE_TIMEOUT):
        return await step
    raise OperationTimeout(
        f"the sandbox helper made no progress for {FILE_IDLE_TIMEOUT:g} s ({what})")


class OutputSink:
    """Collects one output stream: decodes it incrementally, feeds the callback, caps it."""

    def __init__(self, callback: OutputCallback | None, cap: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._callback = callback
        self._parts: list[str] = []
        self._room = cap
        self.truncated = False

    def feed(self, data: bytes) -> None:
        if len(data) > self._room:
            data, self.truncated = data[: self._room], True
        self._room -= len(data)
        self._emit(self._decoder.decode(data))

    def _emit(self, text: str) -> None:
        if text:
            self._parts.append(text)
            if self._callback is not None:
                self._callback(text)

    def finish(self) -> str:
        self._emit(self._decoder.decode(b"", final=True))
        return "".join(self._parts)


def sinks(request: ShellRequest) -> tuple[OutputSink, OutputSink]:
    """The stdout and stderr sinks of one command."""
    return (OutputSink(request.on_stdout, request.max_output),
            OutputSink(request.on_stderr, request.max_output))


def failure(payload: bytes, path: str) -> SandboxError:
    """The error for a FAIL frame about `path`."""
    body = decode_json(payload)
    kind, message = str(body.get("error")), str(body.get("message"))
    if kind == "not_found":
        return SandboxFileNotFound(path)
    if kind == "is_directory":
        return SandboxFileNotFound(path, "is a folder, not a file")
    if kind == "not_regular":
        return SandboxFileNotFound(path, _NOT_REGULAR.get(str(body.get("what")),
                                                          "is not a regular file"))
    if kind == "permission":
        return SandboxPermissionError(message)
    if kind == "too_large":
        return FileTooLarge(message)
    if kind in ("bad_request", "internal"):
        return ProtocolError(f"helper: {message}")
    # "no_space", "busy" (no pid left for a thread), "os_error": the message says it all.
    return SandboxError(message)


def shell_result(out: OutputSink, err: OutputSink, done: Mapping[str, Any]) -> ShellResult:
    """Build the result of a command from its two sinks and the DONE frame's fields."""
    return ShellResult(
        stdout=out.finish(),
        stderr=err.finish(),
        exit_code=int(done["exit_code"]),
        timed_out=bool(done.get("timed_out")),
        truncated=bool(done.get("truncated")) or out.truncated or err.truncated,
        duration=float(done.get("duration", 0.0)),
    )


class HelperRuntime:
    """Runs commands and moves files through the helper process in the container."""

    def __init__(self, channel: HelperChannel) -> None:
        self.channel = channel

    @property
    def closed(self) -> bool:
        """Whether the connection to the helper has ended."""
        return self.channel.closed

    async def shell(self, request: ShellRequest) -> ShellResult:
        """Run the command; `CommandStalled` when no answer came by `timeout + DONE_WAIT`."""
        out, err = sinks(request)
        message = {"op": "exec", "cmd": request.command, "cwd": request.cwd,
                   "env": dict(request.env), "timeout": request.timeout,
                   "max_output": request.max_output}
        started = anyio.current_time()
        limit = None if request.timeout is None else request.timeout + DONE_WAIT
        with anyio.move_on_after(limit):
            # Leaving early sends CANCEL and waits for the group to be gone (or CANCEL_SETTLE).
            async with self.channel.call(message, settle=CANCEL_SETTLE) as call:
                return await self._command(call, out, err, request.cwd)
        raise CommandStalled(ShellResult(
            stdout=out.finish(), stderr=err.finish(), exit_code=124, timed_out=True,
            truncated=out.truncated or err.truncated,
            duration=anyio.current_time() - started))

    @staticmethod
    async def _command(call: Call, out: OutputSink, err: OutputSink, cwd: str | None
                       ) -> ShellResult:
        while True:
            kind, payload = await call.receive()
            if kind == OUT:
                out.feed(payload)
            elif kind == ERR:
                err.feed(payload)
            elif kind == DONE:
                return shell_result(out, err, decode_json(payload))
            elif kind == FAIL:
                error = failure(payload, cwd or "working folder")
                if isinstance(error, SandboxFileNotFound):
                    raise SandboxFileNotFound(cwd or "", "no such working folder")
                raise error

    @asynccontextmanager
    async def _file_call(self, request: Mapping[str, Any]) -> AsyncIterator[Call]:
        async with AsyncExitStack() as stack:
            yield await within(stack.enter_async_context(self.channel.call(request)),
                               f"sending a {request['op']} request")

    async def ping(self) -> None:
        """Return once the helper answers; its main loop and threads are alive."""
        async with self.channel.call({"op": "ping"}) as call:
            await call.receive()

    async def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        async with self._file_call({"op": "read", "path": path, "max_bytes": max_bytes}) as call:
            while True:
                kind, payload = await within(call.receive(), f"reading {path}")
                if kind == DATA_OUT:
                    yield payload
                elif kind == DONE:
                    return
                elif kind == FAIL:
                    raise failure(payload, path)

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None
    ) -> None:
        """Upload `data` in chunks, never more than `UPLOAD_WINDOW` ahead of the helper;
        `OperationTimeout` once the helper took nothing for `FILE_IDLE_TIMEOUT`."""
        async with self._file_call({"op": "write", "path": path, "mode": mode}) as call:
            with anyio.CancelScope() as idle:
                await _upload(call, _chunked(data), path, _Idle(idle))
            if idle.cancelled_caught:
                raise OperationTimeout(f"the sandbox helper made no progress for "
                                       f"{FILE_IDLE_TIMEOUT:g} s (writing {path})")

    async def walk(self, root: str) -> list[FileEntry]:
        async with self._file_call({"op": "walk", "root": root}) as call:
            kind, payload = await within(call.receive(), f"listing {root}")
        if kind != DONE:
            raise failure(payload, root)
        body = decode_json(payload)
        try:
            entries = [FileEntry(path=str(path), kind=_KINDS[kind_code], size=int(size))
                       for path, kind_code, size in body["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"helper sent a malformed listing: {exc}") from exc
        if body.get("truncated"):  # the helper bounds a listing; say so rather than hide it
            log.warning("%s holds more entries than listed: only the first %d are used",
                        root, len(entries))
        return entries

    def listen(self, port: int = 0) -> AbstractAsyncContextManager[Listener]:
        """See `Listening.listen`; leaving waits up to `CANCEL_SETTLE` for the listener and its
        connections to be closed in the container."""
        return listen(self.channel, port, CANCEL_SETTLE)

    def connect(self, port: int) -> AbstractAsyncContextManager[TunnelStream]:
        """See `Connecting.connect`."""
        return connect(self.channel, port, CANCEL_SETTLE)

    async def aclose(self) -> None:
        await self.channel.aclose()


class _Idle:
    """The deadline of a transfer that moves on with each sign of progress. It is pushed
    back at most once a second: a deadline costs a timer, and a transfer makes thousands."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self._pushed = -math.inf
        self.progress()

    def progress(self) -> None:
        now = anyio.current_time()
        if now - self._pushed >= 1.0:
            self._pushed = now
            self._scope.deadline = now + FILE_IDLE_TIMEOUT


async def _chunked(data: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes | memoryview]:
    """`data` in pieces of `UPLOAD_CHUNK` bytes (the last one shorter)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), UPLOAD_CHUNK):
            yield view[start : start + UPLOAD_CHUNK]
        return
    pending = bytearray()
    async for piece in data:
        pending += piece
        while len(pending) >= UPLOAD_CHUNK:
            yield bytes(pending[:UPLOAD_CHUNK])
            del pending[:UPLOAD_CHUNK]
    if pending:
        yield bytes(pending)


async def _upload(
    call: Call, chunks: AsyncIterator[bytes | memoryview], path: str, idle: _Idle
) -> None:
    unacked = 0
    async for chunk in chunks:
        while unacked >= UPLOAD_WINDOW:
            unacked -= await _acked(call, path, idle, ending=False)
        await call.send(DATA_IN, chunk)
        idle.progress()
        unacked += 1
    await call.send(END_IN)
    while await _acked(call, path, idle, ending=True):
        pass


async def _acked(call: Call, path: str, idle: _Idle, *, ending: bool) -> int:
    """How many chunks the helper's next word on an upload acknowledges; 0 once it is done
    (which must come only after the end was sent)."""
    kind, payload = await call.receive()
    idle.progress()
    if kind == FAIL:
        raise failure(payload, path)
    if kind == DONE and ending:
        return 0
    if kind == DONE:
        raise ProtocolError("helper: an upload ended before its data")
    if kind != ACK or not payload.isdigit() or int(payload) < 1:
        raise ProtocolError(f"helper: unexpected frame {kind} in an upload")
    return int(payload)

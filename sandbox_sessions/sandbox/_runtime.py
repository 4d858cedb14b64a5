"""Commands and files over a `HelperChannel`: the fast path of the Docker sandbox."""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .._exceptions import (
    FileTooLarge,
    ProtocolError,
    SandboxError,
    SandboxFileNotFound,
    SandboxPermissionError,
)
from .._types import ShellResult
from ._channel import DATA_OUT, DONE, ERR, FAIL, OUT, HelperChannel, decode_json
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

    async def shell(self, request: ShellRequest) -> ShellResult:
        out, err = sinks(request)
        cwd = request.cwd
        message = {"op": "exec", "cmd": request.command, "cwd": cwd, "env": dict(request.env),
                   "timeout": request.timeout, "max_output": request.max_output}
        async with self.channel.call(message) as call:
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

    async def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        async with self.channel.call({"op": "read", "path": path, "max_bytes": max_bytes}) as call:
            while True:
                kind, payload = await call.receive()
                if kind == DATA_OUT:
                    yield payload
                elif kind == DONE:
                    return
                elif kind == FAIL:
                    raise failure(payload, path)

    async def write_file(self, path: str, data: bytes, *, mode: int | None) -> None:
        async with self.channel.call({"op": "write", "path": path, "mode": mode}) as call:
            await call.send_data(data)
            kind, payload = await call.receive()
            if kind == FAIL:
                raise failure(payload, path)

    async def walk(self, root: str) -> list[FileEntry]:
        async with self.channel.call({"op": "walk", "root": root}) as call:
            kind, payload = await call.receive()
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

    async def aclose(self) -> None:
        await self.channel.aclose()

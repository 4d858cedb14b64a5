"""Commands and files through `docker exec` and the archive API.

The fallback for images without python3, where the helper cannot run. It is slower (one exec
or archive call per operation, ~40 ms each) and weaker: a timeout relies on the image's
`timeout(1)`, which kills the command's process group, and cancelling a running command
cannot stop it inside the container. The host still bounds a command with a timeout: past
`timeout + EXEC_GRACE` it stops reading and returns it as timed out. File calls are bounded by
the engine client's own timeout (60 s without progress).
"""

from __future__ import annotations

import io
import posixpath
import shlex
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from functools import partial

import anyio
import anyio.from_thread
import anyio.to_thread

from .._exceptions import FileTooLarge, SandboxError, SandboxFileNotFound
from .._types import SandboxOptions, ShellResult
from ._archive import iter_tar_files
from ._engine import Engine
from ._runtime import shell_result, sinks
from .base import FileEntry, ShellRequest

EXEC_GRACE = 5.0
"""Seconds past its timeout that a command's output is read before the host gives up on it."""


class ExecRuntime:
    """Runs commands with `docker exec` and moves files as tar archives."""

    def __init__(self, engine: Engine, container: str, options: SandboxOptions) -> None:
        self._engine = engine
        self._container = container
        self._options = options

    @property
    def closed(self) -> bool:
        """Never: each call makes its own connection."""
        return False

    async def shell(self, request: ShellRequest) -> ShellResult:
        timeout = request.timeout
        argv = ["sh", "-c", request.command]
        if timeout is not None:  # `timeout 0` would mean no limit at all
            argv = ["timeout", "-k", "1", f"{max(timeout, 0.001):g}", *argv]
        out, err = sinks(request)
        started = anyio.current_time()
        exec_id, output = await anyio.to_thread.run_sync(
            partial(self._engine.exec_stream, self._container, argv,
                    user=self._options.user, workdir=request.cwd, env=request.env)
        )

        def pump() -> None:
            for stdout, stderr in output:
                if stdout:
                    anyio.from_thread.run_sync(out.feed, stdout)
                if stderr:
                    anyio.from_thread.run_sync(err.feed, stderr)

        with anyio.move_on_after(None if timeout is None else timeout + EXEC_GRACE) as late:
            try:
                await anyio.to_thread.run_sync(pump, abandon_on_cancel=True)
            except BaseException:  # cancelled, or past the grace: end the abandoned reader
                output.stop()
                raise
        code = None if late.cancelled_caught else await anyio.to_thread.run_sync(
            self._engine.exec_exit_code, exec_id)
        timed_out = timeout is not None and code in (124, None)
        done = {"exit_code": 124 if timed_out else (code if code is not None else -1),
                "timed_out": timed_out, "duration": anyio.current_time() - started}
        return shell_result(out, err, done)

    def _read_whole(self, path: str, max_bytes: int | None) -> bytes:
        chunks = self._engine.get_archive(self._container, path)
        for _key, kind, member, handle in iter_tar_files(chunks):
            if kind == "dir":
                raise SandboxFileNotFound(path, "is a folder, not a file")
            if handle is None:
                raise SandboxFileNotFound(path, "not a regular file")
            if max_bytes is not None and member.size > max_bytes:
                raise FileTooLarge(f"{path} is {member.size} bytes, over the cap of {max_bytes}")
            return handle.read()
        raise SandboxError(f"{path}: the engine sent an empty archive")

    async def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        yield await anyio.to_thread.run_sync(self._read_whole, path, max_bytes)

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None
    ) -> None:
        if not isinstance(data, bytes):  # the archive API takes the whole file at once
            data = b"".join([chunk async for chunk in data])
        folder = posixpath.dirname(path) or "/"
        await self.shell(ShellRequest(command=f"mkdir -p {shlex.quote(folder)}", timeout=30))
        member = tarfile.TarInfo(posixpath.basename(path))
        member.size, member.mode = len(data), 0o644 if mode is None else mode
        uid, _, gid = self._options.user.partition(":")
        if uid.isdigit():
            member.uid = member.gid = int(uid)
        if gid.isdigit():
            member.gid = int(gid)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.addfile(member, io.BytesIO(data))
        await anyio.to_thread.run_sync(
            self._engine.put_archive, self._container, folder, buffer.getvalue()
        )

    def _walk(self, root: str) -> list[FileEntry]:
        try:
            chunks = self._engine.get_archive(self._container, root)
        except SandboxFileNotFound:
            return []
        return [
            FileEntry(path=key, kind=kind, size=member.size)  # type: ignore[arg-type]
            for key, kind, member, _handle in iter_tar_files(chunks, strip=1)
            if key
        ]

    async def walk(self, root: str) -> list[FileEntry]:
        return await anyio.to_thread.run_sync(self._walk, root)

    async def aclose(self) -> None:
        return None

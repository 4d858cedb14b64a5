"""An agent CLI run inside the sandbox, its stdin and stdout a byte stream on the host.

The sandbox's shell has no stdin, so a CLI's stdio travels over the helper's tunnel
(`sandbox._tunnel`): the host listens on a loopback port in the container, and the command it
starts there is a small launcher (`LAUNCHER`, python3's standard library) that connects to
that port, proves it is the process just started (a random token, its first line), puts the
socket on its stdin and stdout and `exec`s the CLI. stderr stays the command's, kept capped
for the error message.

Every process the CLI starts inherits `RUN_MARKER=<token>` in its environment. Leaving the
block cancels the command (the helper kills its process group) and then kills every process
of the container still marked with the token, so a child that left the group (`setsid`, a
daemon) goes too.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from ..._exceptions import ProtocolError, SandboxError
from ..._types import ShellResult
from ...sandbox._tunnel import Listener, Listening, TunnelStream
from ...sandbox.base import Sandbox, ShellRequest

__all__ = ["MAX_LINE", "RUN_MARKER", "CliProcess", "StdioSandbox", "kill_marked", "launch"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness")

RUN_MARKER = "SANDBOX_SESSIONS_RUN"
MAX_LINE = 32 << 20
"""Bytes of one line of a CLI's output (a JSON message); a longer one is a `ProtocolError`."""
START_TIMEOUT = 60.0
"""Seconds the launcher may take to connect back."""
EXIT_WAIT = 3.0
"""Seconds a CLI that closed its stdout may take to exit before the block's end kills it
(so its exit code and stderr are known)."""
MAX_STDERR = 64 << 10
LAUNCHER = """
import os, socket, sys
port, token, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
sock = socket.create_connection(("127.0.0.1", port))
sock.sendall(token.encode() + b"\\n")
os.dup2(sock.fileno(), 0)
os.dup2(sock.fileno(), 1)
sock.close()
os.execvp(argv[0], argv)
"""
KILL_MARKED = """
import os, signal, sys
mark = ("%s=" % sys.argv[1]).encode() + sys.argv[2].encode() + b"\\0"
me = os.getpid()
for _ in range(3):
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read() + b"\\0"
        except OSError:
            continue
        if b"\\0" + mark in b"\\0" + env:
            found += 1
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
    if not found:
        break
"""


class StdioSandbox(Sandbox, Listening, Protocol):
    """A sandbox that runs commands and has loopback listeners (the Docker sandbox)."""


class CliProcess:
    """A CLI running in the sandbox: lines of its stdout in, bytes to its stdin out."""

    def __init__(self, stream: TunnelStream, name: str, first: bytes = b"") -> None:
        self._stream = stream
        self._buffer = bytearray(first)
        self.name = name
        self.result: ShellResult | None = None
        """How the command ended, once it has."""
        self.stderr_tail = ""
        self.stdout_ended = False
        """The CLI closed its stdout (it exited, most likely)."""
        self._write_lock = anyio.Lock()

    async def lines(self) -> AsyncIterator[bytes]:
        """Each line the CLI writes to stdout (without its newline), until it closes it."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                yield line
                continue
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"{self.name} wrote a line of over {MAX_LINE} bytes")
            chunk = await self._stream.receive()
            if not chunk:
                self.stdout_ended = True
                if self._buffer.strip():
                    yield bytes(self._buffer)
                self._buffer.clear()
                return
            self._buffer += chunk

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object the CLI writes, a line each; other lines are logged and skipped."""
        async for line in self.lines():
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                log.debug("%s: not JSON: %.200r", self.name, line)
                continue
            if isinstance(message, dict):
                yield message

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Write one JSON object and a newline to the CLI's stdin."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._write_lock:
            await self._stream.send(data)

    async def close_stdin(self) -> None:
        """End the CLI's stdin (it reads end of file) once what was sent is written."""
        await self._stream.aclose()


async def kill_marked(sandbox: Sandbox, token: str) -> None:
    """Kill every process in the sandbox whose environment carries the run's token."""
    command = shlex.join(["python3", "-c", KILL_MARKED, RUN_MARKER, token])
    try:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await sandbox.shell(ShellRequest(command=command, timeout=5, cwd="/"))
    except SandboxError as exc:
        log.debug("processes of run %s not looked for: %s", token[:8], exc)


@asynccontextmanager
async def launch(
    sandbox: StdioSandbox, argv: Sequence[str], *, env: Mapping[str, str], cwd: str,
    name: str,
) -> AsyncIterator[CliProcess]:
    """Start `argv` in the sandbox with its stdio connected to the host, for the block.
    Leaving kills it and every process it started. `SandboxError` (with its stderr) when it
    cannot start."""
    token = secrets.token_hex(16)
    ended = anyio.Event()
    holder: dict[str, Any] = {}
    stderr = bytearray()

    def on_stderr(text: str) -> None:
        stderr.extend(text.encode(errors="replace"))
        del stderr[:-MAX_STDERR]

    async def run(port: int) -> None:
        command = "exec " + shlex.join(["python3", "-c", LAUNCHER, str(port), token, *argv])
        request = ShellRequest(command=command, cwd=cwd, env={**env, RUN_MARKER: token},
                               timeout=None, max_output=MAX_STDERR, on_stderr=on_stderr)
        try:
            holder["result"] = await sandbox.shell(request)
        except SandboxError as exc:
            holder["error"] = exc
        finally:
            ended.set()

    async with sandbox.listen(0) as listener, anyio.create_task_group() as group:
        group.start_soon(run, listener.port)
        try:
            async with AsyncExitStack() as stack:
                waiting = anyio.CancelScope(deadline=anyio.current_time() + START_TIMEOUT)

                async def watch() -> None:
                    await ended.wait()
                    waiting.cancel()

                group.start_soon(watch)
                found = None  # stays None when the command ends first: `waiting` is cancelled
                with waiting:
                    found = await _connected(listener, stack, token)
                if found is None:
                    raise _not_started(name, holder, _tail(stderr), waiting.cancel_called
                                       and not ended.is_set())
                stream, rest = found
                process = CliProcess(stream, name, rest)
                try:
                    yield process
                finally:
                    if process.stdout_ended:
                        with anyio.move_on_after(EXIT_WAIT, shield=True):
                            await ended.wait()
                    process.stderr_tail = _tail(stderr)
                    process.result = holder.get("result")
        finally:
            group.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await kill_marked(sandbox, token)


def _tail(stderr: bytearray) -> str:
    return bytes(stderr[-4000:]).decode(errors="replace").strip()


async def _connected(listener: Listener, stack: AsyncExitStack, token: str
                     ) -> tuple[TunnelStream, bytes] | None:
    """The launcher's connection, the first that presents `token`, and what it sent after
    the token (kept open on `stack`); None once the listener is closed."""
    while True:
        sid = await listener.accept()
        if sid is None:
            return None
        candidate = AsyncExitStack()
        stream = await candidate.enter_async_context(listener.connection(sid))
        try:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = await stream.receive()
                if not chunk:
                    break
                data += chunk
        except BaseException:
            with anyio.CancelScope(shield=True):
                await candidate.aclose()
            raise
        first, _, rest = data.partition(b"\n")
        if secrets.compare_digest(first, token.encode()):
            stack.push_async_callback(candidate.aclose)
            return stream, rest
        with anyio.CancelScope(shield=True):
            await candidate.aclose()


def _not_started(name: str, holder: Mapping[str, Any], stderr: str, slow: bool
                 ) -> SandboxError:
    error, result = holder.get("error"), holder.get("result")
    why = (f"it did not connect within {START_TIMEOUT:.0f} s" if slow else
           f"it exited with {result.exit_code}" if result is not None else
           str(error) if error is not None else "it did not connect")
    return SandboxError(f"{name} could not start in the sandbox: {why}"
                        + (f": {stderr}" if stderr else ""))

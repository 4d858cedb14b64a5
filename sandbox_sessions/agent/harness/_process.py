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

__all__ = ["MAX_LINE", "RUN_MARKER", "Background", "CliProcess", "StdioSandbox", "kill_marked",
           "launch"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness")

RUN_MARKER = "SANDBOX_SESSIONS_RUN"
MAX_LINE = 32 << 20
"""Bytes of one line of a CLI's output (a JSON message); a longer one is a `ProtocolError`."""
START_TIMEOUT = 60.0
"""Seconds the launcher may take to connect back."""
MAX_STDERR = 64 << 10
EXIT_GRACE = 2.0
"""Seconds the launcher's connection is still waited for once the command has ended."""
LAUNCHER = """
import os, shutil, socket, sys
port, token, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if shutil.which(argv[0]) is None:
    sys.stderr.write("%s: command not found\\n" % argv[0])
    sys.exit(127)
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
        self.ended = False
        """Its stdout ended (it exited, or closed it)."""
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
                self.ended = True
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
        """End the CLI's stdin (it reads end of file) once what was sent is written; its
        output goes on until it closes it."""
        async with self._write_lock:
            await self._stream.shutdown_write()


async def kill_marked(sandbox: Sandbox, token: str) -> None:
    """Kill every process in the sandbox whose environment carries the run's token."""
    command = shlex.join(["python3", "-c", KILL_MARKED, RUN_MARKER, token])
    try:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await sandbox.shell(ShellRequest(command=command, timeout=5, cwd="/"))
    except SandboxError as exc:
        log.debug("processes of run %s not looked for: %s", token[:8], exc)


class Background:
    """A shell command run in the background: its end, how it ended, the tail of its output
    (`on_output` for stdout and stderr, kept to `MAX_STDERR` bytes)."""

    def __init__(self) -> None:
        self.ended = anyio.Event()
        self.result: ShellResult | None = None
        self.error: SandboxError | None = None
        self.output = bytearray()

    def on_output(self, text: str) -> None:
        self.output.extend(text.encode(errors="replace"))
        del self.output[:-MAX_STDERR]

    def tail(self) -> str:
        """The last lines of its output."""
        return bytes(self.output[-4000:]).decode(errors="replace").strip()

    async def run(self, sandbox: Sandbox, request: ShellRequest) -> None:
        """Run `request` to its end (or until cancelled: the helper kills its group)."""
        try:
            self.result = await sandbox.shell(request)
        except SandboxError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def why(self) -> str | None:
        """Why it ended, once it has."""
        if self.result is not None:
            return f"it exited with {self.result.exit_code}"
        return None if self.error is None else str(self.error)


@asynccontextmanager
async def launch(
    sandbox: StdioSandbox, argv: Sequence[str], *, env: Mapping[str, str], cwd: str,
    name: str,
) -> AsyncIterator[CliProcess]:
    """Start `argv` in the sandbox with its stdio connected to the host, for the block.
    Leaving kills it and every process it started. `SandboxError` (with its stderr) when it
    cannot start."""
    token = secrets.token_hex(16)
    command = Background()

    # What the block raised is raised again outside the task group, as it was: a bridge's
    # `Rejected` or `ContainerGone` must not come out wrapped in an exception group.
    failure: BaseException | None = None
    async with sandbox.listen(0) as listener, anyio.create_task_group() as group:
        line = "exec " + shlex.join(["python3", "-c", LAUNCHER, str(listener.port), token,
                                     *argv])
        group.start_soon(command.run, sandbox, ShellRequest(
            command=line, cwd=cwd, env={**env, RUN_MARKER: token}, timeout=None,
            max_output=MAX_STDERR, on_stderr=command.on_output))
        try:
            async with AsyncExitStack() as stack:
                waiting = anyio.CancelScope(deadline=anyio.current_time() + START_TIMEOUT)

                async def watch() -> None:
                    await command.ended.wait()
                    # a CLI that exits at once may have connected: its stream is read first
                    waiting.deadline = min(waiting.deadline, anyio.current_time() + EXIT_GRACE)

                group.start_soon(watch)
                found = None
                with waiting:
                    found = await _connected(listener, stack, token)
                if found is None:
                    slow = waiting.cancel_called and not command.ended.is_set()
                    why = (f"it did not connect within {START_TIMEOUT:.0f} s" if slow
                           else command.why() or "it did not connect")
                    tail = command.tail()
                    raise SandboxError(f"{name} could not start in the sandbox: {why}"
                                       + (f": {tail}" if tail else ""))
                stream, rest = found
                process = CliProcess(stream, name, rest)
                try:
                    yield process
                finally:
                    if process.ended:  # it is exiting: its status and stderr are near
                        with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_GRACE):
                            await command.ended.wait()
                    process.stderr_tail = command.tail()
                    process.result = command.result
        except BaseException as exc:
            failure = exc
        finally:
            group.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await kill_marked(sandbox, token)
    if failure is not None:
        raise failure


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

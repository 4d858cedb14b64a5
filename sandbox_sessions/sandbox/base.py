"""The `Sandbox` protocol: what the rest of the library needs of an isolated machine.

It names no engine: a Kubernetes pod can implement it as well as a Docker container. Docker's
implementation is `sandbox_sessions.sandbox.docker.DockerSandbox`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .._types import DEFAULT_MAX_OUTPUT, SandboxOptions, ShellResult

__all__ = [
    "FileEntry",
    "OutputCallback",
    "RestartCallback",
    "Sandbox",
    "SandboxBackend",
    "ShellRequest",
]

OutputCallback = Callable[[str], object]
"""Receives decoded output as it arrives, in order. It runs on the event loop: keep it short."""
RestartCallback = Callable[[str], Awaitable[None]]
"""Awaited with the reason (`"oom-killed"`, `"paused"`...) once a sandbox that was found
stopped or paused runs again, before the call that brought it back goes on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellRequest:
    """One shell command and how to run it; passed unchanged down the layers."""

    command: str
    timeout: float | None = None
    """Seconds before the process group is killed (0: at once); None waits for ever."""
    cwd: str | None = None
    """Working folder; None is the sandbox's workdir."""
    env: Mapping[str, str] = field(default_factory=dict)
    max_output: int = DEFAULT_MAX_OUTPUT
    """Bytes kept of stdout, and separately of stderr."""
    on_stdout: OutputCallback | None = None
    on_stderr: OutputCallback | None = None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of a folder walk, as the sandbox reports it (and so untrusted)."""

    path: str
    """Relative to the folder walked, `/`-separated."""
    kind: Literal["file", "dir", "link", "other"]
    size: int


@runtime_checkable
class Sandbox(Protocol):
    """One running, isolated machine belonging to one session."""

    @property
    def id(self) -> str:
        """The engine's id of the machine (a container id, a pod name)."""
        ...

    async def shell(self, request: ShellRequest) -> ShellResult:
        """Run `request.command` with bash (or sh), stdin closed, in its own process group.

        Output goes to the callbacks as it comes, and at most `max_output` bytes of each stream
        are kept. At `timeout` seconds the whole process group is killed and the result says
        `timed_out`; the call returns within a bounded grace past the timeout whatever the
        machine does (`ContainerDied` when it turns out stopped or paused). Cancelling the call
        kills the process group too.
        """
        ...

    def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        """The bytes of a regular file, in chunks; `FileTooLarge` past `max_bytes`.

        Never read through a link (at the end of `path` or on it), nor from a FIFO, device,
        socket or kernel (/proc, /sys) file: those raise `SandboxFileNotFound` at once.
        """
        ...

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None
    ) -> None:
        """Write `data` (bytes, or a stream of chunks) to `path` atomically, creating parent
        folders as needed. Nothing is at `path` until the whole of it is written."""
        ...

    async def walk(self, root: str) -> list[FileEntry]:
        """Every entry below `root`, without following links; empty when `root` is missing."""
        ...

    async def aclose(self) -> None:
        """Drop this process's connections to the machine; the machine keeps running."""
        ...


class SandboxBackend(Protocol):
    """Makes, finds and removes sandboxes. Each resource carries the given labels."""

    async def create(
        self,
        options: SandboxOptions,
        *,
        labels: Mapping[str, str],
        on_restart: RestartCallback | None = None,
    ) -> Sandbox:
        """Create and start a machine, ready for commands.

        A call that finds the machine stopped raises `ContainerDied`; the next call starts it
        again with its files, and awaits `on_restart` with the reason first.
        """
        ...

    async def attach(
        self, sandbox_id: str, options: SandboxOptions, *, on_restart: RestartCallback | None = None
    ) -> Sandbox:
        """A handle on an existing machine, stopped or not (its first call starts it again, as
        for `create`); `ContainerGone` if it no longer exists."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the machine at once, with no grace period; a missing one is not an error."""
        ...

    async def list_labelled(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        """The labels of every machine that carries all of `labels` (key `id` added)."""
        ...

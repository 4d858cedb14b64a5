"""Every type that crosses a boundary: results, session info, options.

This module is the one home of the wire and store types, so that the client, the service, the
store and (later) the HTTP server share them. What we emit is frozen and forbids extra fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_MAX_OUTPUT",
    "ArtifactDownload",
    "ArtifactInfo",
    "SandboxOptions",
    "SessionInfo",
    "SessionStatus",
    "ShellResult",
    "SkippedArtifact",
]

DEFAULT_IMAGE = "sandbox-sessions/sandbox:latest"
"""The image that `sandbox-sessions images build` builds and sessions use by default."""

DEFAULT_MAX_OUTPUT = 1024 * 1024
"""Bytes of stdout, and separately of stderr, that `shell()` keeps by default (1 MiB each)."""


class _Frozen(BaseModel):
    """Immutable, and refusing unknown fields: what we emit."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")


class SandboxOptions(_Frozen):
    """How a session's container is made. Every field has a safe default."""

    image: str = DEFAULT_IMAGE
    """The image to run; it must exist locally."""
    network: bool = False
    """Give the container a network (Docker's default bridge). Off by default: `none`."""
    memory: str = "1g"
    """Memory limit, in Docker's notation (`"512m"`, `"2g"`)."""
    cpus: float = Field(default=1.0, gt=0)
    """CPU limit, in cores."""
    pids: int = Field(default=512, gt=0)
    """Most processes the container may hold at once."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of the container, and so of every command run in it."""
    workdir: str = "/workspace"
    """Default working folder of shell commands."""
    user: str = "1000:1000"
    """The user commands run as; never root unless asked for."""


SessionStatus = Literal["idle", "ended"]


class SessionInfo(_Frozen):
    """What is known of a session without touching its container."""

    id: str
    title: str
    agent: str
    status: SessionStatus
    time_created: datetime
    time_updated: datetime
    container_id: str | None = None
    sandbox: SandboxOptions


class ShellResult(_Frozen):
    """The outcome of one shell command.

    `exit_code` is the command's exit status, or 128 + N when signal N ended it. A command
    stopped by its timeout has `timed_out=True` and `exit_code` 124, as with `timeout(1)`.
    `truncated` is true when stdout or stderr went past `max_output` and the rest was dropped.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    duration: float
    """Seconds from the start of the command to its end, measured in the container."""

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out


class ArtifactInfo(_Frozen):
    """One artifact: a regular file under `/artifacts`, keyed by its path relative to it."""

    key: str
    size: int


class SkippedArtifact(_Frozen):
    """An entry of `/artifacts` that a download refused to write, and why."""

    key: str
    reason: str


class ArtifactDownload(_Frozen):
    """What `download_artifacts()` wrote on the host."""

    destination: str
    files: list[str]
    """Keys written, each under `destination`."""
    bytes: int
    skipped: list[SkippedArtifact] = Field(default_factory=list)
    """Links, special files and unsafe names that were not written."""

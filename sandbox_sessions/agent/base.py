"""The `Tool` protocol: what the agent can do inside a session's sandbox.

Each tool call goes through the permission broker first (`permission_pattern` is what rules
match: the command line for bash, the path for file tools), then `run` executes it in the
sandbox. Tools are plain objects: register your own with `client.agent(..., tools=[...])`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._exceptions import ToolError
from .._types import ArtifactInfo, Todo
from ..sandbox.base import Sandbox

__all__ = ["Tool", "ToolContext", "ToolError", "ToolOutput"]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may use while it runs."""

    sandbox: Sandbox
    session_id: str
    call_id: str
    workdir: str
    """The session's working folder: relative paths are taken from here."""
    timeout: float = 120.0
    """Default time limit of commands the tool runs, in seconds."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The result of one call. `output` is kept whole in the tool part; the agent loop caps
    what it sends to the model."""

    output: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    is_error: bool = False
    todos: tuple[Todo, ...] | None = None
    """Set by `todowrite`: the session's new todo list."""
    artifact: ArtifactInfo | None = None
    """Set by `artifact`: the artifact the call saved."""


class Tool(Protocol):
    """A tool the model can call."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> Mapping[str, Any]:
        """A JSON Schema object for the call's input."""
        ...

    def permission_pattern(self, input: Mapping[str, Any], ctx: ToolContext) -> str:
        """The string permission rules match for this call (a command line, a path).

        `ctx` is the context the call will run with: file tools resolve a relative path
        against `ctx.workdir`, so a rule on `/etc/*` also catches `../etc/passwd`. Nothing
        runs in the sandbox. Raises `ToolError` for input the call would refuse anyway, so a
        malformed call fails before a permission is asked.
        """
        ...

    async def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """Carry the call out. Raise `ToolError` for a call that cannot be done as asked.

        Cancellation (an abort) must stop the work: commands started through `ctx.sandbox`
        have their process group killed when the call is cancelled.
        """
        ...

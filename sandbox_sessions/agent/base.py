"""The `Tool` protocol: what the agent can do inside a session's sandbox.

Each tool call goes through the permission broker first, then runs in the sandbox. What the
rules judge comes from the tool, in one of two ways:

- a plain `Tool` gives one string, `permission_pattern(input, ctx)` (sync, no I/O), and the
  loop then calls `run(input, ctx)`;
- a `PreparingTool` also has `async prepare(input, ctx)`, which may look into the sandbox
  (the built-in file tools resolve links there) and returns a `PreparedCall`: every pattern
  the rules judge, and the call to run once they allow it. The loop uses `prepare` whenever a
  tool has it, so that the call carried out is the one that was judged.

Tools are plain objects: register your own with `client.agent(..., tools=[...])`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._exceptions import ToolError
from .._types import ArtifactInfo, Todo
from ..sandbox.base import Sandbox

__all__ = ["PreparedCall", "PreparingTool", "Tool", "ToolContext", "ToolError", "ToolOutput"]


AskUser = Callable[[str, Sequence[str], bool], Awaitable[str | None]]
"""`(question, options, allow_custom)` to the answer, or None when none came in time."""
RunSubtask = Callable[[str, str, str], Awaitable[tuple[str, str]]]
"""`(agent, prompt, description)` to the child session's id and its final text; raises
`ToolError` when the subtask cannot run or does not complete."""


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
    ask_user: AskUser | None = None
    """Asks the user a question and waits (the `question` tool); None where nobody can
    answer."""
    run_subtask: RunSubtask | None = None
    """Runs a prompt in a child session of a named subagent (the `task` tool)."""


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


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A call made ready to run: what the rules judge, and how to carry it out."""

    patterns: Sequence[str]
    """Every string the permission rules judge, the call as written first (a file tool adds
    the path with links resolved). The strictest verdict over them all wins, and a permission
    request shows them all. Never empty."""
    run: Callable[[], Awaitable[ToolOutput]]
    """Carry the call out, on exactly what `patterns` named (see `Tool.run` for errors and
    cancellation)."""


class Tool(Protocol):
    """A tool the model can call."""

    @property
    def name(self) -> str:
        """The name the model calls it by: letters, digits, `_` and `-` (at most 64), as the
        providers' APIs allow. It is also the tool's key in permission rules."""
        ...

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
        malformed call fails before a permission is asked. Not called for a tool that has
        `prepare` (see `PreparingTool`).
        """
        ...

    async def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """Carry the call out. Raise `ToolError` for a call that cannot be done as asked.

        Cancellation (an abort) must stop the work: commands started through `ctx.sandbox`
        have their process group killed when the call is cancelled.
        """
        ...


@runtime_checkable
class PreparingTool(Tool, Protocol):
    """A `Tool` whose permission check needs to look into the sandbox first.

    The agent loop calls `prepare` instead of `permission_pattern`, judges every pattern of
    the `PreparedCall`, then awaits its `run` instead of the tool's. Its `run(input, ctx)`
    should do the same as preparing and running, so a direct call acts alike.
    """

    async def prepare(self, input: Mapping[str, Any], ctx: ToolContext) -> PreparedCall:
        """The call's patterns and the bound call; `ToolError` for input the call would refuse
        anyway, so it fails before a permission is asked. It may run read-only commands in
        `ctx.sandbox` (bound them by `ctx.timeout`); cancelling it must leave nothing behind.
        """
        ...

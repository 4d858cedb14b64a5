"""The built-in tools, and the registry that turns tool names into `Tool` objects.

| name | does | permission pattern |
| --- | --- | --- |
| bash | runs a command line in the workdir | the command line |
| read, write, edit | a text file's lines; a whole file; an exact replacement | the absolute path |
| list, glob, grep | one folder level; files by pattern; lines by regex | the folder (or file) |
| todowrite | replaces the session's todo list | `*` |
| artifact | copies a file to `/artifacts/<key>` | the absolute source path |

Every tool works through the `Sandbox` protocol only, and quotes each value it puts on a
command line. A call that cannot be done as asked raises `ToolError`; a sandbox that fails
(a dead container) raises the sandbox's own error.
"""

from __future__ import annotations

import posixpath
import shlex
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from .._exceptions import InvalidArgument
from .._types import ArtifactInfo, Todo
from ..sandbox._archive import unsafe_key_reason
from ..sandbox.base import ShellRequest
from ._file_tools import EditTool, GlobTool, GrepTool, ListTool, ReadTool, WriteTool
from ._tool_support import BuiltinTool, ToolInput, resolve_path
from .base import Tool, ToolContext, ToolError, ToolOutput

__all__ = [
    "BUILTIN_TOOLS",
    "ArtifactTool",
    "BashTool",
    "EditTool",
    "GlobTool",
    "GrepTool",
    "ListTool",
    "ReadTool",
    "TodoWriteTool",
    "WriteTool",
    "resolve_tools",
]

MAX_BASH_TIMEOUT = 600.0
"""Longest time limit a `bash` call may ask for, in seconds; longer asks are lowered to it."""
MAX_BASH_OUTPUT = 256 * 1024
"""Bytes of (merged) output a `bash` call keeps; the rest is dropped and flagged."""
ARTIFACTS = "/artifacts"


class _BashInput(ToolInput):
    command: str = Field(min_length=1, description="The command line to run with bash.")
    timeout: float | None = Field(
        default=None, gt=0,
        description=f"Time limit in seconds (at most {MAX_BASH_TIMEOUT:g}); the session's "
                    "default when not given.")
    description: str | None = Field(
        default=None, description="A few words saying what the command does.")


def _bash_output(text: str, *, exit_code: int, timed_out: bool, timeout: float,
                 truncated: bool) -> str:
    notes = []
    if truncated:
        notes.append(f"[output truncated after {MAX_BASH_OUTPUT} bytes]")
    if timed_out:
        notes.append(f"[timed out after {timeout:g} s]")
    elif exit_code != 0:
        notes.append(f"[exit code {exit_code}]")
    if not text and not notes:
        return "(no output)"
    body = text if not text or text.endswith("\n") or not notes else text + "\n"
    return body + "\n".join(notes)


class BashTool(BuiltinTool[_BashInput]):
    """`bash`: run a command line in the workdir, stdout and stderr merged in arrival order."""

    name = "bash"
    description = (
        "Run a bash command line in the sandbox, in the session's working folder, with stdin "
        "closed. Returns stdout and stderr merged, then '[exit code N]' when it failed or "
        "'[timed out after N s]' when it ran out of time (its processes are then killed)."
    )
    input_model = _BashInput

    def pattern(self, args: _BashInput, ctx: ToolContext) -> str:
        """The command line, as given."""
        return args.command

    async def execute(self, args: _BashInput, ctx: ToolContext) -> ToolOutput:
        """Run the command; a failing command is an output, not a `ToolError`."""
        timeout = min(args.timeout or ctx.timeout, MAX_BASH_TIMEOUT)
        # Redirecting in the shell itself keeps stdout and stderr in the order they came.
        result = await ctx.sandbox.shell(ShellRequest(
            command="exec 2>&1\n" + args.command, timeout=timeout, cwd=ctx.workdir,
            max_output=MAX_BASH_OUTPUT))
        text = result.stdout + result.stderr  # stderr holds only what the shell said first
        output = _bash_output(text, exit_code=result.exit_code, timed_out=result.timed_out,
                              timeout=timeout, truncated=result.truncated)
        title = args.description or args.command.split("\n", 1)[0][:80]
        return ToolOutput(output=output, title=title, metadata={
            "exit_code": result.exit_code, "timed_out": result.timed_out,
            "truncated": result.truncated, "duration": result.duration})


class _TodoInput(ToolInput):
    id: str = Field(min_length=1, description="A stable id for the item.")
    content: str = Field(min_length=1, description="What is to be done.")
    status: Literal["pending", "in_progress", "completed", "cancelled"]
    priority: Literal["high", "medium", "low"] = "medium"


class _TodoWriteInput(ToolInput):
    todos: list[_TodoInput] = Field(description="The whole updated todo list, in order.")


_MARKS = {"pending": "[ ]", "in_progress": "[~]", "completed": "[x]", "cancelled": "[-]"}


def _todo_summary(todos: Iterable[Todo]) -> str:
    items = list(todos)
    if not items:
        return "todo list cleared"
    counts: Counter[str] = Counter(todo.status for todo in items)
    head = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in _MARKS if counts[s])
    rows = [f"{_MARKS[t.status]} {t.content} (id {t.id}, {t.priority})" for t in items]
    return "\n".join([f"{len(items)} todos: {head}", *rows])


class TodoWriteTool(BuiltinTool[_TodoWriteInput]):
    """`todowrite`: replace the session's todo list; the loop records `ToolOutput.todos`."""

    name = "todowrite"
    description = (
        "Replace your todo list for this task with the given one (send every item, not just "
        "the changed ones). Status: pending, in_progress, completed or cancelled; priority: "
        "high, medium or low. Keep one item in_progress at a time."
    )
    input_model = _TodoWriteInput

    def pattern(self, args: _TodoWriteInput, ctx: ToolContext) -> str:
        """Always `*`: the list lives in the session, not the sandbox."""
        return "*"

    async def execute(self, args: _TodoWriteInput, ctx: ToolContext) -> ToolOutput:
        """Check the ids are unique and return the list; nothing runs in the sandbox."""
        repeated = sorted(i for i, n in Counter(t.id for t in args.todos).items() if n > 1)
        if repeated:
            raise ToolError(f"todo ids must be unique; repeated: {', '.join(repeated)}")
        todos = tuple(Todo(**todo.model_dump()) for todo in args.todos)
        return ToolOutput(output=_todo_summary(todos), title=f"{len(todos)} todos",
                          metadata={"count": len(todos)}, todos=todos)


class _ArtifactInput(ToolInput):
    path: str = Field(description="The file to save, absolute or relative to the workdir.")
    key: str | None = Field(
        default=None,
        description="Its name under /artifacts, such as 'reports/test.xml'; the file's name "
                    "by default.")


def _copy_command(source: str, target: str) -> str:
    src, dst = shlex.quote(source), shlex.quote(target)
    return (
        f"if [ ! -f {src} ]; then echo 'no such file' >&2; exit 2; fi\n"
        f"mkdir -p -- {shlex.quote(posixpath.dirname(target))} && rm -f -- {dst} && "
        f"cp -- {src} {dst} && wc -c < {dst}"
    )


class ArtifactTool(BuiltinTool[_ArtifactInput]):
    """`artifact`: copy a file from the sandbox to `/artifacts/<key>`, inside the sandbox."""

    name = "artifact"
    description = (
        "Save a file as a named artifact of this session (a build output, a report) so the "
        "user can download it. key is its name under /artifacts, the file's name by default."
    )
    input_model = _ArtifactInput

    async def execute(self, args: _ArtifactInput, ctx: ToolContext) -> ToolOutput:
        """Copy the file (any size: it never leaves the sandbox); `ToolError` for a bad key."""
        source = resolve_path(ctx, args.path)
        key = args.key if args.key is not None else posixpath.basename(source)
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise ToolError(f"artifact key {key!r} refused: {reason}")
        result = await ctx.sandbox.shell(ShellRequest(
            command=_copy_command(source, f"{ARTIFACTS}/{key}"), timeout=ctx.timeout, cwd="/"))
        size = result.stdout.strip()
        if not result.ok or not size.isdigit():
            problem = "timed out" if result.timed_out else result.stderr.strip()
            raise ToolError(f"cannot save {source} as artifact {key!r}: {problem}")
        info = ArtifactInfo(key=key, size=int(size))
        return ToolOutput(output=f"saved {source} as artifact {key!r} ({info.size} bytes)",
                          title=key, metadata={"key": key, "size": info.size, "path": source},
                          artifact=info)


def _builtins() -> dict[str, Tool]:
    tools: list[Tool] = [BashTool(), ReadTool(), WriteTool(), EditTool(), ListTool(), GlobTool(),
                         GrepTool(), TodoWriteTool(), ArtifactTool()]
    return {tool.name: tool for tool in tools}


BUILTIN_TOOLS: dict[str, Tool] = _builtins()
"""Every built-in tool by name. The tools hold no state, so one instance serves every session."""


def resolve_tools(names_or_tools: Iterable[str | Tool]) -> list[Tool]:
    """Tool objects for a mix of built-in names and `Tool` objects, in the order given.

    Raises `InvalidArgument` for an unknown name or for two tools with the same name.
    """
    resolved: list[Tool] = []
    for item in names_or_tools:
        if isinstance(item, str):
            if item not in BUILTIN_TOOLS:
                known = ", ".join(sorted(BUILTIN_TOOLS))
                raise InvalidArgument(f"unknown tool {item!r}; the built-in tools are {known}")
            item = BUILTIN_TOOLS[item]
        resolved.append(item)
    names = Counter(tool.name for tool in resolved)
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise InvalidArgument(f"tools named more than once: {', '.join(repeated)}")
    return resolved

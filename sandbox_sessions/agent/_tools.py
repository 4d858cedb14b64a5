"""The built-in tools, and the registry that turns tool names into `Tool` objects.

| name | does | permission pattern |
| --- | --- | --- |
| bash | runs a command line in the workdir | the command line |
| read, write, edit | a text file's lines; a whole file; an exact replacement | the absolute path |
| list, glob, grep | one folder level; files by pattern; lines by regex | the folder (or file) |
| todowrite | replaces the session's todo list | `*` |
| artifact | copies a file to `/artifacts/<key>` | the absolute source path |
| question | asks the user and waits for the answer (not in the default set) | `*` |
| task | runs a prompt in a child session of a subagent (not in the default set) | the agent |

A path is judged as written and with its links resolved in the container, and the tool acts
on the resolved one (see `_tool_support.PathTool`).

Every tool works through the `Sandbox` protocol only, and quotes each value it puts on a
command line. A call that cannot be done as asked raises `ToolError`; a sandbox that fails
(a dead container) raises the sandbox's own error.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field

from .._exceptions import InvalidArgument
from .._types import ArtifactInfo, Todo
from ..sandbox._archive import unsafe_key_reason
from ..sandbox.base import ShellRequest
from ._file_tools import EditTool, GlobTool, GrepTool, ListTool, ReadTool, WriteTool
from ._tool_support import BuiltinTool, PathTool, Target, ToolInput, real_paths
from .base import PreparedCall, Tool, ToolContext, ToolError, ToolOutput

__all__ = [
    "BUILTIN_TOOLS",
    "ArtifactTool",
    "BashTool",
    "EditTool",
    "GlobTool",
    "GrepTool",
    "ListTool",
    "QuestionTool",
    "ReadTool",
    "TaskTool",
    "TodoWriteTool",
    "WriteTool",
    "agent_tools",
    "check_rule_keys",
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
    id: str | None = Field(default=None, min_length=1,
                           description="A stable id for the item; assigned when left out.")
    content: str = Field(min_length=1, description="What is to be done.")
    status: Literal["pending", "in_progress", "completed", "cancelled"]
    priority: Literal["high", "medium", "low"] = "medium"
    active_form: str | None = Field(
        default=None, alias="activeForm",
        description="What is being done, as in 'Running tests' (accepted, not kept).")


class _TodoWriteInput(ToolInput):
    todos: list[_TodoInput] = Field(description="The whole updated todo list, in order.")


_MARKS = {"pending": "[ ]", "in_progress": "[~]", "completed": "[x]", "cancelled": "[-]"}


def _todo_ids(items: list[_TodoInput]) -> list[str]:
    """Each item's id: its own, else one derived from its content ("t" and 8 hex digits of its
    SHA-256), so an item keeps its id while its text is unchanged, whatever its place or
    status. A derived id that is already taken gets "-2", "-3"... appended."""
    taken = {item.id for item in items if item.id is not None}
    ids = []
    for item in items:
        if item.id is not None:
            ids.append(item.id)
            continue
        base = "t" + hashlib.sha256(item.content.encode("utf-8")).hexdigest()[:8]
        candidate, count = base, 1
        while candidate in taken:
            count += 1
            candidate = f"{base}-{count}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


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
        """Check the given ids are unique, assign the missing ones (see `_todo_ids`) and
        return the list; nothing runs in the sandbox."""
        given = Counter(t.id for t in args.todos if t.id is not None)
        repeated = sorted(i for i, n in given.items() if n > 1)
        if repeated:
            raise ToolError(f"todo ids must be unique; repeated: {', '.join(repeated)}")
        todos = tuple(
            Todo(id=id, content=t.content, status=t.status, priority=t.priority)
            for id, t in zip(_todo_ids(args.todos), args.todos, strict=True))
        return ToolOutput(output=_todo_summary(todos), title=f"{len(todos)} todos",
                          metadata={"count": len(todos)}, todos=todos)


MAX_QUESTION = 4096
MAX_OPTIONS = 20
MAX_OPTION = 500


class _QuestionInput(ToolInput):
    question: str = Field(min_length=1, max_length=MAX_QUESTION,
                          description="The question, complete in itself.")
    options: list[str] = Field(
        default_factory=list, max_length=MAX_OPTIONS,
        description="Answers to choose from, if any (short, distinct).")
    allow_custom: bool = Field(
        default=True, description="Whether the user may answer something else than an option.")


class QuestionTool(BuiltinTool[_QuestionInput]):
    """`question`: ask the user and wait for the answer (`reply_to_question`)."""

    name = "question"
    description = (
        "Ask the user a question when you cannot go on without their decision, and wait for "
        "the answer. Offer options when the choice is among a few; set allow_custom to false "
        "if only they are acceptable."
    )
    input_model = _QuestionInput

    def pattern(self, args: _QuestionInput, ctx: ToolContext) -> str:
        """Always `*`: nothing runs in the sandbox."""
        return "*"

    async def execute(self, args: _QuestionInput, ctx: ToolContext) -> ToolOutput:
        """Publish the question and wait; the answer is the call's output."""
        options = [option.strip() for option in args.options]
        if any(not option or len(option) > MAX_OPTION for option in options):
            raise ToolError(f"each option must be 1 to {MAX_OPTION} characters")
        if len(set(options)) != len(options):
            raise ToolError("the options must be distinct")
        if ctx.ask_user is None:
            raise ToolError("nobody can answer questions in this session")
        answer = await ctx.ask_user(args.question, options, args.allow_custom or not options)
        if answer is None:
            raise ToolError("the user did not answer in time; decide without them, or stop")
        return ToolOutput(output=f"The user answered: {answer}", title=args.question[:80],
                          metadata={"answer": answer})


class _TaskInput(ToolInput):
    agent: str = Field(min_length=1, description="The subagent to hand the work to.")
    prompt: str = Field(min_length=1, description="The whole task, complete in itself: the "
                                                  "subagent sees nothing else.")
    description: str = Field(default="", max_length=200,
                             description="A few words saying what the task is.")


class TaskTool(BuiltinTool[_TaskInput]):
    """`task`: run a prompt in a child session of a named subagent (its own container) and
    return its final answer. The rules judge the agent's name."""

    name = "task"
    input_model = _TaskInput

    def __init__(self, agents: Mapping[str, str] | None = None) -> None:
        self._agents = dict(agents or {})

    @property
    def description(self) -> str:  # type: ignore[override]
        """The tool's description, with the subagents of this session."""
        listed = "\n".join(f"- {name}: {text}" if text else f"- {name}"
                            for name, text in sorted(self._agents.items()))
        return ("Hand a self-contained task to a subagent, which works in a sandbox of its "
                "own and answers with its result. Subagents:\n" + (listed or "(none)"))

    def pattern(self, args: _TaskInput, ctx: ToolContext) -> str:
        """The subagent's name."""
        return args.agent

    async def execute(self, args: _TaskInput, ctx: ToolContext) -> ToolOutput:
        """Run the subtask and wait for its answer."""
        if ctx.run_subtask is None:
            raise ToolError("subtasks cannot run in this session")
        child, text = await ctx.run_subtask(args.agent, args.prompt, args.description)
        return ToolOutput(output=text, title=args.description or args.agent,
                          metadata={"session_id": child, "agent": args.agent})


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


def _artifact_key(args: _ArtifactInput, source: str) -> str:
    key = args.key if args.key is not None else posixpath.basename(source)
    reason = unsafe_key_reason(key)
    if reason is not None:
        raise ToolError(f"artifact key {key!r} refused: {reason}")
    return key


class ArtifactTool(PathTool[_ArtifactInput]):
    """`artifact`: copy a file from the sandbox to `/artifacts/<key>`, inside the sandbox."""

    name = "artifact"
    description = (
        "Save a file as a named artifact of this session (a build output, a report) so the "
        "user can download it. key is its name under /artifacts, the file's name by default."
    )
    input_model = _ArtifactInput

    async def prepare(self, input: Mapping[str, Any], ctx: ToolContext) -> PreparedCall:
        """The source path in both forms; `ToolError` for a bad key, or for a key whose
        folder under `/artifacts` leads through a link (the copy would land elsewhere)."""
        args = self.parse(input)
        written = self.pattern(args, ctx)
        folder = posixpath.dirname(f"{ARTIFACTS}/{_artifact_key(args, written)}")
        real, real_folder = await real_paths(ctx, written, folder)
        if real_folder != folder:
            raise ToolError(f"artifact folder {folder} leads through a link to {real_folder}")
        target = Target(written=written, real=real)
        return PreparedCall(patterns=target.patterns,
                            run=functools.partial(self.act, args, ctx, target))

    async def act(self, args: _ArtifactInput, ctx: ToolContext, target: Target) -> ToolOutput:
        """Copy the file (any size: it never leaves the sandbox) from `target.real`; the key
        defaults to the name the call gave it."""
        source, key = target.real, _artifact_key(args, target.written)
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
                         GrepTool(), TodoWriteTool(), ArtifactTool(), QuestionTool(),
                         TaskTool()]
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


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_custom(tool: object) -> Tool:
    """`tool` if it has what the `Tool` protocol asks; else `InvalidArgument` naming the gap."""
    name = getattr(tool, "name", None)
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise InvalidArgument(f"tool {tool!r}: its name must be 1 to 64 letters, digits, '_' "
                              f"or '-', not {name!r}")
    if not isinstance(getattr(tool, "description", None), str):
        raise InvalidArgument(f"tool {name!r}: its description must be a string")
    if not isinstance(getattr(tool, "parameters", None), Mapping):
        raise InvalidArgument(f"tool {name!r}: its parameters must be a JSON Schema mapping")
    for method in ("permission_pattern", "run"):
        if not callable(getattr(tool, method, None)):
            raise InvalidArgument(f"tool {name!r} has no {method}() method")
    return tool  # type: ignore[return-value]  # checked member by member just above


def _custom_tool(checked: Tool, registered: Mapping[str, Tool]) -> Tool | None:
    """The custom tool to register for `checked`, or None for a built-in one."""
    builtin = BUILTIN_TOOLS.get(checked.name)
    if builtin is not None:
        if type(checked) is type(builtin):
            return None  # an instance of a built-in class: the same tool
        raise InvalidArgument(f"tool {checked.name!r} has the name of a built-in tool; "
                              "give it another name")
    known = registered.get(checked.name)
    if known is not None and known is not checked:
        raise InvalidArgument(
            f"another tool named {checked.name!r} is already registered on this client; "
            "sessions find tools by name, so pass the same object or give it another name")
    return checked


def agent_tools(
    items: object, *, registered: Mapping[str, Tool]
) -> tuple[list[str], dict[str, Tool]]:
    """The tool names of an agent made with `items`, and the custom tools to register.

    `items` holds built-in tool names, names of tools `registered` on the client, and `Tool`
    objects. Raises `InvalidArgument`, before anything is registered, for an unknown name, an
    object that is not a tool, a custom tool named like a built-in one or like another
    registered tool, and a name given twice.
    """
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidArgument(f"tools must be a list of names or Tool objects, not {items!r}")
    names: list[str] = []
    new: dict[str, Tool] = {}
    for item in items:
        if isinstance(item, str):
            if item not in BUILTIN_TOOLS and item not in registered:
                known = ", ".join(sorted({*BUILTIN_TOOLS, *registered}))
                raise InvalidArgument(f"unknown tool {item!r}; the tools known are {known}")
            names.append(item)
            continue
        tool = _check_custom(item)
        custom = _custom_tool(tool, {**registered, **new})
        if custom is not None:
            new[custom.name] = custom
        names.append(tool.name)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidArgument(f"tools named more than once: {', '.join(repeated)}")
    return names, new


def check_rule_keys(rules: Mapping[str, object], tools: Iterable[str]) -> None:
    """`InvalidArgument` unless every top-level key of `rules` is `"*"`, a built-in tool's
    name or one of `tools` (the agent's): a key such as `"git status*"` is a pattern put one
    level too high, and would silently match nothing."""
    allowed = {"*", *BUILTIN_TOOLS, *tools}
    for key in rules:
        if key not in allowed:
            hint = (f'; to match a command line, nest it: {{"bash": {{{key!r}: ...}}}}'
                    if " " in key or "*" in key else "")
            raise InvalidArgument(
                f"permission rules: {key!r} is not a tool name (use \"*\", a built-in tool or "
                f"one of the agent's tools: {', '.join(sorted(allowed - {'*'}))}){hint}")

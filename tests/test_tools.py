"""The built-in tools, each run against a real container of the sandbox image."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_sessions._exceptions import InvalidArgument
from sandbox_sessions._types import ArtifactInfo, SandboxOptions, ShellResult, Todo
from sandbox_sessions.agent._file_tools import GrepTool, _grep_command, glob_regex
from sandbox_sessions.agent._tools import BUILTIN_TOOLS, resolve_tools
from sandbox_sessions.agent.base import ToolContext, ToolError, ToolOutput
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.sandbox.base import ShellRequest
from sandbox_sessions.sandbox.docker import DockerBackend

pytestmark = pytest.mark.anyio
docker = pytest.mark.docker

WORKDIR = "/workspace"


@pytest.fixture
async def ctx(image: str, tmp_path: Path) -> AsyncIterator[ToolContext]:
    """A fresh container, removed at the end; its `store` label lets `gc` reap a leftover."""
    labels = {"sandbox-sessions": "1", "sandbox-sessions.owner": "test-tools",
              "sandbox-sessions.store": str(tmp_path)}
    async with anyio.create_task_group() as tasks:
        backend = DockerBackend(Engine(), task_group=tasks)
        sandbox = await backend.create(SandboxOptions(image=image), labels=labels)
        try:
            yield ToolContext(sandbox=sandbox, session_id="ses_tools", call_id="call_1",
                              workdir=WORKDIR, timeout=30.0)
        finally:
            with anyio.CancelScope(shield=True):
                await sandbox.aclose()
                await backend.destroy(sandbox.id)


async def call(ctx: ToolContext, tool: str, **input: Any) -> ToolOutput:
    return await BUILTIN_TOOLS[tool].run(input, ctx)


async def sh(ctx: ToolContext, command: str, env: Mapping[str, str] | None = None) -> ShellResult:
    return await ctx.sandbox.shell(
        ShellRequest(command=command, cwd=WORKDIR, timeout=30, env=dict(env or {})))


async def put(ctx: ToolContext, path: str, data: bytes) -> None:
    await ctx.sandbox.write_file(path, data, mode=None)


async def content(ctx: ToolContext, path: str) -> bytes:
    return b"".join([chunk async for chunk in ctx.sandbox.stream_file(path, max_bytes=None)])


# --- the registry and schemas (no container) ------------------------------------------------


def test_builtin_tools_are_named_and_described() -> None:
    assert sorted(BUILTIN_TOOLS) == ["artifact", "bash", "edit", "glob", "grep", "list",
                                     "question", "read", "task", "todowrite", "write"]
    for name, tool in BUILTIN_TOOLS.items():
        assert tool.name == name
        assert tool.description
        schema = tool.parameters
        assert schema["type"] == "object"
        assert "$defs" not in schema
        assert "$ref" not in str(schema)
        assert "title" not in schema


def test_parameters_say_which_arguments_are_required() -> None:
    assert BUILTIN_TOOLS["bash"].parameters["required"] == ["command"]
    assert BUILTIN_TOOLS["edit"].parameters["required"] == ["path", "old_string", "new_string"]
    timeout = BUILTIN_TOOLS["bash"].parameters["properties"]["timeout"]
    assert timeout["type"] == "number"  # `float | None` is written as a plain number
    todo = BUILTIN_TOOLS["todowrite"].parameters["properties"]["todos"]["items"]
    assert todo["required"] == ["content", "status"]  # ids are assigned when left out
    assert "activeForm" in todo["properties"]  # Claude Code's TodoWrite field is accepted


def test_resolve_tools_mixes_names_and_objects() -> None:
    grep = GrepTool()
    tools = resolve_tools(["bash", grep, "read"])
    assert [tool.name for tool in tools] == ["bash", "grep", "read"]
    assert tools[1] is grep
    assert tools[0] is BUILTIN_TOOLS["bash"]


def test_resolve_tools_refuses_unknown_and_repeated_names() -> None:
    with pytest.raises(InvalidArgument, match="unknown tool 'bsh'"):
        resolve_tools(["bsh"])
    with pytest.raises(InvalidArgument, match="more than once: grep"):
        resolve_tools(["grep", GrepTool()])


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.py", "a.py", True),
        ("**/*.py", "x/y/a.py", True),
        ("*.py", "x/a.py", False),
        ("src/*.{ts,tsx}", "src/a.tsx", True),
        ("src/*.{ts,tsx}", "src/a.js", False),
        ("{src,test}/**", "test/a/b.c", True),
        ("[!a]*.txt", "b.txt", True),
        ("[!a]*.txt", "a.txt", False),
        ("a?c", "a/c", False),
        ("*", ".hidden", True),
        ("f[0-9].log", "f7.log", True),
    ],
)
def test_glob_patterns(pattern: str, path: str, expected: bool) -> None:
    assert (glob_regex(pattern).fullmatch(path) is not None) is expected


# --- input validation and permission patterns ----------------------------------------------


@docker
async def test_bad_input_is_a_tool_error_naming_the_argument(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"invalid input for bash: command: Field required"):
        await BUILTIN_TOOLS["bash"].run({}, ctx)
    with pytest.raises(ToolError, match=r"command: Input should be a valid string"):
        await call(ctx, "bash", command=["ls"])
    with pytest.raises(ToolError, match=r"timeout: Input should be greater than 0"):
        await call(ctx, "bash", command="true", timeout=-1)
    with pytest.raises(ToolError, match=r"colour: Extra inputs are not permitted"):
        await call(ctx, "read", path="a", colour="red")
    with pytest.raises(ToolError, match=r"offset: Input should be greater than or equal to 1"):
        BUILTIN_TOOLS["read"].permission_pattern({"path": "a", "offset": 0}, ctx)


@docker
async def test_permission_patterns_are_absolute_paths_and_command_lines(
    ctx: ToolContext,
) -> None:
    assert BUILTIN_TOOLS["read"].permission_pattern({"path": "../etc/passwd"}, ctx) == (
        "/etc/passwd")
    assert BUILTIN_TOOLS["write"].permission_pattern(
        {"path": "src/./a.py", "content": ""}, ctx) == "/workspace/src/a.py"
    assert BUILTIN_TOOLS["list"].permission_pattern({}, ctx) == "/workspace"
    assert BUILTIN_TOOLS["bash"].permission_pattern({"command": "git status"}, ctx) == (
        "git status")
    assert BUILTIN_TOOLS["artifact"].permission_pattern({"path": "/tmp/x"}, ctx) == "/tmp/x"
    assert BUILTIN_TOOLS["todowrite"].permission_pattern({"todos": []}, ctx) == "*"


# --- bash -----------------------------------------------------------------------------------


@docker
async def test_bash_merges_output_in_order_in_the_workdir(ctx: ToolContext) -> None:
    result = await call(ctx, "bash", command="pwd; echo two >&2; echo three",
                        description="where am I")
    assert result.output == "/workspace\ntwo\nthree\n"
    assert result.title == "where am I"
    assert result.metadata["exit_code"] == 0
    assert result.metadata["timed_out"] is False
    assert result.metadata["truncated"] is False


@docker
async def test_bash_notes_a_failing_exit_code(ctx: ToolContext) -> None:
    result = await call(ctx, "bash", command="echo oops; exit 3")
    assert result.output == "oops\n[exit code 3]"
    assert result.metadata["exit_code"] == 3
    assert not result.is_error
    quiet = await call(ctx, "bash", command="true")
    assert quiet.output == "(no output)"


@docker
async def test_bash_timeout_kills_the_process(ctx: ToolContext) -> None:
    with anyio.fail_after(20):
        result = await call(ctx, "bash", command="sleep 60 & echo $! > /tmp/pid; wait",
                            timeout=1)
    assert result.metadata["timed_out"] is True
    assert result.output.endswith("[timed out after 1 s]")
    alive = await sh(ctx, "kill -0 $(cat /tmp/pid) 2>/dev/null && echo alive || echo gone")
    assert alive.stdout == "gone\n"


@docker
async def test_cancelling_bash_kills_the_process(ctx: ToolContext) -> None:
    with anyio.move_on_after(1.5) as scope:
        await call(ctx, "bash", command="sleep 60 & echo $! > /tmp/pid; wait")
    assert scope.cancelled_caught
    await anyio.sleep(0.5)
    alive = await sh(ctx, "kill -0 $(cat /tmp/pid) 2>/dev/null && echo alive || echo gone")
    assert alive.stdout == "gone\n"


@docker
async def test_bash_caps_its_output(ctx: ToolContext) -> None:
    result = await call(ctx, "bash", command="head -c 400000 /dev/zero | tr '\\0' a")
    assert result.metadata["truncated"] is True
    assert result.output.startswith("a" * 1000)
    assert result.output.endswith("[output truncated after 262144 bytes]")
    assert len(result.output) < 270_000


# --- read -----------------------------------------------------------------------------------


@docker
async def test_read_numbers_lines_like_cat_n(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/notes.txt", b"alpha\nbeta\n\tgamma\n")
    result = await call(ctx, "read", path="notes.txt")
    assert result.output == "     1\talpha\n     2\tbeta\n     3\t\tgamma"
    assert result.metadata["total_lines"] == 3


@docker
async def test_read_a_range(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/five.txt", b"1\n2\n3\n4\n5")
    result = await call(ctx, "read", path="/workspace/five.txt", offset=2, limit=2)
    assert result.output == "     2\t2\n     3\t3\n\n(2 more lines; read on with offset=4)"
    assert result.metadata["lines"] == 2
    tail = await call(ctx, "read", path="five.txt", offset=5)
    assert tail.output == "     5\t5"
    with pytest.raises(ToolError, match=r"offset 6 is past the end .* \(5 lines\)"):
        await call(ctx, "read", path="five.txt", offset=6)


@docker
async def test_read_refuses_missing_binary_and_non_utf8_files(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="no such file"):
        await call(ctx, "read", path="missing.txt")
    with pytest.raises(ToolError, match="folder"):
        await call(ctx, "read", path="/workspace")
    await put(ctx, "/workspace/latin1.txt", b"caf\xe9\n")
    with pytest.raises(ToolError, match=r"not valid UTF-8 text \(byte 3\)"):
        await call(ctx, "read", path="latin1.txt")
    await put(ctx, "/workspace/blob.bin", b"ELF\x00\x01\x02")
    with pytest.raises(ToolError, match="binary file"):
        await call(ctx, "read", path="blob.bin")


@docker
async def test_read_empty_files_and_long_lines(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/empty", b"")
    assert (await call(ctx, "read", path="empty")).output == "(empty file)"
    await put(ctx, "/workspace/wide", b"x" * 5000 + b"\n")
    wide = await call(ctx, "read", path="wide")
    assert wide.output == "     1\t" + "x" * 2000 + "... [line cut: 5000 characters]"


# --- write and edit -------------------------------------------------------------------------


@docker
async def test_write_creates_parent_folders(ctx: ToolContext) -> None:
    result = await call(ctx, "write", path="deep/er/new.txt", content="héllo\n")
    assert result.output == "wrote 7 bytes to /workspace/deep/er/new.txt"
    assert result.metadata["created"] is True
    assert await content(ctx, "/workspace/deep/er/new.txt") == "héllo\n".encode()


@docker
async def test_write_and_edit_keep_a_file_executable(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/run.sh", b"#!/bin/sh\necho one\n")
    await sh(ctx, "chmod 750 run.sh")
    overwritten = await call(ctx, "write", path="run.sh", content="#!/bin/sh\necho two\n")
    assert overwritten.metadata["created"] is False
    await call(ctx, "edit", path="run.sh", old_string="two", new_string="three")
    result = await sh(ctx, "stat -c %a run.sh && ./run.sh")
    assert result.stdout == "750\nthree\n"
    await sh(ctx, "ln -s run.sh link.sh")
    await call(ctx, "write", path="link.sh", content="#!/bin/sh\necho four\n")
    # The write lands in the link's target (the path judged), which keeps its mode.
    linked = await sh(ctx, "test -L link.sh && stat -c %a run.sh && ./run.sh")
    assert linked.stdout == "750\nfour\n"


@docker
async def test_edit_replaces_a_unique_string_with_a_diff(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/app.py", b"def f():\n    return 1\n")
    result = await call(ctx, "edit", path="app.py", old_string="return 1",
                        new_string="return 2")
    assert result.output == "replaced 1 occurrence(s) in /workspace/app.py"
    assert await content(ctx, "/workspace/app.py") == b"def f():\n    return 2\n"
    diff = result.metadata["diff"]
    assert "--- /workspace/app.py" in diff
    assert "-    return 1\n" in diff
    assert "+    return 2\n" in diff


@docker
async def test_edit_errors(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/dup.txt", b"x = 1\nx = 1\n")
    with pytest.raises(ToolError, match="not found"):
        await call(ctx, "edit", path="dup.txt", old_string="y = 1", new_string="y = 2")
    with pytest.raises(ToolError, match=r"found 2 times .* add surrounding context .* "
                                        r"replace_all"):
        await call(ctx, "edit", path="dup.txt", old_string="x = 1", new_string="x = 2")
    with pytest.raises(ToolError, match="the same"):
        await call(ctx, "edit", path="dup.txt", old_string="x = 1", new_string="x = 1")
    with pytest.raises(ToolError, match="use write"):
        await call(ctx, "edit", path="dup.txt", old_string="", new_string="x")
    with pytest.raises(ToolError, match="no such file"):
        await call(ctx, "edit", path="nope.txt", old_string="a", new_string="b")
    assert await content(ctx, "/workspace/dup.txt") == b"x = 1\nx = 1\n"


@docker
async def test_edit_replace_all(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/dup.txt", b"x = 1\nx = 1\ny = 1\n")
    result = await call(ctx, "edit", path="dup.txt", old_string="x = 1", new_string="x = 2",
                        replace_all=True)
    assert result.metadata["replacements"] == 2
    assert await content(ctx, "/workspace/dup.txt") == b"x = 2\nx = 2\ny = 1\n"


# --- list, glob, grep -----------------------------------------------------------------------


@docker
async def test_list_one_level_sorted_with_folders_marked(ctx: ToolContext) -> None:
    await sh(ctx, "mkdir -p src/inner b && touch .env z.txt a.txt src/inner/deep.py")
    result = await call(ctx, "list")
    assert result.output == ".env\na.txt\nb/\nsrc/\nz.txt"
    assert (await call(ctx, "list", path="b")).output == "(empty folder)"
    assert (await call(ctx, "list", path="src")).output == "inner/"
    with pytest.raises(ToolError, match="not a folder"):
        await call(ctx, "list", path="a.txt")
    with pytest.raises(ToolError, match="not a folder"):
        await call(ctx, "list", path="/missing")
    await sh(ctx, "mkdir locked && chmod 000 locked")
    with pytest.raises(ToolError, match="cannot list /workspace/locked: permission denied"):
        await call(ctx, "list", path="locked")


@docker
async def test_list_and_glob_are_capped(ctx: ToolContext) -> None:
    await sh(ctx, "mkdir many && cd many && touch f{0001..1005}")
    listed = (await call(ctx, "list", path="many")).output.split("\n")
    assert listed[0] == "f0001"
    assert listed[999] == "f1000"
    assert listed[1000] == "(more than 1000 entries; showing the first 1000)"
    assert len(listed) == 1001
    found = await call(ctx, "glob", pattern="many/*")
    lines = found.output.split("\n")
    assert lines[0] == "/workspace/many/f0001"
    assert lines[-1] == "(1005 files match; showing the first 1000)"
    assert found.metadata == {"count": 1005, "truncated": True}


@docker
async def test_glob_finds_files_sorted_as_absolute_paths(ctx: ToolContext) -> None:
    await sh(ctx, "mkdir -p src/pkg docs && touch setup.py src/a.py src/pkg/b.py src/c.txt "
                  "docs/d.md && ln -s src/a.py link.py")
    every = await call(ctx, "glob", pattern="**/*.py")
    assert every.output == "/workspace/setup.py\n/workspace/src/a.py\n/workspace/src/pkg/b.py"
    top = await call(ctx, "glob", pattern="*.py")
    assert top.output == "/workspace/setup.py"  # the link is not a regular file
    braces = await call(ctx, "glob", pattern="**/*.{txt,md}", path="/workspace")
    assert braces.output == "/workspace/docs/d.md\n/workspace/src/c.txt"
    absolute = await call(ctx, "glob", pattern="/workspace/src/*.py", path="src")
    assert absolute.output == "/workspace/src/a.py"
    assert (await call(ctx, "glob", pattern="*.rs")).output == "no files match"


@docker
async def test_grep_finds_lines_by_regex(ctx: ToolContext) -> None:
    await sh(ctx, "mkdir -p src && printf 'import os\\nx = 1\\n' > src/a.py && "
                  "printf 'import re\\n' > src/b.txt && printf 'nothing\\n' > c.py")
    result = await call(ctx, "grep", pattern="^import (os|re)")
    assert result.output == "/workspace/src/a.py:1:import os\n/workspace/src/b.txt:1:import re"
    assert result.metadata["matches"] == 2
    only_py = await call(ctx, "grep", pattern="import", include="*.py")
    assert only_py.output == "/workspace/src/a.py:1:import os"
    one_file = await call(ctx, "grep", pattern="x", path="src/a.py")
    assert one_file.output == "/workspace/src/a.py:2:x = 1"
    none = await call(ctx, "grep", pattern="absent")
    assert none.output == "no matches"
    assert none.metadata["matches"] == 0
    with pytest.raises(ToolError, match="grep failed"):
        await call(ctx, "grep", pattern="(unclosed")


@docker
async def test_grep_quotes_what_it_is_given(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/odd.txt", b"a '; touch pwned1; ' b\n")
    result = await call(ctx, "grep", pattern="'; touch pwned1; '", path="odd.txt")
    assert result.output == "/workspace/odd.txt:1:a '; touch pwned1; ' b"
    included = await call(ctx, "grep", pattern="a", include="$(touch pwned2)")
    assert included.output == "no matches"
    with pytest.raises(ToolError, match="grep failed"):
        await call(ctx, "grep", pattern="a", path="x; touch pwned3")
    assert (await sh(ctx, "ls -A")).stdout == "odd.txt\n"


@docker
async def test_grep_falls_back_to_grep_without_ripgrep(ctx: ToolContext) -> None:
    await sh(ctx, "mkdir -p /tmp/bin src && ln -s \"$(command -v grep)\" /tmp/bin/grep && "
                  "printf 'hello\\n' > src/a.py && printf 'hello\\n' > src/b.txt")
    args = GrepTool().parse({"pattern": "hel+o", "include": "*.py"})
    result = await sh(ctx, _grep_command(args, "/workspace"), env={"PATH": "/tmp/bin"})
    assert result.stdout == "/workspace/src/a.py:1:hello\n"


# --- todowrite and artifact -----------------------------------------------------------------


@docker
async def test_todowrite_returns_the_list(ctx: ToolContext) -> None:
    todos = [{"id": "1", "content": "write tests", "status": "completed"},
             {"id": "2", "content": "fix bug", "status": "in_progress", "priority": "high"}]
    result = await call(ctx, "todowrite", todos=todos)
    assert result.todos == (
        Todo(id="1", content="write tests", status="completed", priority="medium"),
        Todo(id="2", content="fix bug", status="in_progress", priority="high"),
    )
    assert result.output == ("2 todos: 1 in progress, 1 completed\n"
                             "[x] write tests (id 1, medium)\n[~] fix bug (id 2, high)")
    cleared = await call(ctx, "todowrite", todos=[])
    assert cleared.todos == ()


@docker
async def test_todowrite_refuses_invalid_todos(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"todos\.0\.status"):
        await call(ctx, "todowrite", todos=[{"id": "1", "content": "x", "status": "doing"}])
    with pytest.raises(ToolError, match=r"todos\.0\.content: Field required"):
        await call(ctx, "todowrite", todos=[{"id": "1", "status": "pending"}])
    with pytest.raises(ToolError, match="repeated: 1"):
        await call(ctx, "todowrite", todos=[{"id": "1", "content": "a", "status": "pending"},
                                            {"id": "1", "content": "b", "status": "pending"}])


@docker
async def test_artifact_copies_a_file_under_artifacts(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/dist/app.whl", b"PK\x03\x04" + bytes(range(256)))
    named = await call(ctx, "artifact", path="dist/app.whl", key="builds/v1/app.whl")
    assert named.artifact == ArtifactInfo(key="builds/v1/app.whl", size=260)
    assert await content(ctx, "/artifacts/builds/v1/app.whl") == b"PK\x03\x04" + bytes(
        range(256))
    default = await call(ctx, "artifact", path="/workspace/dist/app.whl")
    assert default.artifact == ArtifactInfo(key="app.whl", size=260)


@docker
async def test_artifact_refuses_unsafe_keys_and_missing_files(ctx: ToolContext) -> None:
    await put(ctx, "/workspace/r.txt", b"report")
    with pytest.raises(ToolError, match=r"'\.\./x' refused: path escapes"):
        await call(ctx, "artifact", path="r.txt", key="../x")
    with pytest.raises(ToolError, match="absolute path"):
        await call(ctx, "artifact", path="r.txt", key="/etc/x")
    with pytest.raises(ToolError, match="no such file"):
        await call(ctx, "artifact", path="missing.txt")
    with pytest.raises(ToolError, match="no such file"):
        await call(ctx, "artifact", path="/workspace")
    assert (await sh(ctx, "ls -A /artifacts")).stdout == ""


@docker
async def test_write_where_the_sandbox_user_may_not(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="Permission denied"):
        await call(ctx, "write", path="/etc/evil.conf", content="x")
    await sh(ctx, "mkdir sub")
    with pytest.raises(ToolError, match="folder"):
        await call(ctx, "write", path="sub", content="x")

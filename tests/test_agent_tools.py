"""The tools an agent is made with: names and rule keys checked by `agent()`, custom `Tool`
objects run in real turns, and `todowrite` items without ids."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from typing import Any

import pytest
from agent_support import Script, opened, tool_parts

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    InvalidArgument,
    PermissionRules,
    SandboxClient,
    Todo,
)
from sandbox_sessions.agent._file_tools import GrepTool
from sandbox_sessions.agent.base import ToolContext, ToolOutput
from sandbox_sessions.sandbox.base import ShellRequest

anyio_test = pytest.mark.anyio


class Stamp:
    """A custom tool: writes its text to a file in the container and says who wrote it."""

    name = "stamp"
    description = "Write a line of text to /workspace/stamp.txt."
    parameters: Mapping[str, Any] = {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def permission_pattern(self, input: Mapping[str, Any], ctx: ToolContext) -> str:
        return str(input.get("text", ""))

    async def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        text = shlex.quote(str(input["text"]))
        result = await ctx.sandbox.shell(ShellRequest(
            command=f"printf '%s\\n' {text} > stamp.txt && id -un", cwd=ctx.workdir,
            timeout=ctx.timeout))
        return ToolOutput(output=result.stdout, title="stamp")


class NotATool:
    name = "broken"
    description = "has no run()"
    parameters: Mapping[str, Any] = {"type": "object"}

    def permission_pattern(self, input: Mapping[str, Any], ctx: ToolContext) -> str:
        return ""


class FakeBash(Stamp):
    name = "bash"


# --- checked when the agent is made (no container) ------------------------------------------


@anyio_test
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tools": ["bash", "bsh"]}, "unknown tool 'bsh'"),
        ({"config": AgentConfig(tools=["read", "nope"])}, "unknown tool 'nope'"),
        ({"tools": "bash"}, "tools must be a list"),
        ({"tools": ["read", "read"]}, "more than once: read"),
        ({"tools": ["grep", GrepTool()]}, "more than once: grep"),
        ({"tools": [NotATool()]}, "'broken' has no run"),
        ({"tools": [FakeBash()]}, "'bash' has the name of a built-in tool"),
        ({"permissions": {"git status*": "allow"}},
         r"""'git status\*' is not a tool name .*nest it: \{"bash": \{'git status\*'"""),
        ({"permissions": {"stamp": "deny"}}, "'stamp' is not a tool name"),
        ({"tools": ["bash"], "permissions": {"*": "ask", "Bash": "allow"}},
         "'Bash' is not a tool name"),
    ],
)
async def test_agent_refuses_bad_tools_and_rule_keys_at_once(
    client: AsyncSandboxClient, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        client.agent("tester", model="scripted", script=[], **kwargs)


@anyio_test
async def test_rule_keys_may_name_builtins_the_agents_tools_or_every_tool(
    client: AsyncSandboxClient,
) -> None:
    rules: PermissionRules = {"*": "ask", "grep": "deny", "stamp": {"x*": "allow"}}
    agent = client.agent("tester", model="scripted", tools=["bash", Stamp()], permissions=rules)
    assert agent.config.tools == ["bash", "stamp"]
    assert agent.config.permissions == rules
    # Registered on the client: later agents may name it, but not register another under it.
    assert client.agent("again", tools=["stamp"]).config.tools == ["stamp"]
    with pytest.raises(InvalidArgument, match="another tool named 'stamp' is already registered"):
        client.agent("other", tools=[Stamp()])


def test_the_sync_client_refuses_the_same(sync_client: SandboxClient) -> None:
    with pytest.raises(InvalidArgument, match="unknown tool 'bsh'"):
        sync_client.agent("tester", tools=["bsh"])
    with pytest.raises(InvalidArgument, match="'git status' is not a tool name"):
        sync_client.agent("tester", permissions={"git status": "allow"})


# --- in real turns ----------------------------------------------------------------------------


@anyio_test
@pytest.mark.docker
async def test_a_custom_tool_runs_in_the_container_under_its_own_rules(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [{"tool_calls": [{"name": "stamp", "input": {"text": "hello"}},
                              {"name": "stamp", "input": {"text": "secret plan"}}]},
              {"text": "done"}]
    rules: PermissionRules = {"stamp": {"secret*": "deny"}}
    async with opened(client, image, script, tools=["read", Stamp()],
                      permissions=rules) as session:
        result = await session.send("stamp it")
        stamped = await session.get_file("stamp.txt")
        with pytest.raises(InvalidArgument, match="'git status' is not a tool name"):
            await session.update(permissions={"git status": "allow"})
        info = await session.get_info()

    allowed, denied = tool_parts(result.parts)
    assert (allowed.state.status, allowed.state.output) == ("completed", "sandbox\n")
    assert denied.state.status == "error"
    assert "denied by the session's permission rules (stamp: secret plan)" in (
        denied.state.error or "")
    assert stamped == "hello\n"
    assert result.reason == "completed"
    assert info.config.permissions == rules  # the refused update changed nothing


def derived(content: str) -> str:
    return "t" + hashlib.sha256(content.encode()).hexdigest()[:8]


@anyio_test
@pytest.mark.docker
async def test_todowrite_assigns_stable_ids_to_items_without_one(
    client: AsyncSandboxClient, image: str
) -> None:
    """Claude Code's TodoWrite sends `content`, `status` and `activeForm`, and no id."""
    first = [
        {"content": "write tests", "status": "in_progress", "activeForm": "Writing tests"},
        {"content": "write tests", "status": "pending", "activeForm": "Writing tests"},
        {"id": "mine", "content": "ship", "status": "pending"},
    ]
    second = [
        {"id": "mine", "content": "ship", "status": "in_progress"},
        {"content": "write tests", "status": "completed", "activeForm": "Writing tests"},
    ]
    script: Script = [{"tool_calls": [{"name": "todowrite", "input": {"todos": first}}]},
              {"tool_calls": [{"name": "todowrite", "input": {"todos": second}}]},
              {"text": "done"}]
    async with opened(client, image, script) as session:
        result = await session.send("plan")
        todos = await session.get_todos()

    created, updated = tool_parts(result.parts)
    assert (created.state.status, updated.state.status) == ("completed", "completed")
    tests_id = derived("write tests")
    # The same text gets the same id in a later list; a repeat of it gets a suffix.
    assert f"(id {tests_id}, medium)" in (created.state.output or "")
    assert f"(id {tests_id}-2, medium)" in (created.state.output or "")
    assert todos == [Todo(id="mine", content="ship", status="in_progress"),
                     Todo(id=tests_id, content="write tests", status="completed")]

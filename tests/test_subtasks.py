"""The `task` tool: a subagent's work in a child session of its own, its usage rolled up, the
depth limit, and an abort that reaches the child. Real containers, the scripted model, both
transports (see conftest.py)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    SubtaskPart,
    Tokens,
    ToolPart,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


def _task(agent: str, prompt: str = "review it", description: str = "Review") -> dict[str, Any]:
    return {"tool_calls": [{"name": "task", "input": {"agent": agent, "prompt": prompt,
                                                     "description": description}}],
            "usage": {"input": 10, "output": 1}}


async def test_a_subtask_runs_in_a_child_session_and_rolls_up(
    client: AsyncSandboxClient, image: str
) -> None:
    reviewer = client.agent("reviewer", model="scripted", image=image, tools=["bash"],
                            permissions={"bash": {"*": "allow"}}, script=[
        {"tool_calls": [{"name": "bash", "input": {"command": "echo in-child > c.txt"}}],
         "usage": {"input": 100, "output": 20}},
        {"text": "LGTM", "usage": {"input": 200, "output": 30}}])
    agent = client.agent("build", model="scripted", image=image, tools=["task"],
                         subagents={"reviewer": reviewer},
                         script=[_task("reviewer"),
                                 {"text": "parent done", "usage": {"input": 5, "output": 2}}])
    async with await agent.create_session() as session:
        result = await session.send("go")
        children = await client.list_sessions(parent_id=session.id, include_ended=True)
        metrics = await session.get_metrics()
        info = await session.get_info()
        files = await session.shell("ls c.txt 2>&1 || true")

    tool = next(p for p in result.parts if isinstance(p, ToolPart))
    subtask = next(p for p in result.parts if isinstance(p, SubtaskPart))
    (child,) = children
    assert (result.text, tool.state.output) == ("parent done", "LGTM")
    assert (subtask.agent, subtask.prompt, subtask.session_id) == ("reviewer", "review it",
                                                                    child.id)
    assert (child.agent, child.depth, child.status, child.title) == ("reviewer", 1, "ended",
                                                                      "Review")
    assert child.tokens == Tokens(input=300, output=50)
    assert (metrics.subtask_tokens, metrics.tokens) == (Tokens(input=300, output=50),
                                                        Tokens(input=15, output=3))
    assert info.tokens == Tokens(input=315, output=53)  # the budget counts both
    assert "No such file" in files.stdout  # the child worked in a container of its own


@pytest.mark.parametrize(("depth", "agent", "error"), [
    (0, "reviewer", "nest 0 deep"),
    (2, "nobody", "no subagent named 'nobody' (this session has: reviewer)"),
])
async def test_a_subtask_that_cannot_run_fails_the_call(
    client: AsyncSandboxClient, image: str, depth: int, agent: str, error: str
) -> None:
    reviewer = client.agent("reviewer", model="scripted", image=image, script=[{"text": "x"}])
    build = client.agent("build", model="scripted", image=image, tools=["task"],
                         subagents={"reviewer": reviewer}, config=AgentConfig(max_depth=depth),
                         script=[_task(agent), {"text": "went on"}])
    async with await build.create_session() as session:
        result = await session.send("go")
        children = await client.list_sessions(parent_id=session.id, include_ended=True)
    tool = next(p for p in result.parts if isinstance(p, ToolPart))
    assert (result.text, tool.state.status) == ("went on", "error")
    assert error in (tool.state.error or "")
    assert children == []


async def test_nested_subtasks_stop_at_the_depth_limit(client: AsyncSandboxClient,
                                                        image: str) -> None:
    leaf = client.agent("leaf", model="scripted", image=image, script=[{"text": "leaf"}])
    middle = client.agent("middle", model="scripted", image=image, tools=["task"],
                          subagents={"leaf": leaf}, config=AgentConfig(max_depth=1),
                          script=[_task("leaf"), {"text": "middle done"}])
    top = client.agent("top", model="scripted", image=image, tools=["task"],
                       subagents={"middle": middle}, script=[_task("middle"), {"text": "top"}])
    async with await top.create_session() as session:
        result = await session.send("go")
        (child,) = await client.list_sessions(parent_id=session.id, include_ended=True)
        grandchildren = await client.list_sessions(parent_id=child.id, include_ended=True)
    assert result.text == "top"
    assert next(p for p in result.parts if isinstance(p, ToolPart)).state.output == \
        "middle done"  # its own task call failed: depth 1 of at most 1
    assert grandchildren == []


async def test_aborting_the_parent_aborts_and_ends_the_child(client: AsyncSandboxClient,
                                                              image: str) -> None:
    slow = client.agent("slow", model="scripted", image=image, tools=["bash"],
                        permissions={"bash": {"*": "allow"}}, script=[
        {"tool_calls": [{"name": "bash", "input": {"command": "sleep 60"}}]},
        {"text": "never"}])
    agent = client.agent("build", model="scripted", image=image, tools=["task"],
                         subagents={"slow": slow}, script=[_task("slow"), {"text": "x"}])
    async with await agent.create_session() as session:
        async with anyio.create_task_group() as group:
            group.start_soon(session.send, "go")
            async for event in session.events():
                if event.type == "subtask":
                    break
            children = await client.list_sessions(parent_id=session.id)  # made before the event
            await session.abort()
        (child,) = await client.list_sessions(parent_id=session.id, include_ended=True)
    assert child.id == children[0].id
    assert child.status == "ended"

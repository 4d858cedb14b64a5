"""Compaction: `summarize()`, what later turns send, automatic compaction near the context
limit. The scripted model on both transports (see conftest.py), and a real loopback
OpenAI-compatible server that records what the model is sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_support import SLEEPING, start_busy
from servers import Canned, CannedServer, sse_data

from sandbox_sessions import (
    AgentConfig,
    AssistantMessage,
    AsyncSandboxClient,
    CompactionPart,
    InvalidArgument,
    SessionBusy,
)
from sandbox_sessions.agent._compaction import SUMMARY_PROMPT, SUMMARY_SYSTEM
from sandbox_sessions.agent._history import SUMMARY_HEAD

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
API_KEY = "sk-compaction-test-key"


def _summaries(messages: list[Any]) -> list[str]:
    return [p.summary for m in messages if isinstance(m, AssistantMessage) and m.summary
            for p in m.parts if isinstance(p, CompactionPart)]


async def test_summarize_stores_a_summary_and_a_compaction_part(
    client: AsyncSandboxClient, image: str
) -> None:
    script: list[dict[str, Any]] = [{"text": "first answer"}, {"text": "SUMMARY: we said hi"},
                                    {"text": "after"}]
    agent = client.agent("build", model="scripted", script=script, image=image)
    async with await agent.create_session() as session:
        with pytest.raises(InvalidArgument, match="nothing to summarize"):
            await session.summarize()
        await session.send("hi")
        statuses: list[str] = []
        result = await session.summarize(
            on_event=lambda e: statuses.append(e.status) if e.type == "session-status" else None)
        later = await session.send("go on")
        messages = await session.get_messages()
        info = await session.get_info()

    assert (result.reason, result.text) == ("completed", "SUMMARY: we said hi")
    assert statuses == ["compacting"]  # `idle` follows the turn-end
    assert [(m.role, getattr(m, "summary", False)) for m in messages] == [
        ("user", False), ("assistant", False), ("assistant", True), ("user", False),
        ("assistant", False)]
    assert messages[2].parent_id == messages[0].id  # type: ignore[union-attr]
    assert _summaries(messages) == ["SUMMARY: we said hi"]
    assert later.text == "after"
    assert info.status == "idle"


async def test_a_summary_without_text_compacts_nothing(
    client: AsyncSandboxClient, image: str
) -> None:
    script: list[dict[str, Any]] = [{"text": "first"}, {"text": ""}]
    agent = client.agent("build", model="scripted", script=script, image=image)
    async with await agent.create_session() as session:
        await session.send("hi")
        result = await session.summarize()
        messages = await session.get_messages()
    assert (result.reason, result.error) == ("error", "the model gave no summary")
    assert _summaries(messages) == []


async def test_a_full_context_compacts_before_the_next_turn(
    client: AsyncSandboxClient, image: str
) -> None:
    script: list[dict[str, Any]] = [
        {"text": "big", "usage": {"input": 900, "output": 10}},
              {"text": "AUTO SUMMARY", "usage": {"input": 50, "output": 5}},
              {"text": "after", "usage": {"input": 60, "output": 2}},
              {"text": "again"}]
    agent = client.agent("build", model="scripted", script=script, image=image,
                         config=AgentConfig(context_limit=1000))
    async with await agent.create_session() as session:
        await session.send("one")
        second = await session.send("two")  # 910 of 1000 tokens: compacted first
        third = await session.send("three")  # 62: not again
        messages = await session.get_messages()
    assert (second.text, third.text) == ("after", "again")
    assert [(m.role, getattr(m, "summary", False)) for m in messages] == [
        ("user", False), ("assistant", False), ("assistant", True), ("user", False),
        ("assistant", False), ("user", False), ("assistant", False)]
    assert _summaries(messages) == ["AUTO SUMMARY"]


async def test_summarize_while_a_turn_runs_is_busy(client: AsyncSandboxClient,
                                                   image: str) -> None:
    agent = client.agent("build", model="scripted", script=SLEEPING, image=image,
                         permissions={"bash": {"*": "allow"}})
    async with await agent.create_session() as session, anyio.create_task_group() as group:
        await start_busy(session, group)
        with pytest.raises(SessionBusy):
            await session.summarize()
        await session.abort()


# --- what the model is sent (a real OpenAI-compatible server on loopback) --------------------


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "test",
            "choices": [choice], "usage": None}


def _text(text: str, prompt: int = 100) -> Canned:
    counts = {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
    return Canned(chunks=sse_data(_chunk({"role": "assistant", "content": ""}),
                                  _chunk({"content": text}), _chunk({}, "stop"),
                                  {**_chunk(), "choices": [], "usage": counts}, "[DONE]"))


def _tool_call(command: str) -> Canned:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": command})}}
    return Canned(chunks=sse_data(_chunk({"role": "assistant", "content": None}),
                                  _chunk({"tool_calls": [call]}), _chunk({}, "tool_calls"),
                                  "[DONE]"))


@pytest.fixture
async def keyed(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": API_KEY}) as opened:
        yield opened


async def test_later_turns_send_the_summary_not_the_history(
    keyed: AsyncSandboxClient, image: str, http_server: CannedServer
) -> None:
    http_server.enqueue(_tool_call("seq 1 5000"), _text("listed"), _text("THE SUMMARY"),
                        _text("continued"))
    agent = keyed.agent("remote", model="openai/test", tools=["bash"], image=image,
                        permissions={"bash": {"*": "allow"}},
                        config=AgentConfig(base_url=http_server.url))
    async with await agent.create_session() as session:
        await session.send("list numbers")
        summary = await session.summarize()
        await session.send("next step")
        stored = await session.get_messages()

    _, second, asked, after = (r.json for r in http_server.requests)
    assert summary.text == "THE SUMMARY"
    # the summary request: its own system prompt, no tools, tool output cut, the instruction
    assert asked["messages"][0] == {"role": "system", "content": SUMMARY_SYSTEM}
    assert "tools" not in asked or not asked["tools"]
    assert asked["messages"][-1] == {"role": "user", "content": SUMMARY_PROMPT}
    output = next(m["content"] for m in asked["messages"] if m["role"] == "tool")
    assert output.startswith("1\n2\n")
    assert len(output) < 3_000
    # the next turn: the summary heads its prompt; the history before it is not sent
    assert after["messages"] == [{"role": "user", "content":
                                  f"{SUMMARY_HEAD}THE SUMMARY\n\n---\n\nnext step"}]
    assert len(second["messages"]) == 3  # the turn before: prompt, call, output
    tool_part = next(p for m in stored for p in m.parts if p.type == "tool")
    assert len(tool_part.state.output or "") > 20_000  # kept whole in the store

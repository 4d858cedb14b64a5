"""The agent end to end: scripted and OpenAI-compatible models driving real containers.

Every turn here runs the real agent loop on the host, real tools in a container of the sandbox
image, the real SQLite event log, and (for `openai/...`) a real loopback HTTP server speaking
Chat Completions SSE. `events()` never ends by itself, so it is always read under a bound.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_support import Script, opened, read_log, settled, tool_parts, wait_for
from servers import Canned, CannedServer, sse_data

from sandbox_sessions import (
    AgentConfig,
    AssistantMessage,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Event,
    InvalidArgument,
    Message,
    PermissionReply,
    PermissionRequest,
    ReasoningPart,
    RetryPart,
    SandboxClient,
    SendResult,
    SessionBusy,
    SessionHandle,
    StepFinishPart,
    StepStartPart,
    TextPart,
    Todo,
    Tokens,
    ToolPart,
    UserMessage,
)
from sandbox_sessions._types import (
    MessageCreatedEvent,
    PermissionAskedEvent,
    TextDeltaEvent,
    TurnEndEvent,
)
from sandbox_sessions.agent._pricing import Price
from sandbox_sessions.service._projection import project

pytestmark = pytest.mark.docker

anyio_test = pytest.mark.anyio


REASONING = "The user wants a file, so I will write one."
FIRST_TEXT = "Making the file now."
FINAL_TEXT = "Done: made.txt holds the greeting."
MAKE_FILE = "printf 'made by the agent\\n' > made.txt && cat made.txt"
FLOW: Script = [
    {"reasoning": REASONING, "text": FIRST_TEXT,
     "tool_calls": [{"name": "bash", "input": {"command": MAKE_FILE}, "id": "call_make"}],
     "usage": {"input": 100, "output": 20, "reasoning": 8}},
    {"text": FINAL_TEXT, "usage": {"input": 140, "output": 12}},
]




def squeeze(types: list[str]) -> list[str]:
    """Runs of the same event type folded into one: deltas come in word-sized pieces."""
    return [kind for index, kind in enumerate(types) if index == 0 or types[index - 1] != kind]



def assistant(messages: list[Message], index: int = -1) -> AssistantMessage:
    message = [m for m in messages if isinstance(m, AssistantMessage)][index]
    return message


def turn_types(events: list[Event]) -> list[str]:
    """A turn's event types, squeezed, without its `snapshot` event: that one is taken
    while the first model call runs, so it lands anywhere before the first tool starts."""
    types = [event.type for event in events]
    assert types.count("snapshot") == 1
    assert types.index("snapshot") < types.index("tool-start")
    return squeeze([kind for kind in types if kind != "snapshot"])


ONE_TURN_TYPES = [
    "message-created", "session-status", "step-start", "reasoning-delta", "text-delta",
    "step-finish", "tool-start", "tool-running", "tool-end", "patch", "step-start",
    "text-delta", "step-finish", "message-updated", "turn-end",
]
"""One turn's events: the `patch` lists the files its bash call made (made.txt)."""


# --- one whole turn ---------------------------------------------------------------------------


@anyio_test
async def test_send_callbacks_see_reasoning_text_and_tools_in_order(
    client: AsyncSandboxClient, image: str
) -> None:
    seen: list[Event] = []
    texts: list[str] = []
    reasonings: list[str] = []
    started: list[ToolPart] = []
    ended: list[ToolPart] = []
    order: list[str] = []

    def on_text(delta: str) -> None:
        texts.append(delta)
        order.append("text")

    def on_reasoning(delta: str) -> None:
        reasonings.append(delta)
        order.append("reasoning")

    def on_tool_start(part: ToolPart) -> None:
        started.append(part)
        order.append("tool-start")

    def on_tool_end(part: ToolPart) -> None:
        ended.append(part)
        order.append("tool-end")

    async with opened(client, image, FLOW) as session:
        result = await session.send("make me a file", on_event=seen.append, on_text=on_text,
                                    on_reasoning=on_reasoning, on_tool_start=on_tool_start,
                                    on_tool_end=on_tool_end)
        made = await session.get_file("made.txt")
        status = (await session.get_info()).status

    assert turn_types(seen) == ONE_TURN_TYPES
    assert [event.seq for event in seen] == list(range(1, len(seen) + 1))
    assert squeeze(order) == ["reasoning", "text", "tool-start", "tool-end", "text"]
    assert "".join(reasonings) == REASONING
    assert "".join(texts) == FIRST_TEXT + FINAL_TEXT
    assert len(reasonings) > 1
    assert len(texts) > 2
    [pending] = started
    assert (pending.tool, pending.call_id, pending.state.status) == ("bash", "call_make",
                                                                      "pending")
    assert pending.state.input == {"command": MAKE_FILE}
    [done] = ended
    assert done.id == pending.id
    assert done.state.status == "completed"
    assert done.state.output == "made by the agent\n"
    assert done.state.metadata["exit_code"] == 0

    assert result.reason == "completed"
    assert result.error is None
    assert result.text == FINAL_TEXT  # the final step's text only
    assert result.tokens == Tokens(input=240, output=32, reasoning=8)
    assert result.cost == 0.0
    turn_end = seen[-1]
    assert isinstance(turn_end, TurnEndEvent)
    assert (turn_end.message_id, turn_end.reason) == (result.message_id, "completed")
    assert made == "made by the agent\n"  # the tool really ran in the container
    assert status == "idle"


@anyio_test
async def test_stream_yields_the_turn_from_its_prompt_to_its_turn_end(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [*FLOW, {"text": "second turn"}]
    async with opened(client, image, script) as session:
        events = [event async for event in session.stream("make me a file")]
        again = await session.send("and again")  # right away: the session is free
        status_after = (await session.get_info()).status
        made = await session.get_file("made.txt")

    first = events[0]
    assert isinstance(first, MessageCreatedEvent)
    assert isinstance(first.message, UserMessage)
    assert first.message.parts == [TextPart(id=first.message.parts[0].id, text="make me a file")]
    assert turn_types(events) == ONE_TURN_TYPES
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    turn_ends = [event for event in events if isinstance(event, TurnEndEvent)]
    assert [end.reason for end in turn_ends] == ["completed"]
    assert events[-1] is turn_ends[0]
    deltas = [event.delta for event in events if isinstance(event, TextDeltaEvent)]
    assert "".join(deltas) == FIRST_TEXT + FINAL_TEXT
    assert status_after == "idle"
    assert (again.reason, again.text) == ("completed", "second turn")
    assert made == "made by the agent\n"


@anyio_test
async def test_seq_has_no_gaps_and_each_turn_has_one_turn_end(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [
        {"text": "one"},
        {"tool_calls": [{"name": "bash", "input": {"command": "echo two"}}]},
        {"text": "two"},
        {"reasoning": "hm", "text": "three"},
    ]
    async with opened(client, image, script) as session:
        first = await session.send("1")
        await session.shell("true")  # a direct command is in the log too
        streamed = [event async for event in session.stream("2")]
        third = await session.send("3")
        log = await read_log(session, settled(3))
        tail = await read_log(session, settled(1), after=streamed[-1].seq)
        messages = await session.get_messages()

    assert [event.seq for event in log] == list(range(1, len(log) + 1))
    ends = [event for event in log if isinstance(event, TurnEndEvent)]
    replies = [m.id for m in messages if isinstance(m, AssistantMessage)]
    streamed_end = streamed[-1]
    assert isinstance(streamed_end, TurnEndEvent)
    assert [end.message_id for end in ends] == replies == [
        first.message_id, streamed_end.message_id, third.message_id]
    assert [end.reason for end in ends] == ["completed"] * 3
    assert "shell-run" in [event.type for event in log]
    # Each turn's events lie between its prompt and its turn-end, and never overlap.
    starts = [i for i, event in enumerate(log) if isinstance(event, MessageCreatedEvent)
              and isinstance(event.message, UserMessage)]
    stops = [log.index(end) for end in ends]
    assert starts[0] < stops[0] < starts[1] < stops[1] < starts[2] < stops[2]
    # Resuming after a seq gives exactly the rest: nothing lost, nothing repeated.
    assert tail == log[streamed[-1].seq:]
    assert [third.text, first.text] == ["three", "one"]


@anyio_test
async def test_messages_and_parts_are_the_projection_of_the_turn(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [
        {"reasoning": "Look first.", "text": "Checking.",
         "tool_calls": [{"name": "bash", "input": {"command": "echo ok"}, "id": "call_ok"},
                        {"name": "read", "input": {"path": "missing.txt"}, "id": "call_bad"}],
         "usage": {"input": 30, "output": 10}},
        {"text": "One worked, one failed.", "usage": {"input": 50, "output": 6}},
    ]
    async with opened(client, image, script) as session:
        result = await session.send("check things")
        messages = await session.get_messages()

    user, reply = messages
    assert isinstance(user, UserMessage)
    assert [(p.type, getattr(p, "text", None)) for p in user.parts] == [
        ("text", "check things"), ("snapshot", None)]
    assert isinstance(reply, AssistantMessage)
    assert reply.id == result.message_id
    assert reply.parent_id == user.id
    assert reply.model == "scripted"
    assert reply.finish_reason == "stop"
    assert reply.error is None
    assert reply.time_completed is not None
    assert reply.tokens == Tokens(input=80, output=16) == result.tokens
    assert [part.type for part in reply.parts] == [
        "step-start", "reasoning", "text", "step-finish", "tool", "tool",
        "step-start", "text", "step-finish"]
    assert reply.parts == result.parts
    reasoning, text = reply.parts[1], reply.parts[2]
    assert isinstance(reasoning, ReasoningPart)
    assert reasoning.text == "Look first."
    assert isinstance(text, TextPart)
    assert text.text == "Checking."
    finishes = [part for part in reply.parts if isinstance(part, StepFinishPart)]
    assert [(f.reason, f.tokens, f.cost) for f in finishes] == [
        ("tool_calls", Tokens(input=30, output=10), 0.0), ("stop", Tokens(input=50, output=6),
                                                          0.0)]
    ok, bad = tool_parts(reply.parts)
    assert (ok.call_id, ok.tool, ok.state.status, ok.state.output) == ("call_ok", "bash",
                                                                        "completed", "ok\n")
    assert ok.state.time_start is not None
    assert ok.state.time_end is not None
    assert (bad.call_id, bad.tool, bad.state.status) == ("call_bad", "read", "error")
    assert bad.state.output is None
    assert bad.state.error is not None
    assert "missing.txt" in bad.state.error
    assert len({part.id for part in reply.parts}) == len(reply.parts)


# --- abort and busy ---------------------------------------------------------------------------


@anyio_test
async def test_abort_stops_a_long_tool_call_and_leaves_the_session_usable(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [
        {"tool_calls": [{"name": "bash", "input": {"command": "sleep 300"}}]},
        {"text": "never played in the first turn"},
    ]
    outcome: list[Any] = []
    async with opened(client, image, script) as session:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                outcome.append(await session.send("sleep for a long time"))

            group.start_soon(run)
            await wait_for(session, "tool-running")
            busy = (await session.get_info()).status
            sleeping = await session.shell("pgrep -x sleep")
            assert await session.abort() is True
        idle = (await session.get_info()).status
        leftover = await session.shell("pgrep -x sleep")
        no_turn = await session.abort()
        again = await session.send("are you there?")
        messages = await session.get_messages()

    assert busy == "busy"
    assert sleeping.exit_code == 0  # the tool's command really was running
    [aborted] = outcome
    assert aborted.reason == "aborted"
    assert aborted.error is None
    [part] = tool_parts(aborted.parts)
    assert (part.state.status, part.state.error) == ("error", "aborted")
    assert idle == "idle"
    assert leftover.exit_code == 1, leftover.stdout  # pgrep found no `sleep`
    assert no_turn is False
    assert (again.reason, again.text) == ("completed", "never played in the first turn")
    first_reply = assistant(messages, 0)
    assert first_reply.finish_reason == "tool_calls"
    assert len(messages) == 4


@anyio_test
async def test_a_second_turn_while_one_runs_raises_session_busy(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [{"text": "slow answer", "delay": 120}]
    async with opened(client, image, script) as session:
        events = session.stream("take your time")
        first = await events.__anext__()
        with pytest.raises(SessionBusy) as refused:
            await session.send("me too")
        with pytest.raises(SessionBusy):
            await session.stream("and me").__anext__()
        busy = (await session.get_info()).status
        assert await session.abort() is True
        rest = [event async for event in events]
        messages = await session.get_messages()

    assert first.type == "message-created"
    assert refused.value.retryable is True
    assert isinstance(refused.value, RuntimeError)
    assert busy == "busy"
    ends = [event for event in rest if isinstance(event, TurnEndEvent)]
    assert [end.reason for end in ends] == ["aborted"]
    assert [m.role for m in messages] == ["user", "assistant"]  # the refused prompts left none


# --- resume in a new process -----------------------------------------------------------------

CHILD = """
import json, sys
import anyio
from sandbox_sessions import AsyncSandboxClient

async def main(store, session_id):
    async with AsyncSandboxClient(store=store) as client:
        session = client.session(session_id)
        info = await session.get_info()
        messages = await session.get_messages()
        metrics = await session.get_metrics()
        asked = []
        def answer(request):
            asked.append(request.patterns)
            return "reject"
        result = await session.send("second prompt", on_permission=answer)
        log = await session.get_file("log.txt")
        print(json.dumps({
            "status": info.status, "rules": info.config.permissions,
            "roles": [m.role for m in messages], "metrics": metrics.model_dump(),
            "asked": asked, "reason": result.reason, "text": result.text, "log": log,
        }))

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@anyio_test
async def test_a_session_resumes_by_id_in_a_new_process(
    store_path: Path, image: str, tmp_path: Path
) -> None:
    script: Script = [
        {"tool_calls": [{"name": "bash", "input": {"command": "echo first >> log.txt"}}],
         "usage": {"input": 10, "output": 2}},
        {"text": "first turn done", "usage": {"input": 20, "output": 3}},
        {"tool_calls": [{"name": "bash", "input": {"command": "echo second >> log.txt"}}],
         "usage": {"input": 30, "output": 4}},
        {"text": "second turn done", "usage": {"input": 40, "output": 5}},
    ]
    async with AsyncSandboxClient(store=store_path) as client:
        agent = client.agent("resumable", model="scripted", script=script, image=image,
                             permissions={"bash": "ask"})
        session = await agent.create_session()
        first = await session.send("first prompt", on_permission=lambda request: "always")
        before = await read_log(session, settled(1))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    try:
        ran = await anyio.run_process([sys.executable, str(child), str(store_path), session.id],
                                      check=False)
        async with AsyncSandboxClient(store=store_path) as client:
            resumed = client.session(session.id)
            after = await read_log(resumed, settled(2))
            messages = await resumed.get_messages()
    finally:
        async with AsyncSandboxClient(store=store_path) as client:
            await client.session(session.id).end()

    assert ran.returncode == 0, ran.stderr.decode()
    report = json.loads(ran.stdout)
    assert first.reason == "completed"
    assert report["status"] == "idle"
    assert report["rules"] == {"bash": {"*": "ask", "echo *": "allow"}}  # the `always` rule
    assert report["roles"] == ["user", "assistant"]
    assert report["metrics"]["steps"] == 2
    assert report["metrics"]["tool_usage"] == {"bash": 1}
    assert report["metrics"]["tokens"]["input"] == 30
    assert report["asked"] == []  # the stored rule allowed `echo second`
    assert (report["reason"], report["text"]) == ("completed", "second turn done")
    assert report["log"] == "first\nsecond\n"
    # The parent sees the child's turn in the same log, its seq going straight on. The end of
    # the child's turn may have folded the first turn's deltas: the same messages, in fewer
    # events (see `Store.fold_deltas`).
    first_turn = before[-1].seq
    assert project([e for e in after if e.seq <= first_turn]) == project(before)
    second_turn = [event.seq for event in after if event.seq > first_turn]
    assert second_turn == list(range(first_turn + 1, first_turn + 1 + len(second_turn)))
    assert second_turn
    ends = [event for event in after if isinstance(event, TurnEndEvent)]
    assert [end.reason for end in ends] == ["completed", "completed"]
    assert [m.role for m in messages] == ["user", "assistant"] * 2
    assert assistant(messages).tokens == Tokens(input=70, output=9)


@anyio_test
async def test_a_client_kept_open_sees_the_turns_another_process_ran(
    client: AsyncSandboxClient, image: str, store_path: Path, tmp_path: Path
) -> None:
    script: Script = [{"text": "first turn done"},
                      {"tool_calls": [{"name": "bash", "input": {"command": "echo x > log.txt"}}]},
                      {"text": "second turn done"}]
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    async with opened(client, image, script) as session:
        await session.send("first prompt")
        ran = await anyio.run_process([sys.executable, str(child), str(store_path), session.id],
                                      check=False)
        assert ran.returncode == 0, ran.stderr.decode()
        log = await read_log(session, settled(2), within=2)
        # This client's own next write follows the other process's events, seq-wise.
        await session.shell("true")
        full = await read_log(session, lambda events: events[-1].type == "shell-run", within=2)

    ends = [event for event in log if isinstance(event, TurnEndEvent)]
    assert len(ends) == 2
    seqs = [event.seq for event in full]  # the first turn's deltas may be folded: gaps there
    assert seqs == sorted(set(seqs))
    assert full[-1].type == "shell-run"
    assert full[-1].seq == full[-2].seq + 1  # straight after the other process's last event
    assert len(full) > len(log)


# --- metrics and todos ------------------------------------------------------------------------

TODOS = [
    {"id": "1", "content": "write the tests", "status": "completed", "priority": "high"},
    {"id": "2", "content": "run them", "status": "in_progress"},
]


@anyio_test
async def test_metrics_and_todos_follow_the_turns(store_path: Path, image: str) -> None:
    script: Script = [
        {"tool_calls": [{"name": "todowrite", "input": {"todos": TODOS}},
                        {"name": "bash", "input": {"command": "echo hi"}}],
         "usage": {"input": 1000, "output": 500}},
        {"text": "planned", "usage": {"input": 2000, "output": 250, "cache_read": 1000}},
        {"tool_calls": [{"name": "bash", "input": {"command": "echo again"}}],
         "usage": {"input": 3000, "output": 100}},
        {"text": "done", "usage": {"input": 4000, "output": 150}},
    ]
    prices = {"scripted": Price(input=1000.0, output=2000.0, cache_read=500.0)}
    async with (AsyncSandboxClient(store=store_path, prices=prices) as client,
                opened(client, image, script) as session):
        empty = await session.get_todos()
        first = await session.send("plan")
        todos = await session.get_todos()
        second = await session.send("go on")
        metrics = await session.get_metrics()
        log = await read_log(session, settled(2))

    assert empty == []
    assert todos == [Todo(id="1", content="write the tests", status="completed",
                          priority="high"),
                     Todo(id="2", content="run them", status="in_progress", priority="medium")]
    assert [event.type for event in log].count("todo-updated") == 1
    assert metrics.messages == 4
    assert metrics.steps == 4
    assert metrics.tool_calls == 3
    assert metrics.tool_usage == {"todowrite": 1, "bash": 2}
    assert metrics.tokens == Tokens(input=10_000, output=1_000, cache_read=1_000)
    # $ per million tokens: 10k in at 1000, 1k out at 2000, 1k cached at 500.
    assert first.cost == pytest.approx(1.0 + 1.0 + 2.0 + 0.5 + 0.5)
    assert second.cost == pytest.approx(3.0 + 0.2 + 4.0 + 0.3)
    assert metrics.cost == pytest.approx(first.cost + second.cost)


@anyio_test
async def test_a_scripted_model_costs_nothing_without_a_price(
    client: AsyncSandboxClient, image: str
) -> None:
    async with opened(client, image, FLOW) as session:
        await session.send("make me a file")
        metrics = await session.get_metrics()

    assert (metrics.messages, metrics.steps, metrics.tool_calls) == (2, 2, 1)
    assert metrics.tool_usage == {"bash": 1}
    assert metrics.tokens == Tokens(input=240, output=32, reasoning=8)
    assert metrics.cost == 0.0


# --- bad input and failing models -------------------------------------------------------------


@anyio_test
async def test_a_malformed_script_is_refused_by_agent_before_any_container(
    client: AsyncSandboxClient, image: str
) -> None:
    before = await client.list_sessions()

    with pytest.raises(InvalidArgument) as refused:
        client.agent("tester", model="scripted", script=[{"bogus": 1}], image=image)

    assert "script entry 0" in str(refused.value)
    assert "bogus" in str(refused.value)
    assert await client.list_sessions() == before


@anyio_test
async def test_a_script_file_broken_after_agent_is_refused_at_the_first_send(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text('[{"text": "fine"}]')
    async with opened(client, image, str(script)) as session:
        script.write_text('[{"bogus": 1}]')
        with pytest.raises(InvalidArgument) as refused:
            await session.send("hello")
        info = await session.get_info()
        messages = await session.get_messages()
        shell = await session.shell("echo still here")

    assert "bogus" in str(refused.value)
    assert info.status == "idle"
    assert messages == []  # no turn was started
    assert shell.stdout == "still here\n"


@anyio_test
async def test_a_scripted_error_ends_the_turn_and_the_session_goes_on(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [
        {"text": "Let me think", "error": {"message": "the model fell over", "status": 400}},
        {"text": "recovered"},
    ]
    async with opened(client, image, script) as session:
        failed = await session.send("try")
        log = await read_log(session, settled(1))
        recovered = await session.send("try again")
        messages = await session.get_messages()

    assert failed.reason == "error"
    assert failed.error is not None
    assert "the model fell over" in failed.error
    ends = [event for event in log if isinstance(event, TurnEndEvent)]
    assert [(end.reason, end.error) for end in ends] == [("error", failed.error)]
    assert assistant(messages, 0).error == failed.error
    assert not [part for part in failed.parts if isinstance(part, RetryPart)]  # a 400: no retry
    assert (recovered.reason, recovered.text, recovered.error) == ("completed", "recovered", None)


@anyio_test
async def test_a_retryable_scripted_error_is_retried_with_a_retry_part(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [
        {"error": {"message": "overloaded, try later", "status": 503}},
        {"text": "second attempt"},
    ]
    async with opened(client, image, script) as session:
        result = await session.send("hello")
        log = await read_log(session, settled(1))

    assert (result.reason, result.text) == ("completed", "second attempt")
    [retry] = [part for part in result.parts if isinstance(part, RetryPart)]
    assert (retry.attempt, retry.delay) == (1, 0.5)
    assert "overloaded, try later" in retry.error
    assert [event.type for event in log].count("retry") == 1


@anyio_test
async def test_an_exhausted_script_ends_the_turn_with_an_error(
    client: AsyncSandboxClient, image: str
) -> None:
    script: Script = [{"tool_calls": [{"name": "bash", "input": {"command": "echo ran"}}]}]
    async with opened(client, image, script) as session:
        result = await session.send("go")
        info = await session.get_info()
        again = await session.send("go again")  # no SessionBusy: the session is usable
        shell = await session.shell("echo alive")

    assert result.reason == "error"
    assert result.error is not None
    assert "script exhausted after 1 calls" in result.error
    [part] = tool_parts(result.parts)
    assert (part.state.status, part.state.output) == ("completed", "ran\n")
    assert info.status == "idle"
    assert again.reason == "error"
    assert again.error is not None
    assert "exhausted" in again.error
    assert shell.stdout == "alive\n"


# --- the OpenAI-compatible provider against a loopback server ---------------------------------

API_KEY = "sk-client-key-0123456789"
HOST_KEY = "sk-host-env-key-9876543210"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-agent", "object": "chat.completion.chunk", "created": 1745678496,
            "model": "test", "choices": [choice], "usage": None}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    counts = {"prompt_tokens": prompt, "completion_tokens": completion,
              "total_tokens": prompt + completion}
    return {**chunk(), "choices": [], "usage": counts}


def tool_call_stream(call_id: str, command: str) -> list[bytes | str]:
    arguments = json.dumps({"command": command})
    head = {"index": 0, "id": call_id, "type": "function",
            "function": {"name": "bash", "arguments": ""}}
    return sse_data(
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [head]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:10]}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[10:]}}]}),
        chunk({}, "tool_calls"),
        usage(120, 25),
        "[DONE]",
    )


def text_stream(*pieces: str) -> list[bytes | str]:
    return sse_data(chunk({"role": "assistant", "content": ""}),
                    *(chunk({"content": piece}) for piece in pieces),
                    chunk({}, "stop"), usage(180, 9), "[DONE]")


def error_body(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "server_error", "code": None}})


@pytest.fixture
async def keyed_client(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": API_KEY}) as opened_:
        yield opened_


@asynccontextmanager
async def remote(
    client: AsyncSandboxClient, image: str, server: CannedServer
) -> AsyncIterator[AsyncSessionHandle]:
    """A session whose model is `openai/test` behind the loopback server."""
    agent = client.agent("remote", model="openai/test", tools=["bash"], image=image,
                         config=AgentConfig(base_url=server.url))
    async with await agent.create_session() as session:
        yield session


@anyio_test
async def test_a_tool_turn_through_the_openai_provider(
    keyed_client: AsyncSandboxClient, image: str, http_server: CannedServer
) -> None:
    command = "echo from-openai > o.txt && cat o.txt"
    http_server.enqueue(Canned(chunks=tool_call_stream("call_oai_1", command)),
                        Canned(chunks=text_stream("All ", "done.")))
    async with remote(keyed_client, image, http_server) as session:
        result = await session.send("write o.txt")
        written = await session.get_file("o.txt")

    assert (result.reason, result.text, result.error) == ("completed", "All done.", None)
    assert result.tokens == Tokens(input=300, output=34)
    [part] = tool_parts(result.parts)
    assert (part.call_id, part.state.status, part.state.output) == ("call_oai_1", "completed",
                                                                     "from-openai\n")
    assert written == "from-openai\n"
    first, second = http_server.requests
    assert (first.method, first.path) == ("POST", "/chat/completions")
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert first.json["model"] == "test"
    assert first.json["stream"] is True
    assert [tool["function"]["name"] for tool in first.json["tools"]] == ["bash"]
    assert first.json["messages"] == [{"role": "user", "content": "write o.txt"}]
    messages = second.json["messages"]
    assert messages[0] == {"role": "user", "content": "write o.txt"}
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"] == [{"id": "call_oai_1", "type": "function", "function": {
        "name": "bash", "arguments": json.dumps({"command": command})}}]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_oai_1",
                           "content": "from-openai\n"}


@anyio_test
async def test_http_500s_are_retried_then_end_the_turn_with_the_server_message(
    keyed_client: AsyncSandboxClient, image: str, http_server: CannedServer
) -> None:
    failure = Canned(status=500, body=error_body("the GPUs are on fire"))
    http_server.enqueue(failure, failure, failure, failure)
    async with remote(keyed_client, image, http_server) as session:
        result = await session.send("hello")
        usable = await session.shell("echo ok")

    assert len(http_server.requests) == 4  # the first attempt and three retries
    assert result.reason == "error"
    assert result.error is not None
    assert "HTTP 500" in result.error
    assert "the GPUs are on fire" in result.error
    retries = [part for part in result.parts if isinstance(part, RetryPart)]
    assert [(r.attempt, r.delay) for r in retries] == [(1, 0.5), (2, 1.0), (3, 2.0)]
    assert all("the GPUs are on fire" in r.error for r in retries)
    assert usable.stdout == "ok\n"


@anyio_test
async def test_an_http_400_is_not_retried(
    keyed_client: AsyncSandboxClient, image: str, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(status=400, body=error_body("max_tokens is too large")),
                        Canned(chunks=text_stream("fine now")))
    async with remote(keyed_client, image, http_server) as session:
        failed = await session.send("hello")
        recovered = await session.send("hello again")

    assert failed.reason == "error"
    assert failed.error is not None
    assert "HTTP 400" in failed.error
    assert "max_tokens is too large" in failed.error
    assert not [part for part in failed.parts if isinstance(part, RetryPart)]
    assert (recovered.reason, recovered.text) == ("completed", "fine now")
    assert len(http_server.requests) == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Canned(chunks=["data: {this is not json\n\n"]), "malformed JSON"),
        (Canned(headers={"content-type": "text/html"}, body="<html>a login page</html>"),
         "a login page"),
    ],
    ids=["garbage-sse", "html-page"],
)
@anyio_test
async def test_a_garbled_answer_ends_the_turn_with_an_error(
    keyed_client: AsyncSandboxClient, image: str, http_server: CannedServer, answer: Canned,
    expected: str,
) -> None:
    http_server.enqueue(answer)
    async with remote(keyed_client, image, http_server) as session:
        result = await session.send("hello")
        log = await read_log(session, settled(1))

    assert result.reason == "error"
    assert result.error is not None
    assert expected in result.error
    ends = [event for event in log if isinstance(event, TurnEndEvent)]
    assert [(end.reason, end.error) for end in ends] == [("error", result.error)]
    assert len(http_server.requests) == 1


@anyio_test
async def test_api_keys_never_enter_the_container(
    store_path: Path, image: str, http_server: CannedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", HOST_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", HOST_KEY)
    command = "env; tr '\\0' '\\n' < /proc/1/environ"
    http_server.enqueue(Canned(chunks=tool_call_stream("call_env", command)),
                        Canned(chunks=text_stream("seen")))
    async with (AsyncSandboxClient(store=store_path, api_keys={"openai": API_KEY}) as client,
                remote(client, image, http_server) as session):
        result = await session.send("show me your environment")
        shell = await session.shell("env; cat /proc/1/environ")

    [part] = tool_parts(result.parts)
    output = part.state.output or ""
    assert "PATH=" in output
    assert "PATH=" in shell.stdout
    for secret in (API_KEY, HOST_KEY):
        assert secret not in output
        assert secret not in shell.stdout
    assert "API_KEY" not in output + shell.stdout
    assert http_server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


# --- the sync facade --------------------------------------------------------------------------


@pytest.fixture
def sync_session(sync_client: SandboxClient, image: str) -> Iterator[SessionHandle]:
    script = [*FLOW, {"tool_calls": [{"name": "bash", "input": {"command": "echo sync"}}]},
              {"text": "streamed"}]
    agent = sync_client.agent("sync", model="scripted", script=script, image=image,
                              permissions={"bash": "ask"})
    with agent.create_session() as session:
        yield session


def test_sync_send_and_stream(sync_session: SessionHandle) -> None:
    texts: list[str] = []
    threads: list[str] = []

    def answer(request: PermissionRequest) -> PermissionReply:
        threads.append(threading.current_thread().name)
        return "once"

    result = sync_session.send("make me a file", on_text=texts.append, on_permission=answer)
    streamed = []
    for event in sync_session.stream("again"):
        streamed.append(event)
        if isinstance(event, PermissionAskedEvent):
            sync_session.reply_to_permission(event.request.id, "once")
    made = sync_session.get_file("made.txt")
    messages = sync_session.get_messages()
    metrics = sync_session.get_metrics()
    no_turn = sync_session.abort()

    assert (result.reason, result.text) == ("completed", FINAL_TEXT)
    assert "".join(texts) == FIRST_TEXT + FINAL_TEXT
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name
    last = streamed[-1]
    assert isinstance(last, TurnEndEvent)
    assert last.reason == "completed"
    assert [event.seq for event in streamed] == list(
        range(streamed[0].seq, streamed[0].seq + len(streamed)))
    assert "permission-replied" in [event.type for event in streamed]
    assert made == "made by the agent\n"
    assert [m.role for m in messages] == ["user", "assistant"] * 2
    assert isinstance(messages[-1], AssistantMessage)
    assert [p.type for p in messages[-1].parts if not isinstance(p, StepStartPart)][-1] == (
        "step-finish")
    assert (metrics.messages, metrics.tool_calls) == (4, 2)
    assert no_turn is False


def test_sync_abort_and_session_busy(sync_client: SandboxClient, image: str) -> None:
    script: Script = [{"tool_calls": [{"name": "bash", "input": {"command": "sleep 300"}}]},
                      {"text": "awake"}]
    agent = sync_client.agent("sync-sleeper", model="scripted", script=script, image=image)
    outcome: list[SendResult] = []
    with agent.create_session() as session:
        worker = threading.Thread(target=lambda: outcome.append(session.send("sleep")))
        worker.start()
        try:
            for event in session.events():
                if event.type in ("tool-running", "turn-end"):  # turn-end: fail, not hang
                    break
            with pytest.raises(SessionBusy):
                session.send("me too")
            aborted = session.abort()
        finally:
            worker.join(timeout=60)
        leftover = session.shell("pgrep -x sleep")
        again = session.send("wake up")

    assert aborted is True
    [result] = outcome
    assert result.reason == "aborted"
    assert leftover.exit_code == 1
    assert (again.reason, again.text) == ("completed", "awake")

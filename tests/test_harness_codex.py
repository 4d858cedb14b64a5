"""The Codex harness: the real `codex app-server` (0.171.0) in a real container (the agents
image), its model reached through the model proxy.

Tool calls and approvals are driven by `CannedServer` speaking the OpenAI Responses SSE
format (a real loopback HTTP server): Codex's `exec_command` tool call, then text. The text
turn of the `model` tier runs against SmolLM2 (xllamacpp serves `/v1/responses`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness_support import (
    STARTED,
    abort_while_running,
    collect,
    ends,
    host_address,
    left_behind,
    real_text_turn,
    search_finds_a_planted_key,
)
from servers import Canned, CannedServer, sse

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle
from sandbox_sessions._types import AgentConfig, PermissionRequest
from sandbox_sessions.agent._pricing import Price

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

KEY = "sk-test-secret-" + secrets.token_hex(16)
PRICE = Price(input=2.0, output=8.0)
"""Dollars per million tokens of the scripted model, as a client's price table gives it."""
"""The real (upstream) key: distinctive, so any trace of it in the container is found."""


def responses_stream(*items: dict[str, Any], rid: str = "resp_1",
                     usage: tuple[int, int] = (120, 7)) -> list[bytes | str]:
    """A Responses API SSE answer whose output is `items` (messages, function calls)."""
    events: list[tuple[str | None, Any]] = [
        ("response.created", {"type": "response.created",
                              "response": {"id": rid, "status": "in_progress", "output": []}})]
    for index, item in enumerate(items):
        added = dict(item)
        if item["type"] == "message":
            added["content"] = []
        if item["type"] == "reasoning":
            added["summary"] = []
        events.append(("response.output_item.added", {
            "type": "response.output_item.added", "output_index": index, "item": added}))
        if item["type"] == "message":
            text = item["content"][0]["text"]
            for piece in (text[: len(text) // 2], text[len(text) // 2:]):
                events.append(("response.output_text.delta", {
                    "type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": index, "content_index": 0, "delta": piece}))
        if item["type"] == "reasoning":
            events.append(("response.reasoning_summary_part.added", {
                "type": "response.reasoning_summary_part.added", "item_id": item["id"],
                "output_index": index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}}))
            events.append(("response.reasoning_summary_text.delta", {
                "type": "response.reasoning_summary_text.delta", "item_id": item["id"],
                "output_index": index, "summary_index": 0,
                "delta": item["summary"][0]["text"]}))
        events.append(("response.output_item.done", {
            "type": "response.output_item.done", "output_index": index, "item": item}))
    events.append(("response.completed", {"type": "response.completed", "response": {
        "id": rid, "status": "completed", "output": list(items),
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1],
                  "total_tokens": sum(usage)}}}))
    return sse(*events)


def text_answer(text: str, rid: str = "resp_text", reasoning: str | None = None) -> Canned:
    thought = [] if reasoning is None else [
        {"type": "reasoning", "id": f"rs_{rid}", "summary": [
            {"type": "summary_text", "text": reasoning}]}]
    return Canned(chunks=responses_stream(
        *thought,
        {"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": text, "annotations": []}]}, rid=rid))


def command_answer(command: str, call_id: str = "call_1") -> Canned:
    return Canned(chunks=responses_stream(
        {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id,
         "name": "exec_command", "arguments": json.dumps({"cmd": command}),
         "status": "completed"}, rid=f"resp_{call_id}"))


def model_input(request: Any) -> str:
    """The `input` of a recorded Responses request, as JSON text."""
    return json.dumps(request.json["input"])


@pytest.fixture
async def keyed_client(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": KEY},
                                  prices={"openai/scripted": PRICE}) as opened:
        yield opened


@pytest.fixture
async def scripted(keyed_client: AsyncSandboxClient, http_server: CannedServer,
                   agents_image: str) -> AsyncIterator[AsyncSessionHandle]:
    """A Codex session whose model is the scripted server; every command asks."""
    agent = keyed_client.agent("codex", harness="codex", model="openai/scripted",
                               config=AgentConfig(base_url=f"{http_server.url}/v1"),
                               permissions={"bash": {"*": "ask"}})
    async with await agent.create_session() as session:
        yield session


async def test_a_command_asks_the_broker_and_runs_once_in_the_container(
    scripted: AsyncSessionHandle, http_server: CannedServer
) -> None:
    command = "echo ran-by-codex > /workspace/ran.txt"
    http_server.enqueue(command_answer(command),
                        text_answer("The file is written.", reasoning="It ran; say so."))
    asked: list[PermissionRequest] = []

    def on_permission(request: PermissionRequest) -> str:
        asked.append(request)
        return "once"

    result, events = await collect(scripted, "write the file", on_permission=on_permission)

    assert result.reason == "completed", result.error
    assert result.text == "The file is written."
    assert [(r.tool, r.patterns) for r in asked] == [("bash", [command])]
    assert (await scripted.get_file("/workspace/ran.txt")) == "ran-by-codex\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.state.status, p.state.metadata.get("exit_code")) for p in ended] == [
        ("bash", "completed", 0)]
    assert ended[0].state.input["command"] == command
    assert "".join(e.delta for e in events if e.type == "reasoning-delta") == "It ran; say so."
    assert len(ends(events)) == 1
    steps = [e for e in events if e.type == "step-finish"]
    assert [s.part.reason for s in steps] == ["tool_calls", "stop"]
    assert all(s.part.tokens.input == 120 and s.part.tokens.output == 7 for s in steps)
    # Tokens and cost are the proxy's, priced with the client's table, in the metrics.
    assert all(s.part.cost == pytest.approx((120 * 2.0 + 7 * 8.0) / 1e6) for s in steps)
    metrics = await scripted.get_metrics()
    assert (metrics.tokens.input, metrics.tokens.output) == (240, 14)
    assert metrics.cost == pytest.approx(result.cost) == pytest.approx(2 * (240 + 56) / 1e6)
    # The proxy added the real key on the host; Codex itself only had the placeholder.
    assert len(http_server.requests) == 2
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in http_server.requests)
    # Codex ran the command, and told the model its outcome.
    assert "call_1" in model_input(http_server.requests[1])
    assert "function_call_output" in model_input(http_server.requests[1])


async def test_a_patch_asks_as_write_or_edit_with_its_paths_and_is_applied(
    scripted: AsyncSessionHandle, http_server: CannedServer
) -> None:
    await scripted.put_file("/workspace/notes.txt", "old line\n")
    patch = ("apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: hello.txt\n+hello\n"
             "*** End Patch\nEOF\n")
    change = ("apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: notes.txt\n"
              "@@\n-old line\n+new line\n*** End Patch\nEOF\n")
    http_server.enqueue(command_answer(patch, "call_add"), command_answer(change, "call_up"),
                        text_answer("Patched."))
    asked: list[PermissionRequest] = []

    def on_permission(request: PermissionRequest) -> str:
        asked.append(request)
        return "once"

    await scripted.update(permissions={"write": "ask", "edit": "ask"})
    result, events = await collect(scripted, "patch", on_permission=on_permission)

    assert result.reason == "completed", result.error
    assert [(r.tool, r.patterns) for r in asked] == [
        ("write", ["/workspace/hello.txt"]), ("edit", ["/workspace/notes.txt"])]
    assert (await scripted.get_file("/workspace/hello.txt")) == "hello\n"
    assert (await scripted.get_file("/workspace/notes.txt")) == "new line\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.state.status) for p in ended] == [("write", "completed"),
                                                        ("edit", "completed")]
    assert len(ends(events)) == 1


async def test_a_reject_with_a_message_declines_the_command_and_tells_the_model(
    scripted: AsyncSessionHandle, http_server: CannedServer
) -> None:
    http_server.enqueue(command_answer("touch /workspace/refused.txt"),
                        text_answer("Understood, I will not."))
    guidance = "do not touch files, print them instead"
    result, events = await collect(scripted, "touch it",
                                   on_permission=lambda r: ("reject", guidance))

    assert result.reason == "completed", result.error
    assert result.text == "Understood, I will not."
    probe = await scripted.shell("test -e /workspace/refused.txt && echo there || echo absent")
    assert probe.stdout == "absent\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.state.status) for p in ended] == [("bash", "error")]
    assert len(ends(events)) == 1
    # Codex's decline carries no text: the message reached the model steered into the turn.
    assert len(http_server.requests) == 2
    second = model_input(http_server.requests[1])
    assert guidance in second
    assert "rejected by user" in second


async def test_a_reject_without_a_message_ends_the_turn_rejected(
    scripted: AsyncSessionHandle, http_server: CannedServer
) -> None:
    http_server.enqueue(command_answer("touch /workspace/refused.txt"),
                        text_answer("this answer is never asked for"))
    result, events = await collect(scripted, "touch it", on_permission=lambda r: "reject")

    assert result.reason == "rejected"
    assert [e.reason for e in ends(events)] == ["rejected"]
    probe = await scripted.shell("test -e /workspace/refused.txt && echo there || echo absent")
    assert probe.stdout == "absent\n"
    assert len(http_server.requests) == 1  # the turn stopped: no second model call
    # No Codex process is left behind.
    assert await left_behind(scripted, "codex") == ""
    assert result.tokens.input == 120  # the one model call's, read by the proxy


async def test_a_failing_model_ends_the_turn_with_its_error(
    scripted: AsyncSessionHandle, http_server: CannedServer
) -> None:
    http_server.enqueue(*[Canned(status=400, body=json.dumps({"error": {
        "message": "the scripted model refuses", "type": "invalid_request_error"}}))] * 3)
    result, events = await collect(scripted, "anything")
    assert result.reason == "error"
    assert "the scripted model refuses" in (result.error or "")
    assert [e.reason for e in ends(events)] == ["error"]


async def test_an_image_without_codex_ends_the_turn_with_its_stderr(
    keyed_client: AsyncSandboxClient, http_server: CannedServer, image: str
) -> None:
    agent = keyed_client.agent("codex", harness="codex", model="openai/scripted", image=image,
                               config=AgentConfig(base_url=f"{http_server.url}/v1"))
    async with await agent.create_session() as session:
        result, events = await collect(session, "anything")
    assert result.reason == "error"
    assert "codex ended" in (result.error or ""), result.error
    assert "not found" in (result.error or "")
    assert len(ends(events)) == 1
    assert http_server.requests == []


async def test_a_later_send_continues_the_thread_also_from_another_process(
    scripted: AsyncSessionHandle, http_server: CannedServer, store_path: Path
) -> None:
    http_server.enqueue(text_answer("The answer is forty-two.", rid="resp_a"),
                        text_answer("You asked about the answer.", rid="resp_b"),
                        text_answer("Still the same thread.", rid="resp_c"))
    first, _ = await collect(scripted, "what is the answer? (first-question)")
    second, _ = await collect(scripted, "what did I ask? (second-question)")
    assert (first.reason, second.reason) == ("completed", "completed")
    assert second.text == "You asked about the answer."
    earlier = model_input(http_server.requests[1])
    assert "first-question" in earlier
    assert "The answer is forty-two." in earlier
    messages = await scripted.get_messages()
    threads = {m.conversation_id for m in messages if m.role == "assistant"}
    assert len(threads) == 1
    assert None not in threads

    # Another client on the same store (our process restarted): the thread file is in the
    # container's CODEX_HOME, and Codex resumes it.
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": KEY},
                                  reap_orphans=False) as other:
        third, _ = await collect(other.session(scripted.id), "and now? (third-question)")
    assert third.reason == "completed", third.error
    latest = model_input(http_server.requests[2])
    assert "first-question" in latest
    assert "You asked about the answer." in latest
    messages = await scripted.get_messages()
    assert {m.conversation_id for m in messages if m.role == "assistant"} == threads


async def test_abort_during_a_command_kills_codex_and_its_children_and_no_key_is_inside(
    keyed_client: AsyncSandboxClient, http_server: CannedServer, agents_image: str
) -> None:
    command = f"{STARTED}; sleep 300"
    http_server.enqueue(command_answer(command), text_answer("never"))
    agent = keyed_client.agent("codex", harness="codex", model="openai/scripted",
                               config=AgentConfig(base_url=f"{http_server.url}/v1"))
    async with await agent.create_session() as session:
        # the host's address is not in the container either
        upstream = host_address(http_server.url)
        seen = await abort_while_running(session, KEY, "codex", hidden=[upstream])
        procs, events = seen.processes, seen.events
        threads = await session.shell("ls -R /home/sandbox/.codex/sessions | grep -c jsonl")
        probe = await search_finds_a_planted_key(session, "/home/sandbox/.codex/control.txt")
    assert "codex" in procs
    assert "sleep" in procs
    assert "app-server" in procs
    assert "sleep\x00300" in procs  # the command, a child of Codex
    assert KEY not in procs
    assert upstream not in procs
    assert (seen.files, seen.files_after) == ([], [])
    assert seen.left == ""
    assert probe == ["/home/sandbox/.codex/control.txt"]
    assert threads.stdout.strip() == "1"  # the thread file is in the container's CODEX_HOME
    assert [e.reason for e in ends(events)] == ["aborted"]
    assert http_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.model
async def test_a_real_text_turn_against_smollm2(
    store_path: Path, tmp_path: Path, agents_image: str
) -> None:
    # Codex's prompt alone is about 4,500 tokens.
    await real_text_turn(store_path, tmp_path / "llama.log", "codex", "openai/smollm2-135m",
                         n_ctx=16384, n_predict=48)

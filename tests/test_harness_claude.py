"""The Claude Code harness on real containers: the real `claude` CLI of the agents image, its
model reached through the proxy.

Its model is either SmolLM2 (xllamacpp's `/v1/messages`: a real text turn) or `Scripted`, a
real loopback HTTP server speaking the Anthropic Messages wire format (SSE), which answers the
turn's first model call with a `Bash` tool call and the next with text, and records every
request, so a test can see what reached Claude's model (a refusal's message, the earlier turn
of a resumed session, the real key).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_support import read_log, settled
from harness_support import files_holding, host_address, processes, real_text_turn

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    AsyncSessionHandle,
    PermissionAnswer,
    PermissionRequest,
    PermissionRules,
    ToolPart,
)
from sandbox_sessions._types import (
    ReasoningDeltaEvent,
    StepFinishEvent,
    TextDeltaEvent,
    ToolRunningEvent,
    TurnEndEvent,
)
from sandbox_sessions.agent.harness._process import RUN_MARKER

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

KEY = "sk-ant-claude-" + secrets.token_hex(16)
"""The real key: distinctive, so any trace of it in the container is found."""
MODEL = "claude-scripted-1"
ASK: PermissionRules = {"bash": "ask"}


@pytest.fixture(autouse=True)
def _real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's key, as the service reads it (both transports run in this process)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


# --- the scripted model --------------------------------------------------------------------


Reply = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""The content blocks answering one of the turn's model calls (its request body); a dict
instead is an error body, sent with status 400."""


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Scripted:
    """A loopback Anthropic Messages server: `reply` answers each main model call (one that
    offers tools); other calls (a title, count_tokens) get a short text or a count."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                body = json.loads(raw)
                with owner._lock:
                    owner.seen.append(Seen(self.path, {k.lower(): v for k, v in
                                                       self.headers.items()}, body))
                if self.path.startswith("/v1/messages/count_tokens"):
                    self._send("application/json", json.dumps({"input_tokens": 42}).encode())
                    return
                blocks = owner.reply(body) if body.get("tools") else [text("ok")]
                if isinstance(blocks, dict):
                    self._send("application/json", json.dumps(blocks).encode(), 400)
                elif body.get("stream"):
                    self._send("text/event-stream", stream(blocks, body.get("model", "")))
                else:
                    self._send("application/json", json.dumps(message(
                        blocks, body.get("model", ""))).encode())

            def do_GET(self) -> None:
                self._send("application/json", json.dumps({"data": [
                    {"type": "model", "id": MODEL, "display_name": MODEL}]}).encode())

            def _send(self, kind: str, data: bytes, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The bodies of the main model calls, in order."""
        return [seen.body for seen in self.seen
                if seen.path.startswith("/v1/messages?") or seen.path == "/v1/messages"
                if seen.body.get("tools")]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def bash_call(command: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(8), "name": "Bash",
            "input": {"command": command, "description": "run it"}}


USAGE = {"input_tokens": 30, "output_tokens": 7}


def message(blocks: list[dict[str, Any]], model: str) -> dict[str, Any]:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {"id": "msg_" + secrets.token_hex(8), "type": "message", "role": "assistant",
            "model": model, "content": blocks, "stop_reason": stop, "usage": USAGE}


def stream(blocks: list[dict[str, Any]], model: str) -> bytes:
    """The SSE body of an answer of `blocks`, in the order the API sends its events."""
    whole = message(blocks, model)
    start = {**whole, "content": [], "stop_reason": None,
             "usage": {"input_tokens": USAGE["input_tokens"], "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(blocks):
        if block["type"] == "thinking":
            events += [("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "thinking",
                                                                  "thinking": "",
                                                                  "signature": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "thinking_delta",
                                                          "thinking": block["thinking"]}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "signature_delta",
                                                          "signature": block["signature"]}})]
        elif block["type"] == "text":
            events += [("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta",
                                                          "text": block["text"]}})]
        else:
            events += [("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {**block, "input": {}}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "input_json_delta",
                                                          "partial_json": json.dumps(
                                                              block["input"])}})]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events += [("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": whole["stop_reason"]},
                                  "usage": {"output_tokens": USAGE["output_tokens"]}}),
               ("message_stop", {"type": "message_stop"})]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n"
                   for name, data in events).encode()


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results of a request's last (user) message."""
    content = body["messages"][-1]["content"]
    return [block for block in content if isinstance(block, dict)
            and block.get("type") == "tool_result"] if isinstance(content, list) else []


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


THINKING = {"type": "thinking", "thinking": "The user wants the command run.",
            "signature": "c2lnbmF0dXJl"}


def bash_then_text(command: str, final: str = "All done.") -> Reply:
    """Bash `command` first (after some thinking); once its result came back, `final`."""
    def reply(body: dict[str, Any]) -> list[dict[str, Any]]:
        if tool_results(body):
            return [text(final)]
        return [THINKING, text("Running it."), bash_call(command)]
    return reply


class Answers:
    """An `on_permission` callback: records each request, gives `answer`."""

    def __init__(self, answer: PermissionAnswer) -> None:
        self.answer = answer
        self.requests: list[PermissionRequest] = []

    def __call__(self, request: PermissionRequest) -> PermissionAnswer:
        self.requests.append(request)
        return self.answer


@pytest.fixture
def scripted() -> Iterator[Callable[[Reply], Scripted]]:
    servers: list[Scripted] = []

    def start(reply: Reply) -> Scripted:
        server = Scripted(reply).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


async def claude_session(client: AsyncSandboxClient, image: str, base_url: str, *,
                         model: str = MODEL, permissions: PermissionRules | None = None,
                         system: str | None = None) -> AsyncSessionHandle:
    config = AgentConfig(base_url=base_url, system=system)
    agent = client.agent("claude", harness="claude-code", model=f"anthropic/{model}",
                         config=config, permissions=permissions, image=image)
    return await agent.create_session(title="claude code")


async def turn_ends(session: AsyncSessionHandle, turns: int) -> list[str]:
    log = await read_log(session, settled(turns), within=30)
    return [event.reason for event in log if isinstance(event, TurnEndEvent)]


def tools(parts: list[Any]) -> list[ToolPart]:
    return [part for part in parts if isinstance(part, ToolPart)]


MARKED = r"""
import os, sys
mark = sys.argv[1].encode() + b"="
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                if any(v.startswith(mark) for v in f.read().split(b"\0")):
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        print(f.read().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            pass
"""


async def key_traces(session: AsyncSessionHandle, upstream: str) -> list[str]:
    """Where the key, or the upstream's address on the host, is in the container: files, or
    a process's environment or argv."""
    running = await processes(session)
    found = []
    for secret in (KEY, host_address(upstream)):
        found += await files_holding(session, secret)
        found += [f"a process holds {secret}"] if secret in running else []
    return found


async def marked_processes(session: AsyncSessionHandle) -> list[str]:
    """The command lines of the processes that carry a harness run's marker."""
    result = await session.shell(f"python3 -c '{MARKED}' {RUN_MARKER}", timeout=30)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


# --- the model -------------------------------------------------------------------------------


async def test_an_image_without_claude_ends_the_turn_with_an_error(
    embedded_client: AsyncSandboxClient, image: str
) -> None:
    session = await claude_session(embedded_client, image, "http://127.0.0.1:9")
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Hello?")
        ends = await turn_ends(session, 1)
    assert result.reason == "error"
    # the launcher looks for `claude` before it connects: it exits 127 and says why
    assert result.error == ("Claude Code could not start in the sandbox: it exited with 127: "
                            "claude: command not found")
    assert ends == ["error"]


# --- a real model ----------------------------------------------------------------------------


@pytest.mark.model
async def test_a_real_text_turn_against_smollm2_through_the_proxy(
    store_path: Path, tmp_path: Path, agents_image: str
) -> None:
    # Claude asks for 32000 tokens and a small model may never stop: answers are capped.
    # Its prompt (system prompt and tool schemas) is about 4,100 tokens.
    await real_text_turn(store_path, tmp_path / "llama.log", "claude-code",
                         "anthropic/smollm2-135m", n_ctx=8192, n_predict=24, base="anthropic")


# --- permissions and tools (the scripted model) ----------------------------------------------


async def test_once_runs_the_bash_call_in_the_container(
    client: AsyncSandboxClient, agents_image: str, scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(bash_then_text("echo ran > /workspace/ran.txt"))
    answers = Answers("once")
    session = await claude_session(client, agents_image, server.url, permissions=ASK)
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Write the file.", on_permission=answers)
        written = await session.get_file("/workspace/ran.txt")
        ends = await turn_ends(session, 1)
        log = await read_log(session, settled(1))
        traces = await key_traces(session, server.url)
    assert (result.reason, result.error) == ("completed", None)
    assert result.text == "All done."
    assert [(r.tool, r.patterns) for r in answers.requests] == [
        ("bash", ["echo ran > /workspace/ran.txt"])]
    assert answers.requests[0].metadata["harness_tool"] == "Bash"
    [part] = tools(result.parts)
    assert (part.tool, part.state.status) == ("bash", "completed")
    assert part.state.input["command"] == "echo ran > /workspace/ran.txt"
    assert written == "ran\n"
    assert ends == ["completed"]
    assert traces == []  # the key is nowhere in the container...
    keys = {seen.headers.get("x-api-key") for seen in server.seen}
    assert keys == {KEY}  # ...and every request reached the model with the real one
    assert len(server.calls) == 2
    [done] = tool_results(server.calls[1])
    assert not done.get("is_error")
    # a step per model call, with the tokens the proxy read from each answer
    steps = [event.part for event in log if isinstance(event, StepFinishEvent)]
    assert [(step.reason, step.tokens.input, step.tokens.output) for step in steps] == [
        ("tool_calls", 30, 7), ("stop", 30, 7)]
    assert [event.part.call_id for event in log if isinstance(event, ToolRunningEvent)] == [
        part.call_id]
    thought = [event.delta for event in log if isinstance(event, ReasoningDeltaEvent)]
    assert thought == [THINKING["thinking"]]
    said = [(event.part_id, event.delta) for event in log if isinstance(event, TextDeltaEvent)]
    assert [delta for _, delta in said] == ["Running it.", "All done."]
    assert said[0][0] != said[1][0]  # a part each


async def test_a_reject_with_a_message_reaches_claude_and_the_turn_goes_on(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(bash_then_text("echo ran > /workspace/ran.txt", "I will not."))
    answers = Answers(("reject", "use printf instead"))
    session = await claude_session(embedded_client, agents_image, server.url,
                                   permissions=ASK)
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Write the file.", on_permission=answers)
        ran = (await session.shell("test -e /workspace/ran.txt")).exit_code == 0
        ends = await turn_ends(session, 1)
    assert (result.reason, result.text) == ("completed", "I will not.")
    assert [r.patterns for r in answers.requests] == [["echo ran > /workspace/ran.txt"]]
    assert not ran
    [part] = tools(result.parts)
    assert part.state.status == "error"
    assert "use printf instead" in (part.state.error or "")
    [refused] = tool_results(server.calls[1])
    assert refused.get("is_error") is True
    assert "use printf instead" in result_text(refused)
    assert ends == ["completed"]


async def test_a_reject_without_a_message_ends_the_turn_rejected(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(bash_then_text("echo ran > /workspace/ran.txt"))
    answers = Answers("reject")
    session = await claude_session(embedded_client, agents_image, server.url,
                                   permissions=ASK)
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Write the file.", on_permission=answers)
        ran = (await session.shell("test -e /workspace/ran.txt")).exit_code == 0
        ends = await turn_ends(session, 1)
    assert result.reason == "rejected"
    assert len(answers.requests) == 1
    assert not ran
    assert ends == ["rejected"]
    assert len(server.calls) == 1  # Claude stopped: no model call after the refusal


async def test_always_adds_a_rule_that_allows_the_next_call_unasked(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    def reply(body: dict[str, Any]) -> list[dict[str, Any]]:
        done = len([m for m in body["messages"] if tool_results({"messages": [m]})])
        if done == 0:
            return [bash_call("echo a > /workspace/a.txt")]
        if done == 1:
            return [bash_call("echo b > /workspace/b.txt")]
        return [text("Both written.")]

    server = scripted(reply)
    answers = Answers("always")
    session = await claude_session(embedded_client, agents_image, server.url, permissions=ASK)
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Write two files.", on_permission=answers)
        written = [await session.get_file(f"/workspace/{name}.txt") for name in "ab"]
        rules = (await session.get_info()).config.permissions
    assert (result.reason, result.text) == ("completed", "Both written.")
    assert [r.patterns for r in answers.requests] == [["echo a > /workspace/a.txt"]]
    assert written == ["a\n", "b\n"]
    assert answers.requests[0].always == ["echo *"]
    assert rules == {"bash": {"*": "ask", "echo *": "allow"}}  # the session's rule
    assert [part.state.status for part in tools(result.parts)] == ["completed", "completed"]


async def test_a_deny_rule_refuses_without_asking_and_claude_reads_why(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(bash_then_text("rm -rf /workspace/src", "Understood."))
    answers = Answers("once")
    session = await claude_session(embedded_client, agents_image, server.url,
                                   permissions={"bash": {"rm *": "deny"}})
    async with session:
        await session.shell("mkdir -p /workspace/src")
        with anyio.fail_after(90):
            result = await session.send("Clean up.", on_permission=answers)
        kept = (await session.shell("test -d /workspace/src")).exit_code == 0
    assert (result.reason, result.text) == ("completed", "Understood.")
    assert answers.requests == []
    assert kept
    [refused] = tool_results(server.calls[1])
    assert refused.get("is_error") is True
    assert "denied by the session's permission rules" in result_text(refused)


async def test_a_read_claude_would_run_unasked_comes_to_the_session_rules(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    def reply(body: dict[str, Any]) -> list[dict[str, Any]]:
        if tool_results(body):
            return [text("Read it.")]
        return [{"type": "tool_use", "id": "toolu_read1", "name": "Read",
                 "input": {"file_path": "/workspace/notes.txt"}}]

    server = scripted(reply)
    answers = Answers("once")
    session = await claude_session(embedded_client, agents_image, server.url,
                                   permissions={"read": "ask"})
    async with session:
        await session.put_file("/workspace/notes.txt", "the notes\n")
        with anyio.fail_after(90):
            result = await session.send("Read the notes.", on_permission=answers)
    assert result.reason == "completed"
    assert [(r.tool, r.patterns) for r in answers.requests] == [
        ("read", ["/workspace/notes.txt"])]
    [part] = tools(result.parts)
    assert (part.tool, part.state.status) == ("read", "completed")
    assert "the notes" in (part.state.output or "")
    [read] = tool_results(server.calls[1])
    assert "the notes" in result_text(read)


async def test_a_model_error_ends_the_turn_with_its_message(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    def reply(body: dict[str, Any]) -> Any:
        return {"type": "error", "error": {"type": "invalid_request_error",
                                           "message": "prompt is not acceptable here"}}

    server = scripted(reply)
    session = await claude_session(embedded_client, agents_image, server.url)
    async with session:
        with anyio.fail_after(90):
            result = await session.send("Hello?")
        ends = await turn_ends(session, 1)
    assert result.reason == "error"
    assert "prompt is not acceptable here" in (result.error or "")
    assert ends == ["error"]
    assert server.calls


# --- the conversation goes on ----------------------------------------------------------------


async def test_a_second_send_resumes_the_same_claude_session(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    def reply(body: dict[str, Any]) -> list[dict[str, Any]]:
        return [text(f"answer {len(body['messages'])}")]

    server = scripted(reply)
    session = await claude_session(embedded_client, agents_image, server.url,
                                   system="Answer like a pirate.")
    async with session:
        with anyio.fail_after(120):
            first = await session.send("The password is swordfish.")
            second = await session.send("What is the password?")
        ends = await turn_ends(session, 2)
    assert (first.reason, second.reason) == ("completed", "completed")
    assert ends == ["completed", "completed"]
    assert len(server.calls) == 2
    later = json.dumps(server.calls[1]["messages"])
    assert "The password is swordfish." in later  # the first turn's prompt...
    assert first.text in later  # ...and answer are in the second turn's request
    assert second.text == f"answer {len(server.calls[1]['messages'])}"
    # the agent's system prompt is added to Claude's, in each turn
    assert all("Answer like a pirate." in json.dumps(call["system"]) for call in server.calls)


async def test_a_new_process_resumes_the_claude_session_from_the_store(
    embedded_client: AsyncSandboxClient, agents_image: str, store_path: Path,
    scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(lambda body: [text(f"answer {len(body['messages'])}")])
    session = await claude_session(embedded_client, agents_image, server.url)
    async with session:
        with anyio.fail_after(120):
            first = await session.send("Remember the number 4711.")
            # another client over the same store: a new service, nothing kept in memory
            async with AsyncSandboxClient(store=store_path, reap_orphans=False) as other:
                second = await other.session(session.id).send("Which number?")
    assert (first.reason, second.reason) == ("completed", "completed")
    assert len(server.calls) == 2
    assert "Remember the number 4711." in json.dumps(server.calls[1]["messages"])


async def test_a_conversation_claude_lost_is_started_anew(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    server = scripted(lambda body: [text(f"answer {len(body['messages'])}")])
    session = await claude_session(embedded_client, agents_image, server.url)
    async with session:
        with anyio.fail_after(120):
            first = await session.send("Remember the number 4711.")
            gone = await session.shell("rm -r /home/sandbox/.claude/projects")
            second = await session.send("Which number?")
            third = await session.send("And now?")
    assert gone.exit_code == 0
    assert (first.reason, second.reason, third.reason) == ("completed",) * 3
    assert len(server.calls) == 3
    assert "4711" not in json.dumps(server.calls[1]["messages"])  # a new conversation...
    assert "Which number?" in json.dumps(server.calls[2]["messages"])  # ...which goes on


# --- abort -----------------------------------------------------------------------------------


async def test_abort_during_a_long_bash_call_kills_claude_and_the_command(
    embedded_client: AsyncSandboxClient, agents_image: str,
    scripted: Callable[[Reply], Scripted]
) -> None:
    slow = bash_then_text("python3 -c 'import time; time.sleep(300)'")

    def reply(body: dict[str, Any]) -> list[dict[str, Any]]:
        if "Now just answer." in json.dumps(body["messages"][-1]):
            return [text("Answered.")]
        return slow(body)

    server = scripted(reply)
    session = await claude_session(embedded_client, agents_image, server.url)
    async with session:
        with anyio.fail_after(90):
            async for event in session.stream("Wait a while."):
                if isinstance(event, ToolRunningEvent):
                    break
        running: list[str] = []
        with anyio.fail_after(30):
            while not any("time.sleep(300)" in line for line in running):
                running = await marked_processes(session)
                await anyio.sleep(0.2)
        traces = await key_traces(session, server.url)  # while Claude runs
        assert await session.abort()
        ends = await turn_ends(session, 1)
        left = await marked_processes(session)
        with anyio.fail_after(60):  # the conversation goes on after the abort
            after = await session.send("Now just answer.")
    assert any(line.startswith("claude ") for line in running), running
    assert traces == []
    assert ends == ["aborted"]
    assert left == []
    assert (after.reason, after.text) == ("completed", "Answered.")
    assert "Wait a while." in json.dumps(server.calls[-1]["messages"])


"""The opencode harness: the real `opencode serve` (opencode-ai 1.18.33) in a real container
(the agents image), driven over its HTTP API through the helper's tunnel, its model reached
through the model proxy.

Tool calls and permission prompts are driven by `ChatServer`, a real loopback HTTP server
speaking OpenAI chat-completions SSE: a request that offers tools gets the next scripted
answer (a `bash` tool call, then text); one without tools is opencode's title request and gets
a title. The text turn of the `model` tier runs against SmolLM2 (xllamacpp serves
`/v1/chat/completions`).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
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

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle
from sandbox_sessions._types import AGENTS_IMAGE, AgentConfig, PermissionRequest
from sandbox_sessions.agent.harness._tunnel_http import TunnelTransport
from sandbox_sessions.sandbox._container import DockerSandbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

KEY = "sk-test-secret-" + secrets.token_hex(16)
"""The real (upstream) key: distinctive, so any trace of it in the container is found."""
USAGE = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "scripted", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}


def text_answer(text: str, reasoning: str | None = None) -> list[dict[str, Any]]:
    half = len(text) // 2
    thought = [] if reasoning is None else [chunk({"reasoning_content": reasoning})]
    return [chunk({"role": "assistant", "content": ""}), *thought,
            chunk({"content": text[:half]}), chunk({"content": text[half:]}),
            chunk({}, "stop")]


def tool_answer(name: str, arguments: dict[str, Any], call_id: str) -> list[dict[str, Any]]:
    return [chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                   "function": {"name": name,
                                                "arguments": json.dumps(arguments)}}]}),
            chunk({}, "tool_calls")]


def bash_answer(command: str, call_id: str = "call_1") -> list[dict[str, Any]]:
    arguments = json.dumps({"command": command, "description": "Run the command"})
    return [chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                   "function": {"name": "bash", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
            chunk({}, "tool_calls")]


class ChatServer:
    """Chat completions over SSE on 127.0.0.1: requests with tools take the queued answers in
    order (an empty queue: a 500), those without (titles) get a title. Every request is kept,
    headers included (names in lower case)."""

    def __init__(self) -> None:
        self.answers: deque[list[dict[str, Any]] | int] = deque()
        """Each a list of chunks, or an HTTP status to fail with."""
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with owner.lock:
                    owner.requests.append((headers, body))
                    if not body.get("tools"):
                        answer: list[dict[str, Any]] | int = text_answer("A title")
                    else:
                        answer = owner.answers.popleft() if owner.answers else 500
                if isinstance(answer, int):
                    data = json.dumps({"error": {
                        "message": f"the scripted model fails with {answer}",
                        "type": "invalid_request_error"}}).encode()
                    self.send_response(answer)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                usage = {**chunk({}), "choices": [], "usage": USAGE}
                for item in [*answer, usage, "[DONE]"]:
                    text = item if isinstance(item, str) else json.dumps(item)
                    data = f"data: {text}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def tool_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, body in self.requests if body.get("tools")]


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture(scope="module")
def agents_image() -> str:
    from sandbox_sessions.sandbox._engine import Engine

    if Engine().image_labels(AGENTS_IMAGE) is None:
        pytest.fail(f"{AGENTS_IMAGE} is missing: run `sandbox-sessions images build "
                    "--with opencode` first")
    return AGENTS_IMAGE


@pytest.fixture
async def keyed_client(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": KEY}) as opened:
        yield opened


@pytest.fixture
async def scripted(keyed_client: AsyncSandboxClient, chat: ChatServer, agents_image: str
                   ) -> AsyncIterator[AsyncSessionHandle]:
    """An opencode session whose model is the scripted server; every command asks."""
    agent = keyed_client.agent("oc", harness="opencode", model="openai/scripted",
                               config=AgentConfig(base_url=chat.url),
                               permissions={"bash": {"*": "ask"}})
    async with await agent.create_session() as session:
        yield session


def tool_messages(body: dict[str, Any]) -> str:
    """What the model was told of tool results, as JSON text."""
    return json.dumps([m for m in body["messages"] if m.get("role") == "tool"])


async def test_the_tunnel_transport_reaches_a_server_in_the_container_and_streams_it(
    embedded_client: AsyncSandboxClient, image: str
) -> None:
    async with await embedded_client.agent("t", image=image).create_session() as session:
        payload = secrets.token_bytes(3 << 20)
        await session.put_file("/workspace/big.bin", payload)
        await session.shell("setsid nohup python3 -m http.server --bind 127.0.0.1 8765 "
                            "-d /workspace >/dev/null 2>&1 &")
        sandbox = await embedded_client.service.sandbox(session.id)
        assert isinstance(sandbox, DockerSandbox)
        async with httpx.AsyncClient(transport=TunnelTransport(sandbox, 8765),
                                     base_url="http://127.0.0.1:8765") as client:
            for _ in range(100):
                try:
                    missing = await client.get("/missing.txt")
                    break
                except httpx.ConnectError:
                    await anyio.sleep(0.1)
            else:
                pytest.fail("the server in the container never listened")
            assert missing.status_code == 404
            pieces: list[bytes] = []
            async with client.stream("GET", "/big.bin") as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(payload))
                async for piece in response.aiter_raw():
                    pieces.append(piece)
            assert b"".join(pieces) == payload
            assert len(pieces) > 1  # streamed as it came, not read whole first
        async with httpx.AsyncClient(transport=TunnelTransport(sandbox, 8766)) as nothing:
            with pytest.raises(httpx.ConnectError, match="8766"):
                await nothing.get("http://127.0.0.1:8766/")


async def test_a_command_asks_the_broker_and_runs_once_in_the_container(
    scripted: AsyncSessionHandle, chat: ChatServer
) -> None:
    command = "echo ran-by-opencode > /workspace/ran.txt"
    chat.answers.extend([bash_answer(command), text_answer("The file is written.")])
    asked: list[PermissionRequest] = []

    def on_permission(request: PermissionRequest) -> str:
        asked.append(request)
        return "once"

    result, events = await collect(scripted, "write the file", on_permission=on_permission)

    assert result.reason == "completed", result.error
    assert result.text == "The file is written."
    assert [(r.tool, r.patterns) for r in asked] == [("bash", [command])]
    assert (await scripted.get_file("/workspace/ran.txt")) == "ran-by-opencode\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.call_id, p.state.status) for p in ended] == [
        ("bash", "call_1", "completed")]
    assert ended[0].state.input["command"] == command
    assert "".join(e.delta for e in events if e.type == "text-delta") == "The file is written."
    assert len(ends(events)) == 1
    steps = [e.part for e in events if e.type == "step-finish"]
    assert [s.reason for s in steps] == ["tool-calls", "stop"]
    assert sum(s.tokens.output for s in steps) >= 10  # two answers, 5 each (and the title's)
    # The proxy added the real key on the host; opencode itself only had the placeholder.
    assert chat.requests
    assert all(h["authorization"] == f"Bearer {KEY}" for h, _ in chat.requests)
    # opencode ran the command, and told the model its outcome.
    bodies = chat.tool_requests()
    assert len(bodies) == 2
    assert "call_1" in tool_messages(bodies[1])


async def test_write_asks_with_its_path_todos_and_reasoning_become_our_events(
    scripted: AsyncSessionHandle, chat: ChatServer
) -> None:
    todos = [{"content": "Write the file", "status": "completed", "priority": "high"},
             {"content": "Report", "status": "in_progress", "priority": "low"}]
    chat.answers.extend([
        tool_answer("write", {"filePath": "/workspace/new.txt", "content": "written\n"},
                    "call_write"),
        tool_answer("todowrite", {"todos": todos}, "call_todo"),
        text_answer("All done.", reasoning="The file is there; report it.")])
    asked: list[PermissionRequest] = []

    def on_permission(request: PermissionRequest) -> str:
        asked.append(request)
        return "once"

    await scripted.update(permissions={"write": "ask"})
    result, events = await collect(scripted, "write and plan", on_permission=on_permission)

    assert result.reason == "completed", result.error
    assert [(r.tool, r.patterns) for r in asked] == [("write", ["/workspace/new.txt"])]
    assert (await scripted.get_file("/workspace/new.txt")) == "written\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.call_id, p.state.status) for p in ended] == [
        ("write", "call_write", "completed"), ("todowrite", "call_todo", "completed")]
    [updated] = [e for e in events if e.type == "todo-updated"]
    assert [(t.content, t.status, t.priority) for t in updated.todos] == [
        ("Write the file", "completed", "high"), ("Report", "in_progress", "low")]
    reasoning = "".join(e.delta for e in events if e.type == "reasoning-delta")
    assert reasoning == "The file is there; report it."
    assert result.text == "All done."
    assert len(ends(events)) == 1


async def test_a_failing_model_ends_the_turn_with_its_error(
    scripted: AsyncSessionHandle, chat: ChatServer
) -> None:
    chat.answers.extend([400, 400, 400])
    result, events = await collect(scripted, "anything")
    assert result.reason == "error"
    assert "the scripted model fails with 400" in (result.error or ""), result.error
    assert [e.reason for e in ends(events)] == ["error"]


async def test_a_reject_with_a_message_reaches_opencode_and_the_turn_goes_on(
    scripted: AsyncSessionHandle, chat: ChatServer
) -> None:
    chat.answers.extend([bash_answer("touch /workspace/refused.txt"),
                         text_answer("Understood, I will not.")])
    guidance = "do not touch files, print them instead"
    result, events = await collect(scripted, "touch it",
                                   on_permission=lambda r: ("reject", guidance))

    assert result.reason == "completed", result.error
    assert result.text == "Understood, I will not."
    probe = await scripted.shell("test -e /workspace/refused.txt && echo there || echo absent")
    assert probe.stdout == "absent\n"
    ended = [e.part for e in events if e.type == "tool-end"]
    assert [(p.tool, p.state.status) for p in ended] == [("bash", "error")]
    assert guidance in (ended[0].state.error or "")
    assert len(ends(events)) == 1
    bodies = chat.tool_requests()
    assert len(bodies) == 2
    assert guidance in tool_messages(bodies[1])


async def test_a_reject_without_a_message_ends_the_turn_rejected(
    scripted: AsyncSessionHandle, chat: ChatServer
) -> None:
    chat.answers.extend([bash_answer("touch /workspace/refused.txt"),
                         text_answer("this answer is never asked for")])
    result, events = await collect(scripted, "touch it", on_permission=lambda r: "reject")

    assert result.reason == "rejected"
    assert [e.reason for e in ends(events)] == ["rejected"]
    probe = await scripted.shell("test -e /workspace/refused.txt && echo there || echo absent")
    assert probe.stdout == "absent\n"
    assert len(chat.tool_requests()) == 1  # the turn stopped: no second model call
    assert await left_behind(scripted, "opencode") == ""


async def test_an_image_without_opencode_ends_the_turn_with_its_output(
    keyed_client: AsyncSandboxClient, chat: ChatServer, image: str
) -> None:
    agent = keyed_client.agent("oc", harness="opencode", model="openai/scripted", image=image,
                               config=AgentConfig(base_url=chat.url))
    async with await agent.create_session() as session:
        result, events = await collect(session, "anything")
    assert result.reason == "error"
    assert "opencode could not start" in (result.error or ""), result.error
    assert "not found" in (result.error or "")
    assert len(ends(events)) == 1
    assert chat.requests == []


async def test_a_later_send_continues_the_session_also_from_another_process(
    scripted: AsyncSessionHandle, chat: ChatServer, store_path: Path
) -> None:
    chat.answers.extend([text_answer("The answer is forty-two."),
                         text_answer("You asked about the answer."),
                         text_answer("Still the same session.")])
    first, _ = await collect(scripted, "what is the answer? (first-question)")
    second, _ = await collect(scripted, "what did I ask? (second-question)")
    assert (first.reason, second.reason) == ("completed", "completed"), second.error
    assert second.text == "You asked about the answer."
    earlier = json.dumps(chat.tool_requests()[1]["messages"])
    assert "first-question" in earlier
    assert "The answer is forty-two." in earlier
    messages = await scripted.get_messages()
    conversations = {m.conversation_id for m in messages if m.role == "assistant"}
    assert len(conversations) == 1
    assert None not in conversations

    # Another client on the same store (our process restarted): opencode's data is in the
    # container, and the session goes on.
    async with AsyncSandboxClient(store=store_path, api_keys={"openai": KEY},
                                  reap_orphans=False) as other:
        third, _ = await collect(other.session(scripted.id), "and now? (third-question)")
    assert third.reason == "completed", third.error
    latest = json.dumps(chat.tool_requests()[2]["messages"])
    assert "first-question" in latest
    assert "You asked about the answer." in latest
    messages = await scripted.get_messages()
    assert {m.conversation_id for m in messages if m.role == "assistant"} == conversations


async def test_abort_during_a_command_kills_opencode_and_its_children_and_no_key_is_inside(
    keyed_client: AsyncSandboxClient, chat: ChatServer, agents_image: str
) -> None:
    command = f"{STARTED}; sleep 300"
    chat.answers.extend([bash_answer(command), text_answer("never")])
    agent = keyed_client.agent("oc", harness="opencode", model="openai/scripted",
                               config=AgentConfig(base_url=chat.url))
    async with await agent.create_session() as session:
        # the host's address is not in the container either
        upstream = host_address(chat.url)
        seen = await abort_while_running(session, KEY, "opencode", hidden=[upstream])
        procs, events = seen.processes, seen.events
        data = await session.shell("ls /home/sandbox/.local/share/opencode")
        probe = await search_finds_a_planted_key(
            session, "/home/sandbox/.local/share/opencode/control.txt")
    assert "opencode\x00serve" in procs
    assert "sleep\x00300" in procs  # the command, a child of opencode
    assert "OPENCODE_CONFIG_CONTENT" in procs  # the environments were read
    assert KEY not in procs
    assert upstream not in procs
    assert (seen.files, seen.files_after) == ([], [])
    assert seen.left == ""
    assert data.stdout.strip()  # opencode's data stays in the container
    assert probe == ["/home/sandbox/.local/share/opencode/control.txt"]
    assert [e.reason for e in ends(events)] == ["aborted"]
    assert chat.requests[0][0]["authorization"] == f"Bearer {KEY}"


@pytest.mark.model
async def test_a_real_text_turn_against_smollm2(
    store_path: Path, tmp_path: Path, agents_image: str
) -> None:
    # opencode asks for up to 32000 tokens, which llama.cpp's n_predict does not cap: its
    # model's options do.
    await real_text_turn(store_path, tmp_path / "llama.log", "opencode",
                         "openai/smollm2-135m", n_ctx=8192,
                         config=AgentConfig(context_limit=8192, options={"max_tokens": 24}))

"""The model proxy on real containers: a client in the container (network `none`) reaches a
real loopback model server on the host through the helper's tunnel, and the key stays on the
host.

The upstream is `CannedServer` (canned Anthropic and OpenAI answers); the client is python3 in
the container, speaking HTTP to `http://127.0.0.1:<port>` with the placeholder key.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from servers import HTTPX_UNDER_TRIO, Canned, CannedServer, sse, sse_data

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, SandboxError
from sandbox_sessions._types import Tokens
from sandbox_sessions.agent._proxy import PLACEHOLDER_KEY, ModelProxy
from sandbox_sessions.sandbox._channel import ACK_IN, CANCEL, DATA_IN, END_IN, STREAM_BIT
from sandbox_sessions.sandbox._container import DockerSandbox
from sandbox_sessions.sandbox._runtime import HelperRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

KEY = "sk-ant-test-" + secrets.token_hex(16)
"""The real key: distinctive, so any trace of it in the container is found."""
CLIENT_PATH = "/tmp/proxy_client.py"
# The client in the container: one JSON spec as argv[1], one JSON answer on stdout.
CLIENT = r'''
import http.client, json, socket, sys

def request(port, spec, conn=None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = b"x" * spec["size"] if "size" in spec else spec.get("body", "").encode()
    headers = dict(spec.get("headers", {}))
    if "pad" in spec:
        headers["x-pad"] = "a" * spec["pad"]
    conn.request(spec.get("method", "POST"), spec["path"], body=body or None, headers=headers)
    resp = conn.getresponse()
    try:
        data, cut = resp.read(), False
    except http.client.IncompleteRead as exc:
        data, cut = exc.partial, True
    return {"status": resp.status, "body": data.decode("utf-8", "replace"), "cut": cut,
            "local": conn.sock.getsockname()[1] if conn.sock else None,
            "headers": {k.lower(): v for k, v in resp.getheaders()}}

def several(port, spec):
    # Each request on the same kept-alive connection.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    return {"answers": [request(port, dict(spec, method=method, path=path,
                                           body=spec["body"] if method == "POST" else ""), conn)
                        for method, path in spec["paths"]]}

def read_all(sock):
    parts = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(parts).decode("utf-8", "replace")
        parts.append(data)

def raw(port, spec):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(spec["raw"].encode())
    return {"raw": read_all(sock)}

def chunked(port, spec):
    # A chunked body of spec["chunks"] chunks of spec["chunk"] bytes; the answer is read even
    # when the server stopped taking the body.
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      % spec["path"]).encode())
        piece = b"%x\r\n%s\r\n" % (spec["chunk"], b"y" * spec["chunk"])
        for _ in range(spec["chunks"]):
            sock.sendall(piece)
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return {"raw": read_all(sock)}

def overlap(port, spec):
    # Connection A sends half of its request and waits; B is served meanwhile; then A ends.
    body = spec["body"].encode()
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Connection: close\r\nContent-Length: %d\r\n\r\n" % (spec["path"], len(body)))
    first = socket.create_connection(("127.0.0.1", port), timeout=60)
    first.sendall(head.encode() + body[:5])
    second = request(port, spec)
    first.sendall(body[5:])
    return {"second": second, "first": read_all(first)}

def refused(port, spec):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return {"refused": True}
    return {"refused": False}

spec = json.loads(sys.argv[1])
print(json.dumps(globals()[spec["do"]](spec["port"], spec)))
'''
ANTHROPIC_HEADERS = {"content-type": "application/json", "x-api-key": PLACEHOLDER_KEY,
                     "authorization": f"Bearer {PLACEHOLDER_KEY}",
                     "anthropic-version": "2023-06-01"}
MESSAGES_BODY = json.dumps({"model": "claude-test", "max_tokens": 10, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]})


def anthropic_stream() -> list[bytes | str]:
    return sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": " there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 34}}),
        ("message_stop", {"type": "message_stop"}),
    )


def joined(chunks: list[bytes | str]) -> str:
    return "".join(c.decode() if isinstance(c, bytes) else c for c in chunks)


@pytest.fixture
async def session(embedded_client: AsyncSandboxClient, image: str
                  ) -> AsyncIterator[AsyncSessionHandle]:
    async with await embedded_client.agent("proxy", image=image).create_session() as handle:
        await handle.put_file(CLIENT_PATH, CLIENT)
        yield handle


async def run_client(session: AsyncSessionHandle, spec: dict[str, Any]) -> dict[str, Any]:
    result = await session.shell(f"python3 {CLIENT_PATH} '{json.dumps(spec)}'", timeout=120)
    assert result.exit_code == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


async def test_a_streamed_answer_comes_back_intact_with_the_real_key_added_on_the_host(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    usage: list[Tokens] = []
    http_server.enqueue(Canned(chunks=anthropic_stream()))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url, on_usage=usage.append) as proxy:
        assert proxy.base_url == f"http://127.0.0.1:{proxy.port}"
        answer = await run_client(session, {
            "do": "request", "port": proxy.port, "path": "/v1/messages?beta=true",
            "headers": ANTHROPIC_HEADERS, "body": MESSAGES_BODY})
    assert answer["status"] == 200
    assert answer["body"] == joined(anthropic_stream())
    assert answer["headers"]["content-type"] == "text/event-stream"
    [seen] = http_server.requests
    assert (seen.method, seen.path) == ("POST", "/v1/messages?beta=true")
    assert [v for n, v in seen.header_list if n == "x-api-key"] == [KEY]
    assert "authorization" not in seen.headers
    assert PLACEHOLDER_KEY not in json.dumps(seen.header_list)
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.json["messages"] == [{"role": "user", "content": "hi"}]
    assert usage == [Tokens(input=12, output=34, cache_read=3)]
    assert proxy.usage == usage[0]


async def test_openai_chat_and_responses_get_a_bearer_key_and_their_usage_is_read(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    usage: list[Tokens] = []
    chat = sse_data(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 20, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4}}}, "[DONE]")
    responses = sse(
        ("response.created", {"type": "response.created", "response": {"usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        ("response.completed", {"type": "response.completed", "response": {"usage": {
            "input_tokens": 30, "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 2}}}}))
    http_server.enqueue(Canned(chunks=chat), Canned(chunks=responses))
    headers = {"content-type": "application/json", "authorization": f"Bearer {PLACEHOLDER_KEY}"}
    async with ModelProxy(sandbox, provider="openai", api_key=KEY, base_url=http_server.url
                          + "/v1", on_usage=usage.append) as proxy:
        assert proxy.base_url.endswith("/v1")
        for path, expected in (("/v1/chat/completions", chat), ("/v1/responses", responses)):
            answer = await run_client(session, {"do": "request", "port": proxy.port,
                                                "path": path, "headers": headers, "body": "{}"})
            assert (answer["status"], answer["body"]) == (200, joined(expected))
    assert [r.path for r in http_server.requests] == ["/v1/chat/completions", "/v1/responses"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in http_server.requests)
    assert usage == [Tokens(input=16, output=5, cache_read=4),
                     Tokens(input=30, output=7, reasoning=2)]


REFUSED = [("POST", "/v1/files"), ("GET", "/admin"), ("GET", "/v1/messages"),
           ("POST", "/v1/messages/../files"), ("POST", "/v1/%6dessages"),
           ("POST", "/v1/chat/completions"), ("POST", "/")]
"""Not Anthropic model endpoints (a path or a method), in one container to keep it short."""


async def test_a_request_to_anything_but_a_model_endpoint_is_refused_and_never_sent(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        for method, path in REFUSED:
            answer = await run_client(session, {"do": "request", "port": proxy.port,
                                                "method": method, "path": path,
                                                "headers": ANTHROPIC_HEADERS, "body": "{}"})
            assert answer["status"] == 404, (method, path)
            assert json.loads(answer["body"])["error"]["type"] == "not_found"
    assert http_server.requests == []


async def test_an_absolute_target_or_a_host_header_cannot_send_it_elsewhere(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(body=b'{"type": "message"}'))
    body = "{}"
    absolute = ("POST http://evil.example/v1/messages HTTP/1.1\r\nHost: evil.example\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    host = ("POST /v1/messages HTTP/1.1\r\nHost: evil.example\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        refused = await run_client(session, {"do": "raw", "port": proxy.port, "raw": absolute})
        assert refused["raw"].startswith("HTTP/1.1 403 ")
        assert http_server.requests == []
        served = await run_client(session, {"do": "raw", "port": proxy.port, "raw": host})
    assert served["raw"].startswith("HTTP/1.1 200 ")
    [seen] = http_server.requests
    assert seen.headers["host"] == http_server.url.removeprefix("http://")
    assert seen.headers["x-api-key"] == KEY


async def test_an_oversized_body_is_refused_with_413_and_never_sent(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        declared = await run_client(session, {
            "do": "request", "port": proxy.port, "path": "/v1/messages",
            "headers": ANTHROPIC_HEADERS, "size": proxy.max_request_body + 1})
        streamed = await run_client(session, {"do": "chunked", "port": proxy.port,
                                              "path": "/v1/messages", "chunk": 60000,
                                              "chunks": proxy.max_request_body // 60000 + 2})
    assert declared["status"] == 413
    assert json.loads(declared["body"])["error"]["type"] == "request_too_large"
    assert streamed["raw"].startswith("HTTP/1.1 413 ")
    assert http_server.requests == []


async def test_an_oversized_answer_is_a_502(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(body=b"z" * 5000))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY, base_url=http_server.url,
                          max_response=4096) as proxy:
        answer = await run_client(session, {"do": "request", "port": proxy.port,
                                            "path": "/v1/messages",
                                            "headers": ANTHROPIC_HEADERS, "body": "{}"})
    assert answer["status"] == 502
    assert json.loads(answer["body"])["error"]["type"] == "response_too_large"


async def test_plain_answers_and_errors_pass_through_on_one_kept_alive_connection(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    usage: list[Tokens] = []
    message = {"type": "message", "content": [{"type": "text", "text": "ok"}],
               "usage": {"input_tokens": 9, "output_tokens": 2,
                         "cache_creation_input_tokens": 5}}
    http_server.enqueue(
        Canned(body=json.dumps(message)),
        Canned(status=429, headers={"retry-after": "7", "set-cookie": "a=b",
                                    "x-upstream-secret": "internal"},
               body=b'{"type": "error", "error": {"type": "rate_limit_error"}}'),
        Canned(body=b'{"data": []}'))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY, base_url=http_server.url,
                          on_usage=usage.append) as proxy:
        answer = await run_client(session, {
            "do": "several", "port": proxy.port, "headers": ANTHROPIC_HEADERS, "body": "{}",
            "paths": [["POST", "/v1/messages"], ["POST", "/v1/messages"], ["GET", "/v1/models"]]})
        too_big = await run_client(session, {"do": "request", "port": proxy.port,
                                             "path": "/v1/messages", "pad": 70000,
                                             "headers": ANTHROPIC_HEADERS, "body": "{}"})
    ok, limited, models = answer["answers"]
    assert (ok["status"], json.loads(ok["body"])) == (200, message)
    assert limited["status"] == 429
    assert limited["headers"]["retry-after"] == "7"
    assert "set-cookie" not in limited["headers"]
    assert "x-upstream-secret" not in limited["headers"]
    assert (models["status"], models["body"]) == (200, '{"data": []}')
    assert http_server.requests[2].method == "GET"
    # One connection from the client: the proxy kept it open between the requests.
    assert ok["local"] is not None
    assert ok["local"] == limited["local"] == models["local"]
    assert len(http_server.requests) == 3
    assert usage == [Tokens(input=9, output=2, cache_write=5)]
    assert too_big["status"] == 431


async def test_an_upstream_that_is_down_is_a_502_and_one_that_breaks_off_is_cut_short(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    with socket.socket() as unused:  # a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{unused.getsockname()[1]}"
        async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                              base_url=down) as proxy:
            refused = await run_client(session, {"do": "request", "port": proxy.port,
                                                 "path": "/v1/messages",
                                                 "headers": ANTHROPIC_HEADERS, "body": "{}"})
    assert refused["status"] == 502
    assert json.loads(refused["body"])["error"]["type"] == "upstream_error"
    http_server.enqueue(Canned(chunks=anthropic_stream(), drop_after=2))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        cut = await run_client(session, {"do": "request", "port": proxy.port,
                                         "path": "/v1/messages", "headers": ANTHROPIC_HEADERS,
                                         "body": MESSAGES_BODY})
    assert (cut["status"], cut["cut"]) == (200, True)
    assert cut["body"] == joined(anthropic_stream()[:2])


async def test_two_connections_at_once_are_both_served(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(chunks=anthropic_stream()), Canned(chunks=anthropic_stream()))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        answer = await run_client(session, {
            "do": "overlap", "port": proxy.port, "path": "/v1/messages",
            "headers": ANTHROPIC_HEADERS, "body": MESSAGES_BODY})
    assert answer["second"]["status"] == 200
    assert answer["second"]["body"] == joined(anthropic_stream())
    assert answer["first"].startswith("HTTP/1.1 200 ")
    assert "Hello" in answer["first"]
    assert "message_stop" in answer["first"]
    assert len(http_server.requests) == 2
    assert all(r.json == json.loads(MESSAGES_BODY) for r in http_server.requests)


async def test_the_key_is_nowhere_in_the_container(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(chunks=anthropic_stream()))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        answer = await run_client(session, {"do": "request", "port": proxy.port,
                                            "path": "/v1/messages",
                                            "headers": ANTHROPIC_HEADERS, "body": MESSAGES_BODY})
        assert answer["status"] == 200
        # Read on the host: a search run in the container would carry the key in its argv.
        procs = await session.shell(
            "for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do cat $f; echo; done "
            "2>/dev/null; env", timeout=60)
        # A bracket keeps the pattern (and so this command line) from holding the key itself.
        pattern = KEY[:-1] + f"[{KEY[-1]}]"
        files = await session.shell(
            f"timeout 60 grep -rlI -e '{pattern}' / --exclude-dir=proc --exclude-dir=sys "
            "--exclude-dir=dev 2>/dev/null; echo searched", timeout=90)
        # The same search finds a planted string of the same shape: it can fail.
        control = "sk-ant-control-" + secrets.token_hex(16)
        await session.put_file("/workspace/control.txt", control)
        probe = await session.shell(
            f"grep -rlI -e '{control[:-1]}[{control[-1]}]' / --exclude-dir=proc "
            "--exclude-dir=sys --exclude-dir=dev 2>/dev/null", timeout=90)
    assert http_server.requests[0].headers["x-api-key"] == KEY
    interfaces = await session.shell("ls /sys/class/net", timeout=30)
    assert interfaces.stdout.split() == ["lo"]  # network `none`: the tunnel is the only way out
    assert "python3" in procs.stdout  # the listing did see the container's processes
    assert KEY not in procs.stdout
    assert files.stdout == "searched\n", files.stdout
    assert probe.stdout.splitlines() == ["/workspace/control.txt"]


async def test_closing_the_proxy_closes_the_listener_in_the_container(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        port = proxy.port
        assert (await run_client(session, {"do": "refused", "port": port})) == {
            "refused": False}
    with anyio.fail_after(30):
        assert (await run_client(session, {"do": "refused", "port": port})) == {"refused": True}
    # The helper serves on, and a new proxy listens again.
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as again:
        assert (await run_client(session, {"do": "refused", "port": again.port})) == {
            "refused": False}


async def test_a_taken_port_is_an_error_and_stray_tunnel_frames_change_nothing(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    http_server.enqueue(Canned(chunks=anthropic_stream()))
    async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                          base_url=http_server.url) as proxy:
        with pytest.raises(SandboxError, match="cannot listen"):
            async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                                  base_url=http_server.url, port=proxy.port):
                pass
        # Frames for streams that do not exist, on the helper that serves the proxy, and
        # garbage acknowledgements: all ignored (no connection was made yet).
        runtime = sandbox._runtime
        assert isinstance(runtime, HelperRuntime)
        for kind, payload in ((DATA_IN, b"GET / HTTP/1.1\r\n\r\n"), (ACK_IN, b"x"),
                              (ACK_IN, b"99999999999"), (END_IN, b""), (CANCEL, b"")):
            for sid in (STREAM_BIT | 1, STREAM_BIT | 0x7FFFFFFF, 0xFFFFFFFF):
                await runtime.channel.send_frame(kind, sid, payload)
        answer = await run_client(session, {"do": "request", "port": proxy.port,
                                            "path": "/v1/messages",
                                            "headers": ANTHROPIC_HEADERS, "body": MESSAGES_BODY})
    assert (answer["status"], answer["body"]) == (200, joined(anthropic_stream()))


@HTTPX_UNDER_TRIO
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_smoke(store_path: Path, image: str, http_server: CannedServer,
                          anyio_backend: str) -> None:
    usage: list[Tokens] = []
    http_server.enqueue(Canned(chunks=anthropic_stream()))
    async with AsyncSandboxClient(store=store_path) as client:
        session = await client.agent("proxy", image=image).create_session()
        await session.put_file(CLIENT_PATH, CLIENT)
        sandbox = await client.service.sandbox(session.id)
        assert isinstance(sandbox, DockerSandbox)
        async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                              base_url=http_server.url, on_usage=usage.append) as proxy:
            answer = await run_client(session, {
                "do": "request", "port": proxy.port, "path": "/v1/messages",
                "headers": ANTHROPIC_HEADERS, "body": MESSAGES_BODY})
        await session.end()
    assert anyio_backend == "trio"
    assert (answer["status"], answer["body"]) == (200, joined(anthropic_stream()))
    assert http_server.requests[0].headers["x-api-key"] == KEY
    assert usage == [Tokens(input=12, output=34, cache_read=3)]


async def test_a_proxy_whose_session_ended_closes_without_error(
    session: AsyncSessionHandle, sandbox: DockerSandbox, http_server: CannedServer
) -> None:
    proxy = ModelProxy(sandbox, provider="anthropic", api_key=KEY, base_url=http_server.url)
    async with proxy:
        assert (await run_client(session, {"do": "refused", "port": proxy.port})) == {
            "refused": False}
        await session.end()  # the container is removed under the open proxy
    with pytest.raises(SandboxError):
        async with ModelProxy(sandbox, provider="anthropic", api_key=KEY,
                              base_url=http_server.url):
            pass
    assert http_server.requests == []

"""What the model proxy adds to a model request: p50 through the proxy against direct.

Issue 10's measure. One small upstream on the host's loopback answers every POST with a short
JSON body in one write (so neither side waits on Nagle's algorithm). The same client (python's
`http.client`, one kept-alive connection, `--requests` timed requests after 20 untimed) runs
once on the host against the upstream, and once in a session's container (network `none`)
against `ModelProxy`'s loopback port. The difference of the medians is the proxy's cost: the
helper's tunnel, the channel, h11 and httpx on the host. Target: at most 2 ms.

    .venv/bin/python benchmarks/bench_proxy.py [--requests 500] [--image IMG] [--json out]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import anyio
from _bench import report

from sandbox_sessions import DEFAULT_IMAGE, AsyncSandboxClient
from sandbox_sessions.agent._proxy import ModelProxy
from sandbox_sessions.sandbox._container import DockerSandbox

CLIENT = r'''
import http.client, json, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
seconds = []
for i in range(count + 20):
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body=b'{"model": "m"}',
                 headers={"content-type": "application/json"})
    conn.getresponse().read()
    if i >= 20:
        seconds.append(time.perf_counter() - started)
seconds.sort()
print(json.dumps(seconds[len(seconds) // 2]))
'''
ANSWER = b'{"type": "message", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}'


class OneWriteServer:
    """A loopback HTTP/1.1 server that answers each request with `ANSWER`, in one write."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        buffer = b""
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(ANSWER))
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                request, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in request.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                conn.sendall(head + ANSWER)


def direct_p50(server: OneWriteServer, count: int) -> float:
    port = server.url.rpartition(":")[2]
    done = subprocess.run([sys.executable, "-c", CLIENT, port, str(count)],
                          capture_output=True, check=True, text=True)
    return float(json.loads(done.stdout))


async def proxied_p50(server: OneWriteServer, count: int, image: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        async with AsyncSandboxClient(store=Path(folder) / "s.db") as client:
            session = await client.agent("bench-proxy", image=image).create_session()
            try:
                await session.put_file("/tmp/client.py", CLIENT)
                sandbox = await client.service.sandbox(session.id)
                assert isinstance(sandbox, DockerSandbox)
                async with ModelProxy(sandbox, provider="anthropic", api_key="bench-key",
                                      base_url=server.url) as proxy:
                    result = await session.shell(f"python3 /tmp/client.py {proxy.port} {count}",
                                                 timeout=600)
            finally:
                await session.end()
    if result.exit_code != 0:
        raise RuntimeError(result.stderr)
    return float(json.loads(result.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    server = OneWriteServer()
    direct = direct_p50(server, args.requests)
    proxied = anyio.run(proxied_p50, server, args.requests, args.image)
    report({"direct_p50_ms": direct * 1000, "proxied_p50_ms": proxied * 1000,
            "added_p50_ms": (proxied - direct) * 1000}, args.json, digits=3)


if __name__ == "__main__":
    main()

"""A real HTTP server on 127.0.0.1 that serves canned answers, for provider tests.

`CannedServer` runs the stdlib `ThreadingHTTPServer` in a thread on a free port. Each request
takes the next queued `Canned` answer, in order, and is recorded (`requests`). An answer is a
whole body, or a list of chunks written one by one with a flush (chunked transfer encoding,
optionally with a pause between chunks), and may drop the connection mid-stream.

    with CannedServer() as server:
        server.enqueue(Canned(chunks=sse(("message_start", {...}), ...)))
        ... POST to server.url ...
        assert server.requests[0].json["stream"] is True
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

__all__ = ["Canned", "CannedServer", "RecordedRequest", "sse", "sse_data"]


@dataclass(frozen=True)
class Canned:
    """One answer. With `chunks`, the body is streamed (chunked), one flush per chunk."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    chunks: list[bytes | str] | None = None
    delay: float = 0.0
    """Seconds to wait before each chunk."""
    drop_after: int | None = None
    """Close the connection after this many chunks, without ending the body."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    client_port: int
    """The client's side of the connection: equal ports mean a reused connection."""
    header_list: list[tuple[str, str]] = field(default_factory=list)
    """Every header as sent, repeats included, names in lower case."""

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def sse(*events: tuple[str | None, Any]) -> list[bytes | str]:
    """SSE frames for `(event name, data)` pairs; data that is not a str is dumped as JSON."""
    frames: list[bytes | str] = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {name}\n" if name else ""
        frames.append(f"{head}data: {text}\n\n")
    return frames


def sse_data(*payloads: Any) -> list[bytes | str]:
    """Unnamed SSE frames (`data: ...`), as OpenAI sends them."""
    return sse(*((None, payload) for payload in payloads))


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # an idle keep-alive connection does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        port = self.client_address[1]
        every = [(name.lower(), value) for name, value in self.headers.items()]
        self.server.owner.record(
            RecordedRequest(self.command, self.path, headers, body, port, every))
        canned = self.server.owner.next_answer()
        try:
            if canned.chunks is None:
                self._send_whole(canned)
            else:
                self._send_chunks(canned, canned.chunks)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (it cancelled, or timed out)

    def _send_head(self, canned: Canned, extra: dict[str, str]) -> None:
        self.send_response(canned.status)
        for name, value in {**extra, **canned.headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_whole(self, canned: Canned) -> None:
        payload = _bytes(canned.body)
        extra = {"content-type": "application/json", "content-length": str(len(payload))}
        self._send_head(canned, extra)
        self.wfile.write(payload)

    def _send_chunks(self, canned: Canned, chunks: list[bytes | str]) -> None:
        extra = {"content-type": "text/event-stream", "transfer-encoding": "chunked"}
        self._send_head(canned, extra)
        for count, chunk in enumerate(chunks):
            if canned.drop_after is not None and count >= canned.drop_after:
                self.close_connection = True
                return  # no terminating chunk: the client sees a body cut short
            if canned.delay:
                time.sleep(canned.delay)
            data = _bytes(chunk)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: CannedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets an idle kept-alive connection is ordinary, not worth a trace.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class CannedServer:
    """A threaded loopback HTTP server that answers from a queue of `Canned` answers.

    A request that finds the queue empty gets a 599 with a message saying so, which fails the
    test that made it. `url` is `http://127.0.0.1:<port>`.
    """

    def __init__(self) -> None:
        self._answers: deque[Canned] = deque()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def enqueue(self, *answers: Canned) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._answers.extend(answers)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def next_answer(self) -> Canned:
        with self._lock:
            if self._answers:
                return self._answers.popleft()
        return Canned(status=599, body=b'{"error": {"message": "no canned answer queued"}}')

    def start(self) -> CannedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CannedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()



HTTPX_UNDER_TRIO = pytest.mark.filterwarnings(
    # httpx and httpcore read bodies through nested async generators that a stream left early
    # (an error, a cancel) cannot close, and trio warns as they are collected: encode/httpx#3686.
    r"ignore:Exception ignored in. <async_generator object "
    r"(BoundAsyncStream|AsyncResponseStream|PoolByteStream|HTTP11ConnectionByteStream"
    r"|AsyncHTTP11Connection)\.:pytest.PytestUnraisableExceptionWarning"
)
"""For modules whose HTTP tests also run on trio."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Import into a module to run its async tests on asyncio and on trio."""
    return str(request.param)

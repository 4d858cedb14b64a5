"""A model API on 127.0.0.1 that streams a known number of text deltas, for both servers.

It speaks OpenAI's Chat Completions (`POST /v1/chat/completions`, streamed as SSE, or one JSON
answer when `stream` is false), the wire format opencode's `@ai-sdk/openai-compatible` provider
and our `openai/...` provider both read. A turn's prompt says how many deltas it wants:
`deltas=N` anywhere in the last user message; other requests (opencode's title generator, for
one) get a short answer. Each streamed body is built before the first byte is sent and written
in large slices, so the model costs each server the same and as little as can be.

Run it in a process of its own; it prints `port N` on stdout once it listens:

    python benchmarks/fake_model.py [--port 0]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["completion_body", "stream_body", "wanted_deltas"]

DELTA = "word "
"""The text of one delta: the turn's text is `DELTA * N`."""
_WANTED = re.compile(r"deltas=(\d+)")
_SLICE = 1 << 16


def wanted_deltas(request: dict[str, Any]) -> int | None:
    """The `deltas=N` of the request's last user message, or None."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            match = _WANTED.search(_text(message.get("content")))
            return int(match.group(1)) if match else None
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "bench", "choices": [{"index": 0, "delta": delta,
                                           "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def stream_body(deltas: int) -> bytes:
    """A whole streamed answer: a role chunk, `deltas` text chunks, a finish with usage."""
    usage = {"prompt_tokens": 1, "completion_tokens": deltas, "total_tokens": deltas + 1}
    one = _chunk({"content": DELTA})
    return b"".join([_chunk({"role": "assistant", "content": ""}), one * deltas,
                     _chunk({}, "stop", usage=usage), b"data: [DONE]\n\n"])


def completion_body(text: str) -> bytes:
    """A non-streamed answer of `text`."""
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stderr is progress
        pass

    def do_GET(self) -> None:
        self._send(200, "application/json", b'{"object":"list","data":[{"id":"bench"}]}')

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        deltas = wanted_deltas(request)
        if self.server.verbose:  # type: ignore[attr-defined]
            print(f"{self.path} stream={request.get('stream')} deltas={deltas} "
                  f"messages={len(request.get('messages') or [])}", file=sys.stderr, flush=True)
        if not request.get("stream"):
            self._send(200, "application/json", completion_body("bench"))
            return
        self._send(200, "text/event-stream", stream_body(deltas if deltas is not None else 1))

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        view = memoryview(body)
        for start in range(0, len(body), _SLICE):
            self.wfile.write(view[start:start + _SLICE])
        self.wfile.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="one line per request on stderr")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    server.verbose = args.verbose  # type: ignore[attr-defined]
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

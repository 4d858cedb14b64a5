"""A model API on the host's loopback that answers at once, in each wire format the harnesses
speak: Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`), OpenAI Responses
(`/v1/responses`) and Chat Completions (`/v1/chat/completions`), streamed or not, and
`/v1/models`. Every answer is the same short text, so what a benchmark measures is the agent
CLI and the way to it, not a model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEXT = "Hello from the upstream."
USAGE_IN, USAGE_OUT = 40, 6


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n")
    return "".join(out).encode()


def anthropic(body: dict[str, Any]) -> tuple[str, bytes]:
    message = {"id": "msg_up", "type": "message", "role": "assistant",
               "model": body.get("model", "m"), "content": [{"type": "text", "text": TEXT}],
               "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}}
    if not body.get("stream"):
        return "application/json", json.dumps(message).encode()
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}
    return "text/event-stream", _sse([
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": TEXT}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": USAGE_OUT}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def responses(body: dict[str, Any]) -> tuple[str, bytes]:
    item = {"type": "message", "id": "msg_up", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}
    usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
             "total_tokens": USAGE_IN + USAGE_OUT}
    done = {"id": "resp_up", "object": "response", "status": "completed",
            "model": body.get("model", "m"), "output": [item], "usage": usage}
    if not body.get("stream"):
        return "application/json", json.dumps(done).encode()
    return "text/event-stream", _sse([
        ("response.created", {"type": "response.created",
                              "response": {**done, "status": "in_progress", "output": []}}),
        ("response.output_item.added", {"type": "response.output_item.added",
                                        "output_index": 0, "item": {**item, "content": []}}),
        ("response.output_text.delta", {"type": "response.output_text.delta",
                                        "item_id": "msg_up", "output_index": 0,
                                        "content_index": 0, "delta": TEXT}),
        ("response.output_item.done", {"type": "response.output_item.done",
                                       "output_index": 0, "item": item}),
        ("response.completed", {"type": "response.completed", "response": done}),
    ])


def chat(body: dict[str, Any]) -> tuple[str, bytes]:
    usage = {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
             "total_tokens": USAGE_IN + USAGE_OUT}
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0,
            "model": body.get("model", "m")}
    if not body.get("stream"):
        return "application/json", json.dumps({
            **base, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": TEXT}}]}).encode()
    return "text/event-stream", _sse([
        (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                            "content": TEXT}}]}),
        (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        (None, {**base, "choices": [], "usage": usage}),
        (None, "[DONE]"),
    ])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send("application/json", json.dumps(
            {"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?", 1)[0]
        if path.endswith("/messages/count_tokens"):
            self._send("application/json", b'{"input_tokens": 40}')
        elif path.endswith("/messages"):
            self._send(*anthropic(body))
        elif path.endswith("/responses"):
            self._send(*responses(body))
        elif path.endswith("/chat/completions"):
            self._send(*chat(body))
        else:
            self.send_error(404)

    def _send(self, kind: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Upstream:
    """The server, on a free loopback port, serving from a thread until `close()`."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

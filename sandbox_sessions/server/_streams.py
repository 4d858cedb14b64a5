"""Streamed responses: a command's output, a file's bytes, a session's events (SSE).

Each is an ASGI response that waits for the first thing to send before it sends its status,
so a call that fails at once (an unknown session, a missing file, a bad argument) answers with
its real HTTP status and our error body. What fails later ends the stream: a command with a
last `error` line, an event stream with an `error` event, a file by dropping the connection
(the client sees a body cut short). A client that goes away cancels the work: the command's
process group is killed, the file read stopped, the event reader closed.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .._exceptions import HTTP_STATUS, SandboxSessionsError, StoreError, to_wire
from .._types import ShellChunk, ShellDone, ShellOutput

__all__ = ["ByteStream", "CommandStream", "EventStream", "error_response"]

NDJSON = "application/x-ndjson"
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
               (b"x-accel-buffering", b"no")]


def error_response(error: SandboxSessionsError) -> JSONResponse:
    """Our error body, with the HTTP status of its code (500 for a code without one)."""
    return JSONResponse(to_wire(error), status_code=HTTP_STATUS.get(error.code, 500))


async def _until_disconnected(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class CommandStream(Response):
    """A command's output as NDJSON lines (`ShellChunk`s): output as it comes, then exactly
    one `result` line, or an `error` line when the command fails after it started."""

    def __init__(self, run: Callable[[Callable[[ShellOutput], None]], Awaitable[Any]]) -> None:
        super().__init__(media_type=NDJSON)
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender, chunks = anyio.create_memory_object_stream[ShellChunk | SandboxSessionsError](
            math.inf)
        async with anyio.create_task_group() as group:
            group.start_soon(_until_disconnected, receive, group.cancel_scope)
            group.start_soon(self._produce, sender)
            async with chunks:
                first = await chunks.receive()
                if isinstance(first, SandboxSessionsError):
                    await error_response(first)(scope, receive, send)
                elif isinstance(first, ShellDone):  # no output: one plain body, one write
                    body = _encoded(first)
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", NDJSON.encode()),
                        (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                else:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", NDJSON.encode())]})
                    await _lines(send, first, chunks)
            group.cancel_scope.cancel()

    async def _produce(self, sender: MemoryObjectSendStream[Any]) -> None:
        async with sender:
            try:
                result = await self._run(sender.send_nowait)
            except SandboxSessionsError as exc:
                sender.send_nowait(exc)
            else:
                sender.send_nowait(ShellDone(result=result))


async def _lines(send: Send, first: ShellChunk,
                 chunks: MemoryObjectReceiveStream[ShellChunk | SandboxSessionsError]) -> None:
    """Output lines, then the last line (the result, or an error) with the body's end, so
    that the client reads both at once."""
    await send({"type": "http.response.body", "body": _encoded(first), "more_body": True})
    async for chunk in chunks:
        last = not isinstance(chunk, ShellOutput)
        await send({"type": "http.response.body", "body": _encoded(chunk),
                    "more_body": not last})
        if last:
            return
    await send({"type": "http.response.body", "body": b""})


def _encoded(chunk: ShellChunk | SandboxSessionsError) -> bytes:
    data = (json.dumps({"type": "error", **to_wire(chunk)}).encode()
            if isinstance(chunk, SandboxSessionsError) else chunk.model_dump_json().encode())
    return data + b"\n"


class ByteStream(Response):
    """A file's bytes: the status waits for the first chunk (or the error that comes
    instead); an error after it drops the connection, so the body is seen cut short."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        super().__init__(media_type="application/octet-stream")
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(_until_disconnected, receive, group.cancel_scope)
            try:
                first = await anext(self._chunks, b"")
            except SandboxSessionsError as exc:
                await error_response(exc)(scope, receive, send)
                group.cancel_scope.cancel()
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream")]})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            group.cancel_scope.cancel()


FRAMES_AHEAD = 512
"""Frames an event stream prepares while the previous ones are being sent; whatever is ready
goes out as one body (one write), not one send per event."""


class EventStream(Response):
    """Server-sent events: `id:` a cursor (a session's seq, or the global stream's cursor),
    `event:` the event's type, `data:` its JSON; a comment every `heartbeat` seconds while
    quiet. A store that cannot take the events (with `strict`) ends the stream with an `error`
    event.

    `events` first yields `(cursor, "ready", "")` once the stream is open (before that, a
    failure is answered with its status); a cursor there is sent as an `id:` frame alone,
    so a reader that reconnects before any event resumes from where it started."""

    def __init__(self, events: AsyncIterator[tuple[str, str, str]], *, heartbeat: float,
                 closing: anyio.Event) -> None:
        super().__init__(media_type="text/event-stream")
        self._events = events
        self._heartbeat = heartbeat
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = anyio.Lock()

        async def frame(text: str) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": text.encode(),
                            "more_body": True})

        try:
            first = await anext(self._events)
        except StopAsyncIteration:  # pragma: no cover - a stream never ends by itself
            return
        except SandboxSessionsError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async with anyio.create_task_group() as group:
            group.start_soon(_until_disconnected, receive, group.cancel_scope)
            group.start_soon(self._beat, frame)
            group.start_soon(self._close_on_shutdown, group.cancel_scope)
            await self._pump(first, frame)
            group.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b""})

    async def _pump(self, first: tuple[str, str, str],
                    frame: Callable[[str], Awaitable[None]]) -> None:
        if first[1] != "ready":
            await frame(_sse(*first))
        elif first[0]:
            await frame(f"id: {first[0]}\n\n")
        sender, frames = anyio.create_memory_object_stream[str](FRAMES_AHEAD)
        async with anyio.create_task_group() as group, frames:
            group.start_soon(self._produce, sender)
            async for text in frames:
                await frame(text + "".join(_ready(frames)))

    async def _produce(self, sender: MemoryObjectSendStream[str]) -> None:
        async with sender:
            try:
                async for item in self._events:
                    text = _sse(*item)
                    try:  # no trip through the event loop per event while there is room
                        sender.send_nowait(text)
                    except anyio.WouldBlock:
                        await sender.send(text)
            except StoreError as exc:
                await sender.send(_sse("", "error", json.dumps(to_wire(exc))))

    async def _beat(self, frame: Callable[[str], Awaitable[None]]) -> None:
        while True:
            await anyio.sleep(self._heartbeat)
            await frame(": heartbeat\n\n")

    async def _close_on_shutdown(self, scope: anyio.CancelScope) -> None:
        await self._closing.wait()
        scope.cancel()


def _ready(frames: MemoryObjectReceiveStream[str]) -> list[str]:
    """The frames already prepared, without waiting."""
    ready: list[str] = []
    try:
        while True:
            ready.append(frames.receive_nowait())
    except (anyio.WouldBlock, anyio.EndOfStream):
        return ready


def _sse(cursor: str, kind: str, data: str) -> str:
    head = f"id: {cursor}\n" if cursor else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"

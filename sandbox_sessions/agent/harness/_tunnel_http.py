"""HTTP from the host to a server listening on a loopback port inside the sandbox.

`TunnelTransport` is an httpx transport: each request opens its own connection through the
helper (`sandbox.connect(port)`, a `TunnelStream`), speaks HTTP/1.1 over it with h11, and
streams the response body as it arrives, so a long-lived answer (an SSE stream) is read event
by event. The connection closes with the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol

import h11
import httpx

from ...sandbox._tunnel import TunnelStream

__all__ = ["Connecting", "TunnelTransport"]

MAX_HEAD = 64 << 10
"""Bytes of a response's status line and headers."""


class Connecting(Protocol):
    """A sandbox whose loopback servers the host can reach (the Docker sandbox)."""

    def connect(self, port: int) -> AbstractAsyncContextManager[TunnelStream]: ...


class _Body(httpx.AsyncByteStream):
    def __init__(self, connection: h11.Connection, stream: TunnelStream, stack: AsyncExitStack
                 ) -> None:
        self._connection, self._stream, self._stack = connection, stream, stack

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            event = await _next_event(self._connection, self._stream)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif not isinstance(event, h11.Response | h11.InformationalResponse):
                return  # EndOfMessage (or the connection closed, PAUSED)

    async def aclose(self) -> None:
        await self._stack.aclose()


async def _next_event(connection: h11.Connection, stream: TunnelStream) -> object:
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await stream.receive())  # b"": the server closed it


class TunnelTransport(httpx.AsyncBaseTransport):
    """Sends each request to 127.0.0.1:`port` inside `sandbox`, over the helper's tunnel."""

    def __init__(self, sandbox: Connecting, port: int) -> None:
        self._sandbox, self._port = sandbox, port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stack = AsyncExitStack()
        try:
            try:
                stream = await stack.enter_async_context(self._sandbox.connect(self._port))
            except Exception as exc:
                raise httpx.ConnectError(f"cannot connect to port {self._port} in the "
                                         f"sandbox: {exc}", request=request) from exc
            connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            headers = [(name, value) for name, value in request.headers.raw
                       if name.lower() not in (b"connection", b"keep-alive")]
            headers.append((b"connection", b"close"))
            body = await request.aread()
            if body and not any(name.lower() in (b"content-length", b"transfer-encoding")
                                for name, _ in headers):
                headers.append((b"content-length", str(len(body)).encode()))
            out = connection.send(h11.Request(method=request.method,
                                              target=request.url.raw_path, headers=headers))
            if body:
                out = (out or b"") + (connection.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (connection.send(h11.EndOfMessage()) or b"")
            await stream.send(out)
            while True:
                event = await _next_event(connection, stream)
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("the server closed the connection "
                                                    "without answering", request=request)
                # h11.InformationalResponse (100 Continue...): wait for the real one
            return httpx.Response(
                event.status_code, headers=[(bytes(n), bytes(v)) for n, v in event.headers],
                stream=_Body(connection, stream, stack), request=request,
                extensions={"http_version": b"HTTP/" + event.http_version,
                            "reason_phrase": bytes(event.reason)})
        except BaseException:
            await stack.aclose()
            raise

"""Loopback listeners inside a container, their connections tunnelled to the host.

`HelperRuntime.listen` asks the helper to listen on 127.0.0.1 inside the container (see
`_helper_tunnels.py` for the frames). Each connection a process in the container opens there
reaches the host as a `TunnelStream`, a byte stream over the helper's channel. Both directions
are windowed: neither the helper nor the host buffers more than `WINDOW` chunks of one
connection, whichever side stops reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import anyio

from .._exceptions import ProtocolError, SandboxError
from ._channel import (
    ACCEPT,
    ACK,
    ACK_IN,
    DATA_IN,
    DATA_OUT,
    DONE,
    END_IN,
    END_OUT,
    FAIL,
    LISTENING,
    SHUT_IN,
    U32,
    Call,
    ChannelClosed,
    HelperChannel,
    decode_json,
)

__all__ = ["Connecting", "Listener", "Listening", "TunnelStream", "connect"]

WINDOW = 8
"""Frames either side may send ahead of the other's acknowledgements (as in the helper)."""
CHUNK = 64 * 1024
CLOSE_WAIT = 5.0
"""Seconds `TunnelStream.aclose` waits for the client to take what was sent, then cuts."""


class TunnelStream:
    """One connection made to a listener in the container, as bytes both ways.

    One task may read while another writes (a CLI's stdio: answers go in while its output
    is read); frames are taken from the channel by one of them at a time."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._pending: deque[bytes] = deque()
        self._credit = WINDOW
        self._taken = 0  # DATA_OUT frames taken and not yet acknowledged
        self._eof = False
        self.closed = False
        """The helper closed the socket (or the channel ended)."""
        self._lock = anyio.Lock()

    async def _next(self, satisfied: Callable[[], bool]) -> None:
        """Take the next frame of the connection, unless `satisfied()` already holds once
        the other task (if any) has taken its own."""
        async with self._lock:
            if not satisfied():
                await self._take()

    async def _take(self) -> None:
        if self.closed:
            raise ChannelClosed()
        try:
            kind, payload = await self._call.receive()
        except ChannelClosed:
            self.closed = self._eof = True
            raise
        if kind == DATA_OUT:
            self._pending.append(payload)
        elif kind == END_OUT:
            self._eof = True
        elif kind == ACK:
            self._credit += int(payload) if payload.isdigit() else 0
        elif kind in (DONE, FAIL):
            self.closed = self._eof = True

    async def receive(self) -> bytes:
        """The next bytes the client sent; `b""` once it sent its last (or the socket closed)."""
        while not self._pending:
            if self._eof:
                return b""
            try:
                await self._next(lambda: bool(self._pending) or self._eof)
            except ChannelClosed:
                return b""
        data = self._pending.popleft()
        # Acknowledged once taken, not once arrived: that is what bounds the buffering. Half
        # a window at a time: a short request costs no acknowledgement, and the helper,
        # stopping only with a whole window unacknowledged, never waits on one held here.
        self._taken += 1
        if self._taken >= WINDOW // 2:
            await self._call.send(ACK_IN, str(self._taken).encode())
            self._taken = 0
        return data

    async def send(self, data: bytes) -> None:
        """Send `data` to the client, waiting while the helper holds a window of it;
        `ChannelClosed` when the connection is gone."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            while self._credit <= 0:
                if self.closed:
                    raise ChannelClosed()
                await self._next(lambda: self._credit > 0 or self.closed)
            if self.closed:
                raise ChannelClosed()
            self._credit -= 1
            await self._call.send(DATA_IN, view[start : start + CHUNK])

    async def shutdown_write(self) -> None:
        """Shut the writing side once what was sent is written (the client reads its end),
        and go on receiving what it sends until it closes."""
        if not self.closed:
            await self._call.send(SHUT_IN)

    async def aclose(self) -> None:
        """Close once the client took what was sent (within `CLOSE_WAIT`), then for good."""
        if self.closed:
            return
        try:
            await self._call.send(END_IN)
            with anyio.move_on_after(CLOSE_WAIT):
                while not self.closed:
                    await self._next(lambda: self.closed)
        except ChannelClosed:
            self.closed = True


class Listener:
    """A listening socket on 127.0.0.1 in the container; `accept` gives its connections."""

    def __init__(self, channel: HelperChannel, call: Call, port: int) -> None:
        self._channel = channel
        self._call = call
        self.port: int = port
        """The port inside the container."""

    async def accept(self) -> int | None:
        """The stream id of the next connection; None once the listener is closed."""
        while True:
            try:
                kind, payload = await self._call.receive()
            except ChannelClosed:
                return None
            if kind == ACCEPT:
                return int(U32.unpack(payload)[0])
            if kind in (DONE, FAIL):
                return None

    def connection(self, sid: int) -> AbstractAsyncContextManager[TunnelStream]:
        """The connection `accept` announced, open for the block (cut when it is left early)."""
        return _connection(self._channel, sid)


@asynccontextmanager
async def _connection(channel: HelperChannel, sid: int) -> AsyncIterator[TunnelStream]:
    async with channel.stream(sid) as call:
        yield TunnelStream(call)


@asynccontextmanager
async def listen(channel: HelperChannel, port: int, settle: float) -> AsyncIterator[Listener]:
    """Listen on 127.0.0.1:`port` in the container (0: a free port) for the block. Leaving
    closes the listener and its connections in the container, waiting up to `settle`
    seconds for the helper to confirm it."""
    async with channel.call({"op": "listen", "port": port}, settle=settle) as call:
        kind, payload = await call.receive()
        body = decode_json(payload)
        if kind == FAIL:
            raise SandboxError(f"the sandbox cannot listen: {body.get('message')}")
        if kind != LISTENING or not isinstance(body.get("port"), int):
            raise ProtocolError(f"helper: unexpected answer {kind} to a listen request")
        yield Listener(channel, call, int(body["port"]))


@asynccontextmanager
async def connect(channel: HelperChannel, port: int, settle: float
                  ) -> AsyncIterator[TunnelStream]:
    """A connection to 127.0.0.1:`port` inside the container, for the block: the helper
    connects there and tunnels it like an accepted one. `SandboxError` when nothing listens."""
    async with channel.call({"op": "connect", "port": port}, settle=settle) as call:
        kind, payload = await call.receive()
        if kind == FAIL:
            body = decode_json(payload)
            raise SandboxError(f"the sandbox cannot connect: {body.get('message')}")
        if kind != ACCEPT or len(payload) != U32.size:
            raise ProtocolError(f"helper: unexpected answer {kind} to a connect request")
        sid = int(U32.unpack(payload)[0])
    async with channel.stream(sid) as stream:
        yield TunnelStream(stream)


class Connecting(Protocol):
    """A sandbox whose loopback servers the host can reach."""

    def connect(self, port: int) -> AbstractAsyncContextManager[TunnelStream]:
        """A connection to 127.0.0.1:`port` inside the sandbox, for the block."""
        ...


class Listening(Protocol):
    """A sandbox whose processes can reach the host through a loopback port."""

    def listen(self, port: int = 0) -> AbstractAsyncContextManager[Listener]:
        """Listen on 127.0.0.1:`port` inside the sandbox (0: any free port) for the block."""
        ...

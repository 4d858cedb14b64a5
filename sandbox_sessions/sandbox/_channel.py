"""The host side of the helper protocol (see `_helper.py` for the frame format).

One `HelperChannel` wraps the socket of one attached `docker exec` running the helper. A reader
task demultiplexes Docker's stdout/stderr framing, then our frames, and routes each frame to the
call that owns its request id. Calls run concurrently over the one socket.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._exceptions import ProtocolError

log: logging.Logger = logging.getLogger("sandbox_sessions.helper")

HEADER = struct.Struct(">BII")
DOCKER_HEADER = struct.Struct(">BxxxI")
REQ, DATA_IN, END_IN, CANCEL, ACK_IN, SHUT_IN = 1, 2, 3, 4, 5, 6
OUT, ERR, DATA_OUT, DONE, FAIL, HELLO, ACK = 10, 11, 12, 13, 14, 15, 16
LISTENING, ACCEPT, END_OUT = 17, 18, 19
STREAM_BIT = 0x80000000
"""Set in the ids of streams the helper opens (a tunnelled connection, `_helper_tunnels`);
the host's request ids count up from 1 and never reach it."""
U32 = struct.Struct(">I")
TERMINAL = (DONE, FAIL)
CANCEL_WAIT = 1.0
"""Seconds that leaving an unfinished call may spend telling the helper to cancel it."""

Frame = tuple[int, bytes]


class ChannelClosed(Exception):
    """The helper's connection ended (the container stopped, or the helper died)."""


class Call:
    """One request in flight: frames arrive in order until a DONE or FAIL frame."""

    def __init__(self, channel: HelperChannel, rid: int, inbox: MemoryObjectReceiveStream[Frame]):
        self._channel = channel
        self.rid: int = rid
        self._inbox = inbox
        self.finished: bool = False

    async def receive(self) -> Frame:
        """The next frame; raises `ChannelClosed` if the connection ends first."""
        try:
            kind, payload = await self._inbox.receive()
        except anyio.EndOfStream:
            raise ChannelClosed() from None
        if kind in TERMINAL:
            self.finished = True
        return kind, payload

    async def send(self, kind: int, payload: bytes | memoryview = b"") -> None:
        """Send a frame of this request (`DATA_IN`, `END_IN`); `ChannelClosed` if it ended."""
        await self._channel.send_frame(kind, self.rid, payload)


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse a JSON frame; anything but an object is a protocol error."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"helper sent malformed JSON: {payload[:80]!r}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"helper sent {type(value).__name__}, expected an object")
    return value


class HelperChannel:
    """A framed, multiplexed connection to one helper process in a container."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._send_lock = anyio.Lock()
        self._inboxes: dict[int, MemoryObjectSendStream[Frame]] = {}
        self._adopted: dict[int, MemoryObjectReceiveStream[Frame]] = {}
        self._next_rid = 1
        self._hello = anyio.Event()
        self.closed: bool = False
        self.info: dict[str, Any] = {}

    async def run(self) -> None:
        """Read frames until the connection ends; then fail every call still waiting."""
        try:
            await self._read_loop()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.debug("helper connection broke: %s", exc)
        finally:
            self.closed = True
            self._hello.set()
            for inbox in self._inboxes.values():
                inbox.close()
            self._inboxes.clear()
            for receive in self._adopted.values():
                receive.close()
            self._adopted.clear()

    async def wait_ready(self) -> dict[str, Any]:
        """Wait for the helper's greeting; raises `ChannelClosed` if it never comes."""
        await self._hello.wait()
        if self.closed:
            raise ChannelClosed()
        return self.info

    async def _read_loop(self) -> None:
        mux, frames = bytearray(), bytearray()
        while True:
            try:
                chunk = await self._stream.receive(1 << 18)
            except anyio.EndOfStream:
                return
            mux += chunk
            self._demux(mux, frames)
            self._dispatch(frames)

    @staticmethod
    def _demux(mux: bytearray, frames: bytearray) -> None:
        """Move complete Docker frames out of `mux`: stdout into `frames`, stderr to the log."""
        offset = 0
        while len(mux) - offset >= DOCKER_HEADER.size:
            stream_type, size = DOCKER_HEADER.unpack_from(mux, offset)
            end = offset + DOCKER_HEADER.size + size
            if end > len(mux):
                break
            body = mux[offset + DOCKER_HEADER.size : end]
            if stream_type == 1:
                frames += body
            else:
                log.warning("helper stderr: %s", bytes(body).decode(errors="replace").rstrip())
            offset = end
        del mux[:offset]

    def _dispatch(self, frames: bytearray) -> None:
        offset = 0
        while len(frames) - offset >= HEADER.size:
            kind, rid, length = HEADER.unpack_from(frames, offset)
            end = offset + HEADER.size + length
            if end > len(frames):
                break
            self._route(kind, rid, bytes(frames[offset + HEADER.size : end]))
            offset = end
        del frames[:offset]

    def _route(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == HELLO:
            self.info = decode_json(payload)
            self._hello.set()
            return
        inbox = self._inboxes.get(rid)
        if inbox is None:
            return  # a call that was abandoned; its late frames are dropped
        if kind == ACCEPT and not self._adopt(payload):
            return
        inbox.send_nowait((kind, payload))
        if kind in TERMINAL:
            inbox.close()
            del self._inboxes[rid]
            unclaimed = self._adopted.pop(rid, None)  # a stream no one took up: it is over
            if unclaimed is not None:
                unclaimed.close()

    def _adopt(self, payload: bytes) -> bool:
        """Open the inbox of a stream the helper announced (ACCEPT), before any frame of it
        can arrive; `stream()` takes it up."""
        if len(payload) != U32.size:
            return False
        (sid,) = U32.unpack(payload)
        if not sid & STREAM_BIT or sid in self._inboxes or sid in self._adopted:
            return False
        send, receive = anyio.create_memory_object_stream[Frame](math.inf)
        self._inboxes[sid] = send
        self._adopted[sid] = receive
        return True

    @asynccontextmanager
    async def stream(self, sid: int) -> AsyncIterator[Call]:
        """The `Call` of a stream the helper opened (its id came in an ACCEPT frame).

        Its frames are buffered from the ACCEPT on; leaving the block before the helper's
        DONE sends CANCEL (within `CANCEL_WAIT`). The caller bounds what it buffers: the
        helper sends no more than its window ahead of the caller's acknowledgements.
        """
        receive = self._adopted.pop(sid, None)
        if receive is None:
            raise ChannelClosed() if self.closed else ProtocolError(f"no stream {sid:#x}")
        call = Call(self, sid, receive)
        try:
            yield call
        finally:
            if not call.finished and not self.closed:
                with anyio.CancelScope(shield=True):
                    await self._cancel(call, 0.0)
            inbox = self._inboxes.pop(sid, None)
            if inbox is not None:
                inbox.close()
            receive.close()

    async def send_frame(self, kind: int, rid: int, payload: bytes | memoryview) -> None:
        """Write one frame; frames of concurrent calls never interleave."""
        if self.closed:
            raise ChannelClosed()
        header = HEADER.pack(kind, rid, len(payload))
        async with self._send_lock:
            try:
                await self._stream.send(header + bytes(payload))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ChannelClosed() from exc

    @asynccontextmanager
    async def call(
        self, request: Mapping[str, Any] | bytes, *, settle: float = 0.0
    ) -> AsyncIterator[Call]:
        """Send `request` (JSON-encoded here unless given as bytes) and yield its `Call`.

        Leaving the block before the call finished (an error, cancellation, a deadline) tells
        the helper to cancel it, which kills a running command's process group; that costs at
        most `CANCEL_WAIT` seconds, even when the helper does not read. With `settle`, leaving
        also waits up to that many seconds for the helper's last word on the call, so that a
        cancelled command is known to be gone (killed and reaped) when the block is left.
        """
        rid = self._next_rid
        self._next_rid += 1
        send, receive = anyio.create_memory_object_stream[Frame](math.inf)
        self._inboxes[rid] = send
        call = Call(self, rid, receive)
        try:
            payload = request if isinstance(request, bytes) else json.dumps(request).encode()
            await self.send_frame(REQ, rid, payload)
            yield call
        finally:
            if not call.finished and not self.closed:
                with anyio.CancelScope(shield=True):
                    await self._cancel(call, settle)
            self._inboxes.pop(rid, None)
            receive.close()
            send.close()

    async def _cancel(self, call: Call, settle: float) -> None:
        with anyio.move_on_after(CANCEL_WAIT), suppress(ChannelClosed):
            await self.send_frame(CANCEL, call.rid, b"")
        with anyio.move_on_after(settle), suppress(ChannelClosed):
            while settle > 0 and not call.finished:
                await call.receive()

    async def aclose(self) -> None:
        """Close the connection; the helper sees end of input and kills what it runs."""
        self.closed = True
        await self._stream.aclose()

"""Helpers of the SSE tests: a TCP proxy that can cut its connections, a raw SSE reader on
plain httpx, and a second writer of a store (as another process would be).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx

from sandbox_sessions._types import SandboxOptions, SessionInfo, TextDeltaEvent
from sandbox_sessions.service._eventlog import EventLog
from sandbox_sessions.store._sqlite import SQLiteStore

__all__ = ["Frame", "Proxy", "StoreWriter", "frames", "proxy", "store_writer"]


class Proxy:
    """Forwards loopback TCP connections to `target_port`; `cut()` closes every connection
    open now (as a dropped network path would), and new ones are still accepted."""

    def __init__(self, listener: anyio.abc.Listener[anyio.abc.SocketStream],
                 target_port: int) -> None:
        self._listener = listener
        self._target = target_port
        self._open: set[anyio.abc.SocketStream] = set()
        self.accepted = 0
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.url = f"http://127.0.0.1:{port}"
        # The bridge accepts only its own Host: requests get the target's, as a proxy sends.
        self._rename = (f"127.0.0.1:{port}".encode(), f"127.0.0.1:{target_port}".encode())

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with client, await anyio.connect_tcp("127.0.0.1", self._target) as upstream:
            self._open |= {client, upstream}
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(_pipe, client, upstream, group.cancel_scope,
                                     self._rename)
                    group.start_soon(_pipe, upstream, client, group.cancel_scope, None)
            finally:
                self._open -= {client, upstream}

    async def cut(self) -> int:
        """Close every open connection; how many there were."""
        streams, self._open = list(self._open), set()
        for stream in streams:
            await stream.aclose()
        return len(streams) // 2


async def _pipe(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream,
                scope: anyio.CancelScope, rename: tuple[bytes, bytes] | None) -> None:
    try:
        async for data in source:
            await sink.send(data.replace(*rename) if rename else data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    scope.cancel()


@asynccontextmanager
async def proxy(target_port: int) -> AsyncIterator[Proxy]:
    """A `Proxy` to `target_port` on a free loopback port, until the block ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    opened = Proxy(listener, target_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, opened._serve)
        yield opened
        group.cancel_scope.cancel()


@dataclass
class Frame:
    """One SSE frame as it came on the wire."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a raw `text/event-stream` body, read without any SSE library."""
    frame = Frame()
    async for line in response.aiter_lines():
        if not line:
            if frame != Frame():
                yield frame
            frame = Frame()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if not name:
            frame.comments.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data.append(value)


def session_record(session_id: str) -> SessionInfo:
    """An idle session's record, without a container: enough for its event stream."""
    now = datetime.now(UTC)
    return SessionInfo(id=session_id, title="sse", agent="sse", status="idle",
                       time_created=now, time_updated=now, sandbox=SandboxOptions())


class StoreWriter:
    """Appends text-delta events to sessions of a store through an `EventLog` of its own."""

    def __init__(self, store: SQLiteStore, log: EventLog) -> None:
        self.store = store
        self.log = log

    async def add_session(self, session_id: str) -> None:
        await self.store.put_session(session_record(session_id))
        await self.log.open(session_id)

    async def write(self, session_id: str, count: int, *, text: str = "x") -> None:
        """`count` events for the session, stored (durable) on return."""
        for index in range(count):
            self.log.emit(session_id, TextDeltaEvent, message_id="m", part_id="p",
                          delta=f"{text}{index}")
        await self.log.flush()


@asynccontextmanager
async def store_writer(path: Path) -> AsyncIterator[StoreWriter]:
    """A `StoreWriter` on the store at `path`, until the block ends."""
    store = SQLiteStore(path)
    try:
        async with anyio.create_task_group() as group:
            yield StoreWriter(store, EventLog(store, group))
            group.cancel_scope.cancel()
    finally:
        await store.aclose()

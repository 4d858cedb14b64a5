"""A real bridge server for tests: `serve()` on a loopback port, in a thread of its own.

The server runs its own event loop (an anyio blocking portal) over its own `SessionService`,
on a socket bound before it starts, and is stopped the way a signal stops it (turns aborted,
streams ended, the service closed).

    with BridgeServer(store_path) as server:
        async with AsyncSandboxClient(base_url=server.url, token=server.token) as client: ...
"""

from __future__ import annotations

import secrets
import socket
import threading
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from sandbox_sessions.server import ServerConfig, serve
from sandbox_sessions.service import SessionService

__all__ = ["BridgeServer"]


class BridgeServer:
    """A bridge on 127.0.0.1 over the store at `store`, until the block ends."""

    def __init__(self, store: Path, **config: object) -> None:
        self._store = store
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.token: str = secrets.token_hex(32)
        self.config = ServerConfig(port=self.port, token=self.token, **config)  # type: ignore[arg-type]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stack = ExitStack()
        self._done: Future[None] | None = None
        self.service: SessionService | None = None
        self.portal: BlockingPortal | None = None
        """The server's event loop: call its service there."""

    def __enter__(self) -> Self:
        portal = self._stack.enter_context(start_blocking_portal())
        self.portal = portal
        stop = portal.call(anyio.Event)
        ready = threading.Event()

        def on_ready(service: SessionService) -> None:
            self.service = service
            ready.set()

        self._done = portal.start_task_soon(
            lambda: serve(self.config, store=self._store, on_ready=on_ready, stop=stop,
                          sock=self._sock))
        self._stack.callback(self._wait_stopped)
        self._stack.callback(portal.call, stop.set)
        while not ready.wait(0.1):
            if self._done.done():
                self._done.result()  # the server failed to start: raise why
        return self

    def _wait_stopped(self) -> None:
        assert self._done is not None
        self._done.result(timeout=30)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._stack.close()
        finally:
            self._sock.close()

"""Running the bridge: `sandbox-sessions serve`, on uvicorn, over the same store and engine
settings as the in-process client.

Shutting down (SIGTERM, SIGINT, or `stop`) stops accepting connections, aborts each running
turn so that its `turn-end` (reason `aborted`) is stored and sent to those watching, ends the
event streams, and closes the service: all within `SHUTDOWN_GRACE` seconds.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import anyio
import uvicorn

from ..service._open import open_service
from ..service._service import SessionService
from ..store.base import Store
from ._app import Bridge, create_app
from ._config import ServerConfig

__all__ = ["SHUTDOWN_GRACE", "serve"]

log: logging.Logger = logging.getLogger("sandbox_sessions.server")

SHUTDOWN_GRACE = 3.0
"""Seconds in-flight requests get to finish once turns are aborted and streams ended."""


class _Server(uvicorn.Server):
    """uvicorn, with the bridge's own first steps of a shutdown."""

    def __init__(self, config: uvicorn.Config, bridge: Bridge) -> None:
        super().__init__(config)
        self._bridge = bridge
        self.ready = anyio.Event()
        """Set once it accepts connections (or gave up starting)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
            await self._bridge.service.abort_all()  # turn-ends stored, and streamed out
            await anyio.sleep(0.2)  # let the streams send them
        self._bridge.closing.set()
        await super().shutdown(sockets)


async def serve(
    config: ServerConfig,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    docker_url: str | None = None,
    on_ready: Callable[[SessionService], object] | None = None,
    stop: anyio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until a signal (when run in the main thread) or until `stop` is set.

    `on_ready` is called once the server accepts connections. `sock` is an already bound
    socket to serve on, instead of binding `config.host:port`.
    """
    async with open_service(store=store, docker_url=docker_url) as service:
        app, bridge = create_app(service, config)
        server = _Server(uvicorn.Config(app, host=config.host, port=config.port,
                                        log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
                                        proxy_headers=False, server_header=False), bridge)
        async with anyio.create_task_group() as group:
            if stop is not None:
                group.start_soon(_stop_when, stop, server)
            if on_ready is not None:
                group.start_soon(_ready_when, server, on_ready, service)
            await server.serve(sockets=None if sock is None else [sock])
            group.cancel_scope.cancel()


async def _stop_when(stop: anyio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


async def _ready_when(server: _Server, on_ready: Callable[[SessionService], object],
                      service: SessionService) -> None:
    await server.ready.wait()
    if server.started:
        on_ready(service)

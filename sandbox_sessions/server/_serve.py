"""Running the bridge: `sandbox-sessions serve`, on uvicorn, over the same store and engine
settings as the in-process client.

Shutting down (SIGTERM or SIGINT in the main thread, or `stop`) goes in this order, all
within `SHUTDOWN_LIMIT` seconds:

1. stop accepting connections;
2. abort each running turn, so that its `turn-end` (reason `aborted`) is stored and sent to
   those watching (at most `ABORT_GRACE` seconds);
3. end the event streams; requests still running (a command, a download) get
   `REQUEST_GRACE` seconds, then are cancelled (a command's process group is killed);
4. close the service: whatever turn started meanwhile is aborted too, the log is flushed,
   the store closed.

uvicorn's own signal handling is left out: it re-raises the signal once it is done, which
would kill the process before the service is closed (the log flushed, the store closed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Generator

import anyio
import uvicorn

from .._exceptions import BridgeError, InvalidArgument
from ..service._open import open_service
from ..service._service import SessionService
from ..store.base import Store
from ._app import Bridge, create_app
from ._config import ServerConfig

__all__ = ["ABORT_GRACE", "REQUEST_GRACE", "SHUTDOWN_LIMIT", "is_loopback", "listen", "serve"]

log: logging.Logger = logging.getLogger("sandbox_sessions.server")

ABORT_GRACE = 3.0
"""Seconds the running turns get to store their `turn-end` once aborted."""
REQUEST_GRACE = 3
"""Seconds requests still running (commands, downloads) get before they are cancelled."""
SHUTDOWN_LIMIT = 8.0
"""Seconds from the signal to the end of `serve()`, whatever still runs (so that the
process is gone within 10 s)."""


class _Server(uvicorn.Server):
    """uvicorn, with the bridge's own first steps of a shutdown, and no signal handling of
    its own (`serve` has it)."""

    def __init__(self, config: uvicorn.Config, bridge: Bridge) -> None:
        super().__init__(config)
        self._bridge = bridge
        self.ready = anyio.Event()
        """Set once it accepts connections (or gave up starting)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # first: no new connection, so no new turn from one
            server.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_GRACE):
            await self._bridge.service.abort_all()  # turn-ends stored, and streamed out
            await anyio.sleep(0.2)  # let the streams send them
        self._bridge.closing.set()
        await super().shutdown(sockets)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only ever means this machine."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (port 0: any free one), ready to serve on. An address
    that does not resolve is an `InvalidArgument`; one that cannot be bound (in use, not
    this machine's) a `BridgeError`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OverflowError) as exc:
        raise InvalidArgument(f"cannot listen on {host!r} port {port}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BridgeError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return sock


async def serve(
    config: ServerConfig,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    docker_url: str | None = None,
    on_ready: Callable[[SessionService], object] | None = None,
    stop: anyio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (when run in the main thread) or until `stop` is set,
    then shut down as the module says and return.

    `on_ready` is called once the server accepts connections. `sock` is an already bound
    socket to serve on (see `listen`), instead of binding `config.host:port`.
    """
    stop = anyio.Event() if stop is None else stop
    async with anyio.create_task_group() as group:
        if threading.current_thread() is threading.main_thread():
            group.start_soon(_stop_on_signals, stop)  # until the service is closed, too
        with anyio.CancelScope() as limit:  # given a deadline once `stop` is set
            group.start_soon(_limit_when, stop, limit)
            await _serve(config, store=store, docker_url=docker_url, on_ready=on_ready,
                         stop=stop, sock=sock)
        if limit.cancelled_caught:
            log.error("shutdown took over %s s: stopped what still ran", SHUTDOWN_LIMIT)
        group.cancel_scope.cancel()


async def _serve(config: ServerConfig, *, store: Store | str | os.PathLike[str] | None,
                 docker_url: str | None, on_ready: Callable[[SessionService], object] | None,
                 stop: anyio.Event, sock: socket.socket | None) -> None:
    async with open_service(store=store, docker_url=docker_url) as service:
        app, bridge = create_app(service, config)
        server = _Server(uvicorn.Config(app, host=config.host, port=config.port,
                                        log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=REQUEST_GRACE,
                                        proxy_headers=False, server_header=False,
                                        http="h11"), bridge)  # see docs/decisions.md
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_when, stop, server)
            if on_ready is not None:
                group.start_soon(_ready_when, server, on_ready, service)
            await server.serve(sockets=None if sock is None else [sock])
            group.cancel_scope.cancel()


async def _stop_on_signals(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("shutting down already (at most %s s)", SHUTDOWN_LIMIT)
            else:
                log.warning("%s: shutting down", signal.Signals(signum).name)
                stop.set()


async def _limit_when(stop: anyio.Event, limit: anyio.CancelScope) -> None:
    await stop.wait()
    limit.deadline = anyio.current_time() + SHUTDOWN_LIMIT


async def _stop_when(stop: anyio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


async def _ready_when(server: _Server, on_ready: Callable[[SessionService], object],
                      service: SessionService) -> None:
    await server.ready.wait()
    if server.started:
        on_ready(service)

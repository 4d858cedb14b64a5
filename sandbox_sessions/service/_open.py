"""Opening a `SessionService`: the store, the sandbox backend, the event log, the turns.

What the embedded client and the HTTP server both run. Everything is opened in one task and
closed in reverse order: running turns are aborted first (each stores its `turn-end`), then
creations under way finish, then the log is flushed, then connections and the store close.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio
import anyio.to_thread
import httpx

from .._exceptions import SandboxSessionsError, StoreError
from ..agent._pricing import DEFAULT_PRICES, Price
from ..agent.base import Tool
from ..sandbox.base import SandboxBackend
from ..sandbox.docker import DockerBackend
from ..store._sqlite import SQLiteStore
from ..store.base import Store
from ._eventlog import EventLog
from ._service import SessionService
from ._sessions import Sessions
from ._turn_leases import TurnLeases
from ._turns import Turns

__all__ = ["open_service"]

log: logging.Logger = logging.getLogger("sandbox_sessions")

MODEL_TIMEOUT = httpx.Timeout(600, connect=10)
"""How long a model's API may take: 10 s to connect, 600 s between bytes of its stream."""


@asynccontextmanager
async def open_service(
    *,
    store: Store | str | os.PathLike[str] | None = None,
    backend: SandboxBackend | None = None,
    docker_url: str | None = None,
    reap_orphans: bool = True,
    api_keys: Mapping[str, str] | None = None,
    prices: Mapping[str, Price] | None = None,
) -> AsyncIterator[SessionService]:
    """Open a service over `store` (a `Store`, or the path of a SQLite file; default:
    `$SANDBOX_SESSIONS_DB`, else the user's state folder) and `backend` (default: a
    `DockerBackend` on `docker_url`, else `$DOCKER_HOST` or the local socket). A `Store`
    passed in is used as is and left open; a backend that is an async context manager is
    entered here and exited on close, so that it runs on this service's event loop.

    With `reap_orphans`, orphaned containers are removed at start; an engine that is down then
    is logged, not raised. Closing never raises anything but a `SandboxSessionsError`.
    """
    async with AsyncExitStack() as stack:
        if not isinstance(store, str | os.PathLike | None):
            opened_store: Store = store
        else:
            opened_store = await anyio.to_thread.run_sync(SQLiteStore, store)
            stack.push_async_callback(opened_store.aclose)
        if backend is None:
            backend = DockerBackend(docker_url=docker_url)
        if isinstance(backend, AbstractAsyncContextManager):
            await stack.enter_async_context(backend)
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)  # stops the lease renewers
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=MODEL_TIMEOUT))
        events = EventLog(opened_store, task_group)
        stack.push_async_callback(_flush_quietly, events)  # last events on disk first
        leases = TurnLeases(opened_store, events, task_group)
        stack.push_async_callback(leases.aclose)
        sessions = Sessions(opened_store, backend, events, leases)
        stack.push_async_callback(sessions.aclose)
        tools: dict[str, Tool] = {}
        turns = Turns(sessions, events, task_group, prices={**DEFAULT_PRICES, **(prices or {})},
                      api_keys=dict(api_keys or {}), http=http, extra_tools=tools)
        stack.push_async_callback(turns.aclose)  # first: turns end while all else runs
        service = SessionService(sessions, turns, tools)
        if reap_orphans:
            try:
                await service.gc()
            except SandboxSessionsError as exc:
                # The text only: a record that kept `exc` would keep its traceback's frames
                # (and docker-py's unclosed socket) alive in any handler.
                log.warning("orphan reaping skipped: %s", str(exc))
        yield service


async def _flush_quietly(events: EventLog) -> None:
    try:
        await events.flush()
    except StoreError as exc:  # nothing more to do about it: say so, and close
        log.error("closing with events not stored: %s", exc)

"""`Sessions`: sessions, their sandboxes and their files, over a store and a backend.

The sandbox side of the `SessionService` facade. It holds no per-caller state beyond live
sandbox connections.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import anyio

from .._exceptions import (
    FileTooLarge,
    InvalidArgument,
    SandboxError,
    SandboxFileNotFound,
    SessionBusy,
    SessionEnded,
    SessionNotFound,
    StoreError,
)
from .._types import (
    DEFAULT_MAX_READ,
    AgentConfig,
    ArtifactEntry,
    ArtifactInfo,
    PathEntries,
    SandboxOptions,
    SandboxRestartedEvent,
    SessionInfo,
    ShellCommand,
    ShellOutput,
    ShellResult,
    ShellRunEvent,
)
from .._validation import (
    check_bytes,
    check_command,
    check_count,
    check_env,
    check_mode,
    check_path,
    check_text,
    check_timeout,
)
from ..sandbox._archive import printable, unsafe_key_reason
from ..sandbox.base import OutputCallback, RestartCallback, Sandbox, SandboxBackend, ShellRequest
from ..store.base import Lease, Store
from ._artifacts import ARTIFACTS, entries, listing, path_entries
from ._eventlog import EventLog
from ._leases import is_stale
from ._turn_leases import TurnLeases

OutputSink = Callable[[ShellOutput], object]

log: logging.Logger = logging.getLogger("sandbox_sessions")

LABEL = "sandbox-sessions"
CLOSE_GRACE = 60.0
"""Seconds closing waits for the creations under way (so none leaves a container behind)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return "ses_" + secrets.token_hex(12)


class Sessions:
    """Creates, finds and ends sessions, and runs their shell and file calls: the sandbox side
    of `SessionService`."""

    def __init__(
        self, store: Store, backend: SandboxBackend, events: EventLog, turns: TurnLeases
    ) -> None:
        self.store = store
        self.backend = backend
        self.events = events
        self.turns = turns
        self._live: dict[str, Sandbox] = {}
        self._attach_lock = anyio.Lock()
        self._creating = 0
        self._created = anyio.Event()
        self._closing = False

    def labels(self, session_id: str) -> dict[str, str]:
        """The labels every container of `session_id` carries."""
        return {
            LABEL: "1",
            f"{LABEL}.session": session_id,
            f"{LABEL}.owner": self.store.owner_id,
            f"{LABEL}.store": self.store.location,
        }

    async def create_session(
        self, *, agent: str, title: str | None, options: SandboxOptions, config: AgentConfig,
        metadata: dict[str, str] | None = None, parent_id: str | None = None, depth: int = 0,
    ) -> SessionInfo:
        """Record the session as `creating` under a lease, start its container, then make it
        `idle` if the lease still holds; a failed or cancelled start leaves no session and no
        container. `SessionEnded` if the session was ended (or reaped) meanwhile."""
        if self._closing:
            raise InvalidArgument("the client is closed")
        self._creating += 1
        try:
            return await self._create(agent=agent, title=title, options=options, config=config,
                                      metadata=metadata or {}, parent_id=parent_id,
                                      depth=depth)
        finally:
            self._creating -= 1
            self._created.set()

    async def _create(
        self, *, agent: str, title: str | None, options: SandboxOptions, config: AgentConfig,
        metadata: dict[str, str], parent_id: str | None, depth: int,
    ) -> SessionInfo:
        now, session_id = _now(), _new_id()
        info = SessionInfo(id=session_id, title=title or f"Session {now:%Y-%m-%d %H:%M:%S}",
                           agent=agent, status="creating", time_created=now, time_updated=now,
                           sandbox=options, config=config, metadata=metadata,
                           parent_id=parent_id, depth=depth)
        lease = self.turns.creation(session_id)
        await self.store.create_session(info, lease)
        sandbox: Sandbox | None = None
        try:
            sandbox = await self.backend.create(options, labels=self.labels(session_id),
                                                on_restart=self._restart_recorder(session_id))
            ready = info.model_copy(update={"status": "idle", "container_id": sandbox.id})
            if not await self.store.finish_create(lease, ready):
                raise SessionEnded(session_id)  # ended, or reaped as its lease ran out
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_create(lease, sandbox)
            raise
        self._live[session_id] = sandbox
        return ready

    async def _undo_create(self, lease: Lease, sandbox: Sandbox | None) -> None:
        try:
            if sandbox is not None:
                await sandbox.aclose()
                await self.backend.destroy(sandbox.id)
            await self.store.finish_create(lease, None)
        except (SandboxError, StoreError) as exc:  # what is left, the reaper removes
            log.warning("session %s: clean-up after a failed create: %s", lease.session_id, exc)

    async def get_info(self, session_id: str) -> SessionInfo:
        """The session's record; `SessionNotFound` for an unknown id. The first look at a
        session closes its turn if the process running it is gone."""
        check_text(session_id, "session id")
        info = await self.store.get_session(session_id)
        if info is None:
            raise SessionNotFound(session_id)
        await self.turns.settle(session_id)
        return info

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """Usable sessions (with `include_ended`, every record), newest first; turns whose
        process is gone are closed first."""
        await self.turns.settle_all()
        return await self.store.list_sessions(include_ended=include_ended)

    async def update_info(
        self, session_id: str, *, title: str | None = None, config: AgentConfig | None = None,
        archived: bool | None = None, pinned: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> SessionInfo:
        """Store what is not None; `SessionEnded` once the session has ended."""
        info = await self.get_info(session_id)
        check_usable(info)
        changes: dict[str, object] = {"time_updated": _now()}
        given = {"title": title, "config": config, "archived": archived, "pinned": pinned,
                 "metadata": metadata}
        changes.update({key: value for key, value in given.items() if value is not None})
        updated = info.model_copy(update=changes)
        if not await self.store.update_session(updated, expect=info.status):
            check_usable(await self.get_info(session_id))  # ended meanwhile
            raise SessionBusy(session_id, reason="changed meanwhile; try again")
        return updated

    async def sandbox(self, session_id: str) -> Sandbox:
        """The session's live sandbox, connecting to it on first use."""
        return await self._sandbox(session_id)

    async def _sandbox(self, session_id: str) -> Sandbox:
        sandbox = self._live.get(session_id)
        if sandbox is not None:
            return sandbox
        info = await self.get_info(session_id)
        check_usable(info)
        if info.container_id is None:
            raise SessionEnded(session_id)
        async with self._attach_lock:
            if session_id not in self._live:
                sandbox = await self.backend.attach(
                    info.container_id, info.sandbox, on_restart=self._restart_recorder(session_id))
                self._live[session_id] = sandbox
            return self._live[session_id]

    def _restart_recorder(self, session_id: str) -> RestartCallback:
        async def record(reason: str) -> None:
            await self.events.open(session_id)
            self.events.emit(session_id, SandboxRestartedEvent, reason=reason)

        return record

    async def shell(
        self, session_id: str, command: ShellCommand, *, on_output: OutputSink | None = None
    ) -> ShellResult:
        """Run a command in the session's sandbox; see `Sandbox.shell`. Its output reaches
        `on_output` as it arrives. `timeout` is a finite number of seconds >= 0 (0 kills the
        command at once), or None."""
        timeout = check_timeout(command.timeout)
        check_command(command.command)
        if command.cwd is not None:
            check_path(command.cwd, "cwd")
        env = check_env(command.env)
        check_count(command.max_output, "max_output")
        sandbox = await self._sandbox(session_id)
        result = await sandbox.shell(ShellRequest(
            command=command.command, timeout=timeout, cwd=command.cwd, env=env,
            max_output=command.max_output, on_stdout=_feeder(on_output, "stdout"),
            on_stderr=_feeder(on_output, "stderr")))
        await self.events.open(session_id)
        self.events.emit(session_id, ShellRunEvent, command=command.command,
                         exit_code=result.exit_code, timed_out=result.timed_out,
                         duration=result.duration)
        return result

    async def _absolute(self, session_id: str, path: str) -> str:
        check_path(path)
        if posixpath.isabs(path):
            return posixpath.normpath(path)
        info = await self.get_info(session_id)
        return posixpath.normpath(posixpath.join(info.sandbox.workdir, path))

    async def put_file(
        self, session_id: str, path: str, content: bytes | AsyncIterable[bytes], *,
        mode: int | None = None,
    ) -> None:
        """Write a file (relative paths from the workdir), atomically; `content` may come as
        a stream of chunks."""
        data = content if isinstance(content, AsyncIterable) else check_bytes(content)
        check_mode(mode)
        target = await self._absolute(session_id, path)
        await (await self._sandbox(session_id)).write_file(target, data, mode=mode)

    async def read_file(
        self, session_id: str, path: str, *, max_bytes: int = DEFAULT_MAX_READ
    ) -> AsyncIterator[bytes]:
        """A regular file's bytes in chunks; `FileTooLarge` past `max_bytes`,
        `SandboxFileNotFound` for a link (at any folder of the path), FIFO, device, socket or
        /proc-like file."""
        check_count(max_bytes, "max_bytes")
        target = await self._absolute(session_id, path)
        sandbox = await self._sandbox(session_id)
        size = 0
        async for chunk in sandbox.stream_file(target, max_bytes=max_bytes):
            size += len(chunk)
            if size > max_bytes:  # the sandbox is not trusted to keep to the cap
                raise FileTooLarge(f"{path} is over the cap of {max_bytes} bytes")
            yield chunk

    async def list_artifacts(self, session_id: str) -> list[ArtifactInfo]:
        """Regular files under `/artifacts` with safe keys, sorted by key; unsafe names (not
        UTF-8 among them) are left out and logged."""
        return listing(await (await self._sandbox(session_id)).walk(ARTIFACTS))

    async def artifact_entries(self, session_id: str) -> list[ArtifactEntry]:
        """Every entry under `/artifacts`, unsafe names refused (and shown escaped)."""
        return entries(await (await self._sandbox(session_id)).walk(ARTIFACTS))

    async def path_entries(self, session_id: str, path: str) -> PathEntries:
        """`path` (relative from the workdir) and, for a folder, every entry below it."""
        target = await self._absolute(session_id, path)
        return await path_entries(await self._sandbox(session_id), target)

    async def read_artifact(
        self, session_id: str, key: str, *, max_bytes: int = DEFAULT_MAX_READ
    ) -> AsyncIterator[bytes]:
        """The bytes of the artifact `key`; `InvalidArgument` for an unsafe key."""
        check_path(key, "artifact key")
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise InvalidArgument(f"artifact key {printable(key)!r}: {reason}")
        try:
            async for chunk in self.read_file(session_id, f"{ARTIFACTS}/{key}",
                                              max_bytes=max_bytes):
                yield chunk
        except SandboxFileNotFound as exc:
            if str(exc).endswith(": no such file"):
                raise SandboxFileNotFound(key, "no such artifact") from None
            raise

    async def end(self, session_id: str) -> SessionInfo:
        """Remove the container at once and mark the session ended. Ending twice is a no-op.

        Ending a session still being created makes its creation fail (and remove its
        container)."""
        while True:
            info = await self.get_info(session_id)
            if info.status == "ended":
                return info
            sandbox = self._live.pop(session_id, None)
            if sandbox is not None:
                await sandbox.aclose()
            if info.container_id is not None:
                await self.backend.destroy(info.container_id)
            ended = info.model_copy(update={"status": "ended", "time_updated": _now()})
            if await self.store.update_session(ended, expect=info.status):
                return ended
            # It changed meanwhile (its creation finished): end what it is now.

    async def reap_orphans(self) -> list[str]:
        """Remove the containers that are provably orphaned, and return their ids: those of
        this store whose session is ended, unknown, points at another container, or was being
        created by a process that is gone (that record is marked ended first, by
        compare-and-swap, so a creator that is in fact alive sees it and gives up); and those
        of stores whose file no longer exists. A container being created within its lease, or
        of a live session, is never removed; nor is one whose record cannot be read."""
        removed = []
        for labels in await self.backend.list_labelled({LABEL: "1"}):
            if await self._is_orphan(labels):
                await self.backend.destroy(labels["id"])
                removed.append(labels["id"])
        return removed

    async def _is_orphan(self, labels: Mapping[str, Any]) -> bool:
        if labels.get(f"{LABEL}.owner") != self.store.owner_id:
            store = labels.get(f"{LABEL}.store")
            return isinstance(store, str) and bool(store) and not await anyio.Path(store).exists()
        session_id = labels.get(f"{LABEL}.session", "")
        try:
            info = await self.store.get_session(session_id)
            if info is not None and info.status == "creating":
                return await self._creation_abandoned(info)
        except StoreError as exc:
            log.warning("gc: keeping container %s: %s", labels["id"][:12], exc)
            return False
        return info is None or info.status == "ended" or info.container_id != labels["id"]

    async def _creation_abandoned(self, info: SessionInfo) -> bool:
        """Whether the session's creator is gone; if so its record is ended, atomically with
        the check that its lease has not moved."""
        lease = await self.store.get_lease(info.id)
        if lease is None or lease.kind != "create" or not is_stale(lease):
            return False
        ended = info.model_copy(update={"status": "ended", "time_updated": _now()})
        return await self.store.finish_create(lease, ended)

    async def aclose(self) -> None:
        """Refuse new sessions, let the creations under way finish (up to `CLOSE_GRACE`
        seconds), then drop every live connection; the containers keep running for later
        processes."""
        self._closing = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
            while self._creating:
                self._created = anyio.Event()
                await self._created.wait()
        live, self._live = self._live, {}
        for sandbox in live.values():
            with anyio.CancelScope(shield=True):
                await sandbox.aclose()


def check_usable(info: SessionInfo) -> None:
    if info.status == "ended":
        raise SessionEnded(info.id)
    if info.status == "creating":
        raise SessionBusy(info.id, reason="is still being created")


def _feeder(sink: OutputSink | None, stream: Literal["stdout", "stderr"]) -> OutputCallback | None:
    if sink is None:
        return None
    return lambda text: sink(ShellOutput(stream=stream, text=text))

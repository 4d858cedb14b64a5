"""`SessionService`: sessions, their sandboxes and their files, over a store and a backend.

Both transports call this one service: the in-process client directly, the HTTP bridge (later)
through its routes. It holds no per-caller state beyond live sandbox connections.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from ._artifacts import ARTIFACTS, DownloadProgress, download, listing
from ._eventlog import EventLog
from ._exceptions import (
    FileDecodeError,
    FileTooLarge,
    InvalidArgument,
    SandboxFileNotFound,
    SessionEnded,
    SessionNotFound,
)
from ._types import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_READ,
    AgentConfig,
    ArtifactDownload,
    ArtifactInfo,
    SandboxOptions,
    SandboxRestartedEvent,
    SessionInfo,
    ShellResult,
    ShellRunEvent,
)
from ._validation import check_timeout
from .sandbox._archive import Caps, printable, unsafe_key_reason
from .sandbox.base import OutputCallback, RestartCallback, Sandbox, SandboxBackend, ShellRequest
from .store.base import Store

log: logging.Logger = logging.getLogger("sandbox_sessions")

LABEL = "sandbox-sessions"


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return "ses_" + secrets.token_hex(12)


class SessionService:
    """Creates, finds and ends sessions, and runs their shell and file calls."""

    def __init__(self, store: Store, backend: SandboxBackend, events: EventLog) -> None:
        self.store = store
        self.backend = backend
        self.events = events
        self._live: dict[str, Sandbox] = {}
        self._attach_lock = anyio.Lock()

    def labels(self, session_id: str) -> dict[str, str]:
        """The labels every container of `session_id` carries."""
        return {
            LABEL: "1",
            f"{LABEL}.session": session_id,
            f"{LABEL}.owner": self.store.owner_id,
            f"{LABEL}.store": self.store.location,
        }

    async def create_session(
        self, *, agent: str, title: str | None, options: SandboxOptions, config: AgentConfig
    ) -> SessionInfo:
        """Record the session, then start its container; a failed start leaves no session."""
        now, session_id = _now(), _new_id()
        info = SessionInfo(id=session_id, title=title or f"Session {now:%Y-%m-%d %H:%M:%S}",
                           agent=agent, status="idle", time_created=now, time_updated=now,
                           sandbox=options, config=config)
        # Recorded as ended until its container is up: a crash in between leaves an orphan
        # container that the reaper removes, never a live session without a container.
        await self.store.put_session(info.model_copy(update={"status": "ended"}))
        try:
            sandbox = await self.backend.create(options, labels=self.labels(session_id),
                                                on_restart=self._restart_recorder(session_id))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.delete_session(session_id)
            raise
        self._live[session_id] = sandbox
        info = info.model_copy(update={"container_id": sandbox.id})
        await self.store.put_session(info)
        return info

    async def get_info(self, session_id: str) -> SessionInfo:
        """The session's record; `SessionNotFound` for an unknown id."""
        info = await self.store.get_session(session_id)
        if info is None:
            raise SessionNotFound(session_id)
        return info

    async def update_info(
        self, session_id: str, *, title: str | None = None, config: AgentConfig | None = None
    ) -> SessionInfo:
        """Store a new title or agent config; `SessionEnded` once the session has ended."""
        info = await self.get_info(session_id)
        if info.status == "ended":
            raise SessionEnded(session_id)
        changes: dict[str, object] = {"time_updated": _now()}
        if title is not None:
            changes["title"] = title
        if config is not None:
            changes["config"] = config
        info = info.model_copy(update=changes)
        await self.store.put_session(info)
        return info

    async def sandbox(self, session_id: str) -> Sandbox:
        """The session's live sandbox, connecting to it on first use."""
        return await self._sandbox(session_id)

    async def _sandbox(self, session_id: str) -> Sandbox:
        sandbox = self._live.get(session_id)
        if sandbox is not None:
            return sandbox
        info = await self.get_info(session_id)
        if info.status == "ended" or info.container_id is None:
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
        self,
        session_id: str,
        command: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ShellResult:
        """Run a command in the session's sandbox; see `Sandbox.shell`.

        `timeout` is a finite number of seconds >= 0 (0 kills the command at once), or None.
        """
        timeout = check_timeout(timeout)
        if max_output < 0:
            raise InvalidArgument(f"max_output must be zero or more, not {max_output}")
        sandbox = await self._sandbox(session_id)
        result = await sandbox.shell(ShellRequest(
            command=command, timeout=timeout, cwd=cwd, env=dict(env or {}),
            max_output=max_output, on_stdout=on_stdout, on_stderr=on_stderr))
        await self.events.open(session_id)
        self.events.emit(session_id, ShellRunEvent, command=command, exit_code=result.exit_code,
                         timed_out=result.timed_out, duration=result.duration)
        return result

    async def _absolute(self, session_id: str, path: str) -> str:
        if not path or "\x00" in path:
            raise InvalidArgument(f"not a usable path: {path!r}")
        if posixpath.isabs(path):
            return posixpath.normpath(path)
        info = await self.get_info(session_id)
        return posixpath.normpath(posixpath.join(info.sandbox.workdir, path))

    async def put_file(
        self, session_id: str, path: str, content: str | bytes, *, mode: int | None = None
    ) -> None:
        """Write a file (relative paths from the workdir), atomically."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        target = await self._absolute(session_id, path)
        await (await self._sandbox(session_id)).write_file(target, data, mode=mode)

    async def read_bytes(
        self, session_id: str, path: str, *, max_bytes: int = DEFAULT_MAX_READ
    ) -> bytes:
        """A regular file's bytes; `FileTooLarge` past `max_bytes`, `SandboxFileNotFound` for
        a link (at any folder of the path), FIFO, device, socket or /proc-like file."""
        _check_max_bytes(max_bytes)
        target = await self._absolute(session_id, path)
        sandbox = await self._sandbox(session_id)
        chunks, size = [], 0
        async for chunk in sandbox.stream_file(target, max_bytes=max_bytes):
            size += len(chunk)
            if size > max_bytes:  # the sandbox is not trusted to keep to the cap
                raise FileTooLarge(f"{path} is over the cap of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_text(
        self, session_id: str, path: str, *, encoding: str = "utf-8",
        max_bytes: int = DEFAULT_MAX_READ,
    ) -> str:
        """A file's text; `FileDecodeError` when not valid in `encoding`."""
        data = await self.read_bytes(session_id, path, max_bytes=max_bytes)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise FileDecodeError(
                f"{path} is not valid {encoding} (byte {exc.start}); read it with get_file_bytes()"
            ) from exc
        except LookupError as exc:
            raise InvalidArgument(f"unknown encoding {encoding!r}") from exc

    async def list_artifacts(self, session_id: str) -> list[ArtifactInfo]:
        """Regular files under `/artifacts` with safe keys, sorted by key; unsafe names (not
        UTF-8 among them) are left out and logged."""
        return listing(await (await self._sandbox(session_id)).walk(ARTIFACTS))

    def _artifact_path(self, key: str) -> str:
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise InvalidArgument(f"artifact key {printable(key)!r}: {reason}")
        return f"{ARTIFACTS}/{key}"

    async def read_artifact(
        self, session_id: str, key: str, *, max_bytes: int = DEFAULT_MAX_READ
    ) -> bytes:
        """The bytes of the artifact `key`; `InvalidArgument` for an unsafe key."""
        try:
            return await self.read_bytes(session_id, self._artifact_path(key),
                                         max_bytes=max_bytes)
        except SandboxFileNotFound as exc:
            if str(exc).endswith(": no such file"):
                raise SandboxFileNotFound(key, "no such artifact") from None
            raise

    async def download_artifacts(
        self,
        session_id: str,
        destination: str | Path,
        *,
        caps: Caps | None = None,
        progress: DownloadProgress | None = None,
    ) -> ArtifactDownload:
        """Copy every artifact into `destination`; see `artifacts.download`."""
        if caps is not None and not isinstance(caps, Caps):
            raise InvalidArgument(f"caps must be a Caps, not {type(caps).__name__}")
        sandbox = await self._sandbox(session_id)
        return await download(sandbox, Path(destination), caps=caps or Caps(),
                              progress=progress)

    async def end(self, session_id: str) -> SessionInfo:
        """Remove the container at once and mark the session ended. Ending twice is a no-op."""
        info = await self.get_info(session_id)
        if info.status == "ended":
            return info
        sandbox = self._live.pop(session_id, None)
        if sandbox is not None:
            await sandbox.aclose()
        if info.container_id is not None:
            await self.backend.destroy(info.container_id)
        ended = info.model_copy(update={"status": "ended", "time_updated": _now()})
        await self.store.put_session(ended)
        return ended

    async def reap_orphans(self) -> list[str]:
        """Remove containers of this store whose session is ended or unknown, and containers of
        stores whose file no longer exists. Returns the container ids removed."""
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
        info = await self.store.get_session(labels.get(f"{LABEL}.session", ""))
        return info is None or info.status == "ended" or info.container_id != labels["id"]

    async def aclose(self) -> None:
        """Drop every live connection; the containers keep running for later processes."""
        live, self._live = self._live, {}
        for sandbox in live.values():
            with anyio.CancelScope(shield=True):
                await sandbox.aclose()


def _check_max_bytes(max_bytes: int) -> None:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise InvalidArgument(f"max_bytes must be a whole number >= 0, not {max_bytes!r}")

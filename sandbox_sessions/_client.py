"""The async client: `AsyncSandboxClient`, `AsyncAgent` and `AsyncSessionHandle`.

This is the one implementation; `SandboxClient` and friends in `_sync.py` are a thin blocking
facade over it.
"""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self, TypedDict, Unpack

import anyio
from pydantic import ValidationError

from ._exceptions import FileDecodeError, InvalidArgument, SandboxSessionsError
from ._service import DownloadProgress, SessionService
from ._types import (
    DEFAULT_MAX_OUTPUT,
    ArtifactDownload,
    ArtifactInfo,
    SandboxOptions,
    SessionInfo,
    ShellResult,
)
from .sandbox._archive import Caps
from .sandbox._engine import Engine
from .sandbox.base import OutputCallback
from .sandbox.docker import DockerBackend
from .store._sqlite import SQLiteStore

__all__ = ["AsyncAgent", "AsyncSandboxClient", "AsyncSessionHandle", "SandboxKwargs"]

log: logging.Logger = logging.getLogger("sandbox_sessions")


class SandboxKwargs(TypedDict, total=False):
    """Keyword arguments of `agent()` that set `SandboxOptions` fields."""

    image: str
    network: bool
    memory: str
    cpus: float
    pids: int
    env: dict[str, str]
    workdir: str
    user: str


def sandbox_options(base: SandboxOptions | None, overrides: SandboxKwargs) -> SandboxOptions:
    """`base` (or the defaults) with `overrides` applied; `InvalidArgument` when invalid."""
    fields = {**(base or SandboxOptions()).model_dump(), **overrides}
    try:
        return SandboxOptions.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid sandbox options: {exc}") from exc


class AsyncSessionHandle:
    """One session. Cheap to make: it does no I/O until a call needs it.

    As an async context manager it ends the session on exit.
    """

    def __init__(self, service: SessionService, session_id: str) -> None:
        self._service = service
        self.id: str = session_id

    def __repr__(self) -> str:
        return f"<AsyncSessionHandle {self.id}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.end()

    async def get_info(self) -> SessionInfo:
        """The session's record: id, title, status, times, container and sandbox options."""
        return await self._service.get_info(self.id)

    async def shell(
        self,
        command: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ShellResult:
        """Run `command` with bash in the container, stdin closed, and wait for it.

        `cwd` defaults to the session's workdir (`/workspace`). Output reaches the callbacks
        as it comes; at most `max_output` bytes of each stream are kept (`truncated` says so).
        At `timeout` seconds the command's whole process group is killed: `timed_out` is set
        and `exit_code` is 124. Cancelling the call kills the process group too.
        """
        return await self._service.shell(self.id, command, timeout=timeout, cwd=cwd, env=env,
                                         max_output=max_output, on_stdout=on_stdout,
                                         on_stderr=on_stderr)

    async def put_file(self, path: str, content: str | bytes, *, mode: int | None = None) -> None:
        """Write `content` (text is UTF-8 encoded) to `path` atomically, making folders.

        A relative `path` is taken from the session's workdir.
        """
        await self._service.put_file(self.id, path, content, mode=mode)

    async def get_file(
        self, path: str, *, encoding: str = "utf-8", max_bytes: int | None = None
    ) -> str:
        """A file's text; `FileDecodeError` when it is not valid in `encoding`."""
        return await self._service.read_text(self.id, path, encoding=encoding, max_bytes=max_bytes)

    async def get_file_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """A file's bytes; `FileTooLarge` when it is larger than `max_bytes`."""
        return await self._service.read_bytes(self.id, path, max_bytes=max_bytes)

    async def list_artifacts(self) -> list[ArtifactInfo]:
        """Every regular file under `/artifacts`, keyed by its path relative to it, sorted."""
        return await self._service.list_artifacts(self.id)

    async def get_artifact(self, key: str, *, encoding: str = "utf-8") -> str:
        """The text of the artifact `key`."""
        data = await self._service.read_artifact(self.id, key)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise FileDecodeError(f"artifact {key} is not valid {encoding}") from exc

    async def get_artifact_bytes(self, key: str) -> bytes:
        """The bytes of the artifact `key`."""
        return await self._service.read_artifact(self.id, key)

    async def download_artifacts(
        self,
        destination: str | os.PathLike[str],
        *,
        caps: Caps | None = None,
        progress: DownloadProgress | None = None,
    ) -> ArtifactDownload:
        """Copy every artifact into the host folder `destination`, safely.

        Only regular files and folders are written, never outside `destination` nor through a
        link; links, special files and unsafe names are listed in `skipped`. Counts and sizes
        are capped (`caps`); past a cap, `UnsafeArchive` is raised.
        """
        return await self._service.download_artifacts(
            self.id, Path(destination), caps=caps, progress=progress
        )

    async def end(self) -> SessionInfo:
        """Remove the container at once and mark the session ended. Later calls raise
        `SessionEnded`; ending again is a no-op."""
        return await self._service.end(self.id)


class AsyncAgent:
    """A named configuration from which sessions are made. For now: sandbox options."""

    def __init__(self, service: SessionService, name: str, options: SandboxOptions) -> None:
        self._service = service
        self.name: str = name
        self.sandbox: SandboxOptions = options

    async def create_session(self, *, title: str | None = None) -> AsyncSessionHandle:
        """Create a session and start its container; returns when it takes commands."""
        info = await self._service.create_session(agent=self.name, title=title,
                                                  options=self.sandbox)
        return AsyncSessionHandle(self._service, info.id)


class AsyncSandboxClient:
    """The entry point. Use it as an async context manager:

        async with AsyncSandboxClient() as client:
            session = await client.agent("build").create_session(title="My Session")

    `store` is the SQLite file (default: `$SANDBOX_SESSIONS_DB`, else the user's state folder).
    `docker_url` is the engine (default: `$DOCKER_HOST`, else the local socket). With
    `reap_orphans`, containers left behind by ended sessions or deleted stores are removed at
    start; an engine that is down then is logged, not raised.
    """

    def __init__(
        self,
        *,
        store: str | os.PathLike[str] | None = None,
        docker_url: str | None = None,
        reap_orphans: bool = True,
    ) -> None:
        self._store_path = store
        self._docker_url = docker_url
        self._reap_orphans = reap_orphans
        self._service: SessionService | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def service(self) -> SessionService:
        if self._service is None:
            raise InvalidArgument("the client is not open: use `async with AsyncSandboxClient()`")
        return self._service

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            store = await anyio.to_thread.run_sync(SQLiteStore, self._store_path)
            stack.push_async_callback(store.aclose)
            engine = Engine(self._docker_url)
            stack.callback(engine.close)  # after the task group: no call uses it any more
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # stops the helper readers
            backend = DockerBackend(engine, task_group=task_group)
            self._service = service = SessionService(store, backend)
            stack.push_async_callback(service.aclose)
            if self._reap_orphans:
                try:
                    await self.gc()
                except SandboxSessionsError as exc:
                    # The text only: a record that kept `exc` would keep its traceback's
                    # frames (and docker-py's unclosed socket) alive in any handler.
                    log.warning("orphan reaping skipped: %s", str(exc))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections and the store. Sessions and their containers live on.

        Call it from the task that opened the client (`async with` does).
        """
        stack, self._stack, self._service = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def agent(
        self, name: str, *, sandbox: SandboxOptions | None = None, **options: Unpack[SandboxKwargs]
    ) -> AsyncAgent:
        """An agent configuration named `name`; keyword options override `sandbox`'s fields."""
        return AsyncAgent(self.service, name, sandbox_options(sandbox, options))

    def session(self, session_id: str) -> AsyncSessionHandle:
        """A handle on an existing session by id. No I/O until it is used; an unknown id then
        raises `SessionNotFound`."""
        return AsyncSessionHandle(self.service, session_id)

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """The sessions of this store, newest first."""
        return await self.service.store.list_sessions(include_ended=include_ended)

    async def gc(self) -> list[str]:
        """Remove orphaned containers (see `SessionService.reap_orphans`); returns their ids."""
        return await self.service.reap_orphans()

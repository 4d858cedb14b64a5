"""Session handles and agents: `AsyncSessionHandle` and `AsyncAgent`.

The one implementation of every session call; `_sync.py` is a blocking facade over it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Self, cast

import anyio

from ._artifacts import DownloadProgress
from ._conversation import Conversations
from ._exceptions import FileDecodeError, InvalidArgument, PermissionNotFound
from ._projection import send_result
from ._types import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_READ,
    AgentConfig,
    ArtifactDownload,
    ArtifactInfo,
    Event,
    FileContent,
    Message,
    Metrics,
    PermissionReply,
    PermissionRequest,
    PermissionRules,
    SandboxOptions,
    SendResult,
    SessionInfo,
    ShellResult,
    Todo,
    ToolPart,
)
from .sandbox._archive import Caps
from .sandbox.base import OutputCallback

__all__ = [
    "AsyncAgent",
    "AsyncSessionHandle",
    "EventCallback",
    "PartCallback",
    "PermissionAnswer",
    "PermissionCallback",
    "TextCallback",
]

TextCallback = Callable[[str], object]
PartCallback = Callable[[ToolPart], object]
EventCallback = Callable[[Event], object]
PermissionAnswer = PermissionReply | tuple[PermissionReply, str]
PermissionCallback = Callable[[PermissionRequest], PermissionAnswer | Awaitable[PermissionAnswer]]
"""Answers a permission request; a sync callback runs in a worker thread (it may block)."""


class _Callbacks:
    def __init__(self, on_text: TextCallback | None, on_reasoning: TextCallback | None,
                 on_tool_start: PartCallback | None, on_tool_end: PartCallback | None,
                 on_permission: PermissionCallback | None, on_event: EventCallback | None):
        self.on_text, self.on_reasoning = on_text, on_reasoning
        self.on_tool_start, self.on_tool_end = on_tool_start, on_tool_end
        self.on_permission, self.on_event = on_permission, on_event

    async def dispatch(self, handle: AsyncSessionHandle, message_id: str, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if event.type == "text-delta" and self.on_text is not None:
            self.on_text(event.delta)
        elif event.type == "reasoning-delta" and self.on_reasoning is not None:
            self.on_reasoning(event.delta)
        elif event.type == "tool-start" and self.on_tool_start is not None:
            self.on_tool_start(event.part)
        elif event.type == "tool-end" and self.on_tool_end is not None:
            self.on_tool_end(event.part)
        elif event.type == "permission-asked" and self.on_permission is not None:
            answer = await _answer(self.on_permission, event.request)
            reply, message = answer if isinstance(answer, tuple) else (answer, None)
            with contextlib.suppress(PermissionNotFound):  # answered meanwhile, or timed out
                await handle.reply_to_permission(event.request.id, reply, message=message)


async def _answer(callback: PermissionCallback, request: PermissionRequest) -> PermissionAnswer:
    if inspect.iscoroutinefunction(callback):
        return cast(PermissionAnswer, await callback(request))
    answer = await anyio.to_thread.run_sync(callback, request)
    if inspect.isawaitable(answer):
        return await answer
    return answer


class AsyncSessionHandle:
    """One session. Cheap to make: it does no I/O until a call needs it.

    As an async context manager it ends the session on exit.
    """

    def __init__(self, conversations: Conversations, session_id: str) -> None:
        self._conversations = conversations
        self._service = conversations.sessions
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
        """The session's record: id, title, status (`busy` while a turn runs, here or in
        another process), times, container, sandbox options and agent config (with its
        permission rules)."""
        info = await self._service.get_info(self.id)
        if info.status == "idle" and (self._conversations.busy(self.id)
                                      or await self._service.turns.running_elsewhere(self.id)):
            info = info.model_copy(update={"status": "busy"})
        return info

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
        At `timeout` seconds (a finite number >= 0; 0 kills the command at once) the command's
        whole process group is killed: `timed_out` is set and `exit_code` is 124. The call
        returns within `timeout` + 6 s whatever the container does; `ContainerDied` if it was
        found stopped or paused (the next call starts it again). Cancelling the call kills the
        process group too.
        """
        return await self._service.shell(self.id, command, timeout=timeout, cwd=cwd, env=env,
                                         max_output=max_output, on_stdout=on_stdout,
                                         on_stderr=on_stderr)

    async def put_file(self, path: str, content: FileContent, *, mode: int | None = None) -> None:
        """Write `content` (text is UTF-8 encoded) to `path` atomically, making folders.

        A relative `path` is taken from the session's workdir.
        """
        await self._service.put_file(self.id, path, content, mode=mode)

    async def get_file(
        self, path: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """A regular file's text (a relative `path` is taken from the workdir).

        `FileDecodeError` when it is not valid in `encoding`; otherwise as `get_file_bytes()`.
        """
        return await self._service.read_text(self.id, path, encoding=encoding, max_bytes=max_bytes)

    async def get_file_bytes(self, path: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """A regular file's bytes (a relative `path` is taken from the workdir).

        At most `max_bytes` come into memory (64 MiB by default): a larger file raises
        `FileTooLarge`, before any of it is sent. Only regular files are read, and never
        through a link: a link (also a link to a folder on the path), a FIFO, a device, a
        socket or a /proc or /sys file raises `SandboxFileNotFound` saying which, at once.
        """
        return await self._service.read_bytes(self.id, path, max_bytes=max_bytes)

    async def list_artifacts(self) -> list[ArtifactInfo]:
        """Every regular file under `/artifacts`, keyed by its path relative to it, sorted.

        Entries whose names are unsafe (not valid UTF-8, or climbing out) are left out, each
        reported as a warning on the `sandbox_sessions` logger.
        """
        return await self._service.list_artifacts(self.id)

    async def get_artifact(
        self, key: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """The text of the artifact `key`; read as `get_file()` reads."""
        data = await self._service.read_artifact(self.id, key, max_bytes=max_bytes)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise FileDecodeError(f"artifact {key} is not valid {encoding}") from exc
        except LookupError as exc:
            raise InvalidArgument(f"unknown encoding {encoding!r}") from exc

    async def get_artifact_bytes(self, key: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """The bytes of the artifact `key`; read as `get_file_bytes()` reads."""
        return await self._service.read_artifact(self.id, key, max_bytes=max_bytes)

    async def download_artifacts(
        self,
        destination: str | os.PathLike[str],
        *,
        caps: Caps | None = None,
        progress: DownloadProgress | None = None,
    ) -> ArtifactDownload:
        """Copy every artifact into the host folder `destination` (made if missing), safely.

        Only regular files and folders are written, never outside `destination` nor through a
        link, and streamed to disk within `caps` (default `Caps()`: 10,000 files, 4 GiB, 2 GiB
        per file). An artifact that cannot be copied is listed in `skipped` with the reason,
        and no file is left for it: a link, FIFO or other special file (also one swapped in
        while the download runs), a name that is unsafe or not UTF-8, one over a cap, or one
        the host cannot write; the others are still copied. `progress(key, done, total)` is
        called after each file. A destination that is a file, cannot be made or is not
        writable raises `InvalidArgument` before anything is copied.
        """
        return await self._service.download_artifacts(
            self.id, destination, caps=caps, progress=progress
        )

    # --- the agent ---------------------------------------------------------------------------

    async def send(
        self,
        prompt: str,
        *,
        on_text: TextCallback | None = None,
        on_reasoning: TextCallback | None = None,
        on_tool_start: PartCallback | None = None,
        on_tool_end: PartCallback | None = None,
        on_permission: PermissionCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> SendResult:
        """Run one turn and return its outcome once its `turn-end` is stored.

        The callbacks see the turn's events in order: text and reasoning deltas, tool calls
        as they start (pending) and end. `on_permission` answers `permission-asked` with
        `"once"`, `"always"`, `"reject"` or `("reject", message)`; it may be async. Without it,
        requests wait for `reply_to_permission()` (or the configured timeout). Cancelling
        `send()` aborts the turn. A turn already running (in this process or another) raises
        `SessionBusy`. If the store cannot take the turn's events, `StoreError` is raised and
        the turn aborted (its events are stored once the store heals).
        """
        callbacks = _Callbacks(on_text, on_reasoning, on_tool_start, on_tool_end,
                               on_permission, on_event)
        start = await self._conversations.start_turn(self.id, prompt)
        try:
            events = self._conversations.subscribe(self.id, after=start.after, strict=True)
            async for event in events:
                await callbacks.dispatch(self, start.message_id, event)
                if event.type == "turn-end" and event.message_id == start.message_id:
                    await start.ended.wait()  # the session is free again when send() returns
                    turn = await self._conversations.messages(self.id, after=start.after)
                    return send_result(turn, event)
        finally:
            if not start.ended.is_set():  # left early (cancelled): abort this turn, not a later one
                with anyio.CancelScope(shield=True):
                    await self._conversations.abort(self.id)
        raise AssertionError("the event log ended")  # pragma: no cover

    async def stream(self, prompt: str) -> AsyncIterator[Event]:
        """Start a turn and yield its events, from its user message to its `turn-end`.

        Leaving the iteration early does not stop the turn; `abort()` does. If the store
        cannot take the turn's events, `StoreError` is raised (the turn goes on).
        """
        start = await self._conversations.start_turn(self.id, prompt)
        events = self._conversations.events.subscribe(self.id, after=start.after, strict=True)
        async for event in events:
            if event.type == "turn-end" and event.message_id == start.message_id:
                await start.ended.wait()  # a consumer may send again as soon as it sees this
                yield event
                return
            yield event

    async def events(self, *, after: int = 0) -> AsyncIterator[Event]:
        """Every event of the session with seq > `after`, stored then live; never ends by
        itself. Resume after a disconnect with the last seq seen: nothing lost or repeated."""
        async for event in self._conversations.subscribe(self.id, after=after):
            yield event

    async def abort(self) -> bool:
        """Stop the running turn: its model stream and its tool's process group. Returns once
        the turn has ended (reason `aborted`); False when no turn was running."""
        return await self._conversations.abort(self.id)

    async def reply_to_permission(
        self, request_id: str, reply: PermissionReply, *, message: str | None = None
    ) -> None:
        """Answer a pending request: `once`, `always` (adds its patterns to the session's
        rules) or `reject` (also rejects the session's other pending requests; with a
        `message` the model gets it and the turn goes on, without one the turn ends with
        reason `rejected`). An unknown or answered request raises `PermissionNotFound`."""
        await self._service.get_info(self.id)
        self._conversations.reply(self.id, request_id, reply, message)

    async def get_messages(self) -> list[Message]:
        """The session's messages with their parts, as the event log projects them."""
        return await self._conversations.messages(self.id)

    async def get_metrics(self) -> Metrics:
        """Messages, steps, tool calls, per-tool usage, tokens and cost so far."""
        return await self._conversations.metrics(self.id)

    async def get_todos(self) -> list[Todo]:
        """The agent's todo list, as its last `todowrite` left it."""
        return await self._conversations.todos(self.id)

    async def update(
        self, *, title: str | None = None, permissions: PermissionRules | None = None
    ) -> SessionInfo:
        """Change the title or replace the permission rules (to revoke an `always`)."""
        return await self._conversations.update(self.id, title=title, permissions=permissions)


    async def end(self) -> SessionInfo:
        """Remove the container at once and mark the session ended. Later calls raise
        `SessionEnded`; ending again is a no-op."""
        return await self._service.end(self.id)


class AsyncAgent:
    """A named configuration from which sessions are made: the agent's model, prompt, tools
    and rules, and the sandbox its sessions run in."""

    def __init__(
        self, conversations: Conversations, name: str, options: SandboxOptions,
        config: AgentConfig,
    ) -> None:
        self._conversations = conversations
        self.name: str = name
        self.sandbox: SandboxOptions = options
        self.config: AgentConfig = config

    async def create_session(self, *, title: str | None = None) -> AsyncSessionHandle:
        """Create a session and start its container; returns when it takes commands."""
        info = await self._conversations.sessions.create_session(
            agent=self.name, title=title, options=self.sandbox, config=self.config)
        return AsyncSessionHandle(self._conversations, info.id)

"""Session handles and agents: `AsyncSessionHandle` and `AsyncAgent`.

The one implementation of every session call; `_sync.py` is a blocking facade over it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar, cast

import anyio

from .._exceptions import (
    CommandFailed,
    FileDecodeError,
    InvalidArgument,
    PermissionNotFound,
    QuestionNotFound,
)
from .._types import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_READ,
    AgentConfig,
    ArtifactDownload,
    ArtifactInfo,
    CommandArguments,
    CommandCall,
    CommandTemplate,
    CreateSessionRequest,
    Event,
    FileContent,
    FileDiff,
    Message,
    Metrics,
    PermissionAnswerRequest,
    PermissionReply,
    PermissionRequest,
    PermissionRules,
    QuestionAnswerRequest,
    QuestionRequest,
    RevertInfo,
    RevertRequest,
    SandboxOptions,
    SendResult,
    SessionInfo,
    ShellCommand,
    ShellOutput,
    ShellResult,
    Todo,
    ToolPart,
    TurnStarted,
    UpdateSessionRequest,
    UploadResult,
)
from .._validation import (
    build,
    check_bytes,
    check_count,
    check_mode,
    check_path,
    check_text,
    check_timeout,
)
from ..sandbox._archive import Caps, printable, unsafe_key_reason
from ..sandbox.base import OutputCallback
from ..service._projection import send_result
from ._commands import COMMAND_TIMEOUT, CommandRegistry, render
from ._download import DownloadProgress, TransferProgress, download, download_path
from ._export import export_session, fork_session
from ._transport import Transport
from ._upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES, upload

__all__ = [
    "AsyncAgent",
    "AsyncSessionHandle",
    "EventCallback",
    "PartCallback",
    "PermissionAnswer",
    "PermissionCallback",
    "QuestionCallback",
    "TextCallback",
]

DOWNLOAD_MAX_BYTES = 4 << 30
"""Bytes one `download()` writes by default (4 GiB)."""
DOWNLOAD_MAX_FILES = 10_000
"""Files one `download()` writes by default."""

R = TypeVar("R")
A = TypeVar("A")
TextCallback = Callable[[str], object]
PartCallback = Callable[[ToolPart], object]
EventCallback = Callable[[Event], object]
PermissionAnswer = PermissionReply | tuple[PermissionReply, str]
PermissionCallback = Callable[[PermissionRequest], PermissionAnswer | Awaitable[PermissionAnswer]]
"""Answers a permission request; a sync callback runs in a worker thread (it may block)."""
QuestionCallback = Callable[[QuestionRequest], str | Awaitable[str]]
"""Answers the agent's question; a sync callback runs in a worker thread (it may block)."""


class _Callbacks:
    def __init__(self, on_text: TextCallback | None, on_reasoning: TextCallback | None,
                 on_tool_start: PartCallback | None, on_tool_end: PartCallback | None,
                 on_permission: PermissionCallback | None, on_event: EventCallback | None,
                 on_question: QuestionCallback | None = None):
        self.on_text, self.on_reasoning = on_text, on_reasoning
        self.on_tool_start, self.on_tool_end = on_tool_start, on_tool_end
        self.on_permission, self.on_event = on_permission, on_event
        self.on_question = on_question

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
        elif event.type == "question-asked" and self.on_question is not None:
            text = await _answer(self.on_question, event.request)
            with contextlib.suppress(QuestionNotFound):  # answered meanwhile, or timed out
                await handle.reply_to_question(event.request.id, text)


async def _answer(callback: Callable[[R], A | Awaitable[A]], request: R) -> A:
    if inspect.iscoroutinefunction(callback):
        return cast(A, await callback(request))
    answer = await anyio.to_thread.run_sync(callback, request)
    if inspect.isawaitable(answer):
        return cast(A, await answer)
    return answer


class AsyncSessionHandle:
    """One session. Cheap to make: it does no I/O until a call needs it.

    As an async context manager it ends the session on exit.
    """

    def __init__(self, transport: Transport, session_id: str, *,
                 commands: CommandRegistry | None = None) -> None:
        self._transport = transport
        self._commands = commands if commands is not None else CommandRegistry()
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
        return await self._transport.get_session(self.id)

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
        check_timeout(timeout)  # the same words as the service, before the model's own
        request = build(ShellCommand, "shell command", command=command, timeout=timeout,
                        cwd=cwd, env=env or {}, max_output=max_output)
        feed = {"stdout": on_stdout, "stderr": on_stderr}

        def on_output(output: ShellOutput) -> None:
            callback = feed[output.stream]
            if callback is not None:
                callback(output.text)

        sink = on_output if on_stdout is not None or on_stderr is not None else None
        return await self._transport.shell(self.id, request, on_output=sink)

    async def put_file(self, path: str, content: FileContent, *, mode: int | None = None) -> None:
        """Write `content` (text is UTF-8 encoded) to `path` atomically, making folders.

        A relative `path` is taken from the session's workdir.
        """
        check_path(path)
        check_mode(mode)
        await self._transport.put_file(self.id, path, check_bytes(content), mode=mode)

    async def get_file(
        self, path: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """A regular file's text (a relative `path` is taken from the workdir).

        `FileDecodeError` when it is not valid in `encoding`; otherwise as `get_file_bytes()`.
        """
        check_text(encoding, "encoding", empty=False)
        data = await self.get_file_bytes(path, max_bytes=max_bytes)
        return _decode(data, path, encoding, "get_file_bytes()")

    async def get_file_bytes(self, path: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """A regular file's bytes (a relative `path` is taken from the workdir).

        At most `max_bytes` come into memory (64 MiB by default): a larger file raises
        `FileTooLarge`, before any of it is sent. Only regular files are read, and never
        through a link: a link (also a link to a folder on the path), a FIFO, a device, a
        socket or a /proc or /sys file raises `SandboxFileNotFound` saying which, at once.
        """
        check_path(path)
        check_count(max_bytes, "max_bytes")
        return await _joined(self._transport.read_file(self.id, path, max_bytes=max_bytes))

    async def list_artifacts(self) -> list[ArtifactInfo]:
        """Every regular file under `/artifacts`, keyed by its path relative to it, sorted.

        Entries whose names are unsafe (not valid UTF-8, or climbing out) are left out, each
        reported as a warning on the `sandbox_sessions` logger.
        """
        return await self._transport.list_artifacts(self.id)

    async def get_artifact(
        self, key: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """The text of the artifact `key`; read as `get_file()` reads."""
        check_text(encoding, "encoding", empty=False)
        data = await self.get_artifact_bytes(key, max_bytes=max_bytes)
        return _decode(data, f"artifact {key}", encoding, "get_artifact_bytes()")

    async def get_artifact_bytes(self, key: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """The bytes of the artifact `key`; read as `get_file_bytes()` reads."""
        check_path(key, "artifact key")
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise InvalidArgument(f"artifact key {printable(key)!r}: {reason}")
        check_count(max_bytes, "max_bytes")
        return await _joined(self._transport.read_artifact(self.id, key, max_bytes=max_bytes))

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
        if not isinstance(destination, str | os.PathLike):
            raise InvalidArgument(
                f"destination must be a path, not {type(destination).__name__}")
        if caps is not None and not isinstance(caps, Caps):
            raise InvalidArgument(f"caps must be a Caps, not {type(caps).__name__}")
        await self._transport.get_session(self.id)  # an unknown or ended session: say so first
        return await download(self._transport, self.id, Path(destination), caps=caps or Caps(),
                              progress=progress)

    async def upload(
        self,
        source: str | os.PathLike[str],
        destination: str = ".",
        *,
        gitignore: bool = True,
        max_bytes: int = MAX_UPLOAD_BYTES,
        max_files: int = MAX_UPLOAD_FILES,
        progress: TransferProgress | None = None,
    ) -> UploadResult:
        """Copy the host file or folder `source` into the sandbox folder `destination` (made
        if missing; a relative one is taken from the workdir, the default): a folder's
        contents, or a file under its own name. Existing files there are overwritten.

        With `gitignore`, what the source's `.gitignore` files ignore (the root's and nested
        ones, git's semantics: negations, folder patterns) is left out; every `.git` is left
        out always (`ignored` counts both). Links below the source are never followed nor
        sent, and FIFOs, sockets and devices are not sent: each is listed in `skipped` with
        the reason, as is a file that changes while it is read. Names are kept exactly;
        modes are 0644, or 0755 for a file its owner may execute.

        More than `max_files` files and folders (20,000) or `max_bytes` bytes of files
        (256 MiB) raises `InvalidArgument` before anything is sent, as does a `source` that
        is missing or not a file or folder (over HTTP, the bridge also caps one archive at
        its `max_upload`, 1 GiB). `progress(bytes_sent, bytes_total)` follows the archive as
        it is sent. `SandboxError` if `tar` cannot unpack it (`destination` is a
        file, the disk is full); the temporary archive is removed in every case.
        """
        source_path = _host_path(source, "source")
        if not isinstance(gitignore, bool):
            raise InvalidArgument(f"gitignore must be a bool, not {type(gitignore).__name__}")
        check_path(destination, "destination")
        check_count(max_bytes, "max_bytes")
        check_count(max_files, "max_files")
        return await upload(self._transport, self.id, source_path, destination,
                            gitignore=gitignore, max_bytes=max_bytes, max_files=max_files,
                            progress=progress)

    async def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        max_bytes: int = DOWNLOAD_MAX_BYTES,
        max_files: int = DOWNLOAD_MAX_FILES,
        progress: TransferProgress | None = None,
    ) -> ArtifactDownload:
        """Copy the sandbox folder `path` (its contents) or file (under its own name) into
        the host folder `destination` (made if missing), as safely as `download_artifacts()`:
        only regular files and folders are written, never outside `destination` nor through
        a link. A link, FIFO or other special file below `path`, an unsafe or not-UTF-8
        name, a file over the caps (`max_files` files, `max_bytes` bytes in all) or one the
        host cannot write is listed in `skipped`, and the rest copied. `path` is relative to
        the workdir unless absolute; `SandboxFileNotFound` when it is missing, is a link (not
        followed) or a special file. `progress(bytes_done, bytes_total)` follows the copy.
        """
        check_path(path)
        target = _host_path(destination, "destination")
        check_count(max_bytes, "max_bytes")
        check_count(max_files, "max_files")
        caps = Caps(max_files=max_files, max_bytes=max_bytes, max_file_bytes=max_bytes)
        return await download_path(self._transport, self.id, path, target, caps=caps,
                                   progress=progress)

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
        on_question: QuestionCallback | None = None,
    ) -> SendResult:
        """Run one turn and return its outcome once its `turn-end` is stored.

        The callbacks see the turn's events in order: text and reasoning deltas, tool calls
        as they start (pending) and end. `on_permission` answers `permission-asked` with
        `"once"`, `"always"`, `"reject"` or `("reject", message)`; it may be async. Without it,
        requests wait for `reply_to_permission()` (or the configured timeout). Cancelling
        `send()` aborts the turn. A turn already running (in this process or another) raises
        `SessionBusy`. If the store cannot take the turn's events, `StoreError` is raised and
        the turn aborted (its events are stored once the store heals). `on_question` answers
        the agent's questions (its `question` tool) with text; it may be async.
        """
        callbacks = _Callbacks(on_text, on_reasoning, on_tool_start, on_tool_end,
                               on_permission, on_event, on_question)
        return await self._turn(prompt, callbacks)

    async def _turn(self, prompt: str, callbacks: _Callbacks, *, model: str | None = None,
                    command: CommandCall | None = None) -> SendResult:
        start = await self._transport.start_turn(self.id, prompt, model=model, command=command)
        return await self._follow(start, callbacks)

    async def summarize(self, *, on_text: TextCallback | None = None,
                        on_event: EventCallback | None = None) -> SendResult:
        """Compact the session: the model (one call, no tools) summarizes the conversation
        (goal, decisions, files, state, next steps); the summary message, with a `compaction`
        part, then stands for everything before it in what later turns send (the messages
        stay in the store). Status is `compacting` meanwhile. Returns the summary as the
        turn's outcome (`text`). `InvalidArgument` when there are no messages yet,
        `SessionBusy` while a turn runs. A turn starts with a compaction by itself when the
        last answer filled the model's context (see `AgentConfig.context_limit`)."""
        start = await self._transport.summarize(self.id)
        return await self._follow(start, _Callbacks(on_text, None, None, None, None, on_event))

    async def _follow(self, start: TurnStarted, callbacks: _Callbacks) -> SendResult:
        """Wait for the turn `start` began to end, feeding `callbacks`; abort it if left."""
        ended = False
        try:
            events = self._transport.events(self.id, after=start.after, strict=True)
            async for event in events:
                await callbacks.dispatch(self, start.message_id, event)
                if event.type == "turn-end" and event.message_id == start.message_id:
                    ended = True
                    turn = await self._transport.messages(self.id, after=start.after)
                    return send_result(turn, event)
        finally:
            if not ended:  # left early (cancelled): abort this turn, not a later one
                with anyio.CancelScope(shield=True):
                    await self._transport.abort(self.id, message_id=start.message_id)
        raise AssertionError("the event log ended")  # pragma: no cover

    async def stream(self, prompt: str) -> AsyncIterator[Event]:
        """Start a turn and yield its events, from its user message to its `turn-end`.

        Leaving the iteration early does not stop the turn; `abort()` does. If the store
        cannot take the turn's events, `StoreError` is raised (the turn goes on). A reader
        left so far behind that a later turn has ended (and the store folded this turn's
        deltas) meanwhile gets a `reset` event with the messages at that point, then the rest.
        """
        start = await self._transport.start_turn(self.id, prompt)
        events = self._transport.events(self.id, after=start.after, strict=True)
        async for event in events:
            yield event
            if event.type == "turn-end" and event.message_id == start.message_id:
                return

    async def events(self, *, after: int = 0) -> AsyncIterator[Event]:
        """Every event of the session with seq > `after`, stored then live; never ends by
        itself. Resume after a disconnect with the last seq seen: nothing lost or repeated.

        The store keeps the text of a session's older turns as one delta event per part
        (its deltas are folded once a later turn ends; seqs then have gaps). A resume from
        inside such a part starts with a `reset` event: the session's messages and todos as
        of its seq, which the events after it continue."""
        async for event in self._transport.events(self.id, after=after):
            yield event

    async def abort(self) -> bool:
        """Stop the running turn: its model stream and its tool's process group. Returns once
        the turn has ended (reason `aborted`); False when no turn was running."""
        return await self._transport.abort(self.id)

    async def reply_to_permission(
        self, request_id: str, reply: PermissionReply, *, message: str | None = None
    ) -> None:
        """Answer a pending request: `once`, `always` (adds its patterns to the session's
        rules) or `reject` (also rejects the session's other pending requests; with a
        `message` the model gets it and the turn goes on, without one the turn ends with
        reason `rejected`). An unknown or answered request raises `PermissionNotFound`."""
        check_text(request_id, "request id")
        answer = build(PermissionAnswerRequest, "permission reply", reply=reply,
                       message=message)
        await self._transport.reply_permission(self.id, request_id, answer)

    async def reply_to_question(self, request_id: str, answer: str) -> None:
        """Answer the agent's pending question (a `question-asked` event's `request.id`).
        An unknown, answered or timed-out question raises `QuestionNotFound`; an empty answer,
        or one not among the options when the question takes no other, `InvalidArgument`
        (the question stays pending)."""
        check_text(request_id, "request id")
        request = build(QuestionAnswerRequest, "answer", answer=answer)
        await self._transport.reply_question(self.id, request_id, request)

    async def get_messages(self, *, hidden: bool = False) -> list[Message]:
        """The session's messages with their parts, as the event log projects them, in the
        order they were created. Those a revert hides are left out unless `hidden`: then
        every message the log holds, dead branches included."""
        return await self._transport.messages(self.id, hidden=hidden)

    async def get_metrics(self) -> Metrics:
        """Messages, steps, tool calls, per-tool usage, tokens and cost so far."""
        return await self._transport.metrics(self.id)

    async def get_todos(self) -> list[Todo]:
        """The agent's todo list, as its last `todowrite` left it."""
        return await self._transport.todos(self.id)

    async def revert(self, message_id: str) -> RevertInfo:
        """Go back to before the user message `message_id`: the container's workdir as it
        was when that message was sent (files created since removed, deleted ones back,
        modified ones restored), and that message and every later one hidden from
        `get_messages()` and from what the model is sent. The log keeps them (a `reverted`
        event), and `unrevert()` brings them back until a new message is sent.

        Files over `AgentConfig.snapshot_max_file` are never snapshotted and are left as
        they are (`RevertInfo.skipped`), as are files the workdir's `.gitignore` ignores.
        `MessageNotFound` for an id the session does not show, `InvalidArgument` for an
        assistant message, `SessionBusy` while a turn runs, `SnapshotError` when the
        message has no snapshot or git fails in the container."""
        check_text(message_id, "message id", empty=False)
        return await self._transport.revert(self.id, RevertRequest(message_id=message_id))

    async def unrevert(self) -> RevertInfo:
        """Undo the last revert (the one returned): its messages are shown again and the
        workdir is as it was before it. `InvalidArgument` when none is pending: sending a
        message after a revert makes it final."""
        return await self._transport.unrevert(self.id)

    async def diff(self, message_id: str | None = None) -> list[FileDiff]:
        """The files of the workdir that differ from when the user message `message_id` was
        sent (by default the session's first message: every change the session made), with
        lines added and removed. Empty before the first message."""
        if message_id is not None:
            check_text(message_id, "message id", empty=False)
        return await self._transport.diff(self.id, message_id=message_id)

    async def update(
        self, *, title: str | None = None, permissions: PermissionRules | None = None,
        archived: bool | None = None, pinned: bool | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> SessionInfo:
        """Change the title, replace the permission rules (to revoke an `always`), archive
        (hide from `list_sessions()`; the session stays usable) or pin the session, or
        replace its metadata (at most 64 keys of `[A-Za-z0-9_.:/-]`, values of at most 1024
        characters). What is left None stays; each change is a `session-updated` event."""
        request = build(UpdateSessionRequest, "update", title=title, permissions=permissions,
                        archived=archived, pinned=pinned,
                        metadata=None if metadata is None else dict(metadata))
        return await self._transport.update_session(self.id, request)


    async def list_commands(self) -> list[CommandTemplate]:
        """The command templates `run_command` knows, by name: those of the user's and the
        project's folders and those added with `client.add_command()` (see `CommandRegistry`).
        A file that is not a valid template is left out, with a warning on the log."""
        return self._commands.list()

    async def run_command(
        self,
        name: str,
        arguments: CommandArguments = None,
        *,
        timeout: float = COMMAND_TIMEOUT,
        on_text: TextCallback | None = None,
        on_permission: PermissionCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> str:
        """Run the command template `name` as one turn; the assistant's final text.

        The prompt is the template with its placeholders filled: `$ARGUMENTS`, `$1`...`$9`
        (from a string, split as a shell would, or a list), `$name` (from a dict), the output
        of each `` !`cmd` `` run in the sandbox (at most `timeout` seconds each; arguments go
        in as quoted words) and each `@path`'s file. The user message records the command
        and its arguments. `CommandNotFound` for an unknown name; `InvalidArgument` for a
        missing named argument or a template that is not valid; `CommandFailed` when a
        `` !`cmd` `` fails or times out (no turn starts then) or the turn ends otherwise
        than completed. Callbacks are those of `send()`.

        A `subtask: true` template runs its prompt in a child session (of its `agent`, one
        of this session's subagents, or of this session's own agent), in a container of its
        own: this session's history gets the prompt and the child's answer only, and the
        child's usage is rolled up into `get_metrics().subtask_tokens`. Placeholders are
        filled from this session's sandbox first. `InvalidArgument` for an agent that cannot
        run it, or past `AgentConfig.max_depth`.
        """
        template = self._commands.get(name)
        subtask = None
        if template.subtask:  # the server checks that this agent may run it
            subtask = template.agent or (await self.get_info()).agent
        elif template.agent is not None:
            agent = (await self.get_info()).agent
            if template.agent != agent:
                raise InvalidArgument(f"command {name!r} is for agent {template.agent!r}; this "
                                      f"session's agent is {agent!r}")
        check_timeout(timeout)

        async def shell(command: str, seconds: float) -> ShellResult:
            return await self.shell(command, timeout=seconds)

        async def read_text(path: str, max_bytes: int) -> str:
            return await self.get_file(path, max_bytes=max_bytes)

        prompt = await render(template, arguments, shell=shell, read_text=read_text,
                              timeout=timeout)
        callbacks = _Callbacks(on_text, None, None, None, on_permission, on_event)
        call = build(CommandCall, "command", name=name, arguments=arguments, subtask=subtask)
        result = await self._turn(prompt, callbacks, model=template.model, command=call)
        if result.reason != "completed":
            raise CommandFailed(name, f"its turn ended {result.reason}"
                                + (f": {result.error}" if result.error else ""))
        return result.text

    async def export(self, path: str | os.PathLike[str], *, workspace: bool = True) -> Path:
        """Write the session to one JSON Lines file (see `client/_export.py` for the format):
        its agent, config, sandbox options and metadata, every message with its parts and,
        with `workspace`, a tar of the workdir. The file appears complete or not at all.
        `client.import_session(path)` makes a new session of it."""
        return await export_session(self._transport, self.id, path, workspace=workspace)

    async def fork(self, message_id: str | None = None, *, workspace: bool = True,
                   title: str | None = None) -> AsyncSessionHandle:
        """A new session (its own container) whose `parent_id` is this one: the same agent,
        config, sandbox options and metadata, this session's history (with `message_id`, the
        messages before it) and a copy of the workdir: as it is now or, with `message_id`,
        as it was when that message's turn began (its user message's snapshot;
        `SnapshotError` when it has none). The two then diverge. If the copy fails, the new
        session is ended."""
        if message_id is not None:
            check_text(message_id, "message id")
        info = await fork_session(self._transport, self.id, message_id=message_id,
                                  workspace=workspace, title=title)
        return AsyncSessionHandle(self._transport, info.id, commands=self._commands)

    async def children(self) -> list[SessionInfo]:
        """The sessions forked from this one that are not ended (archived ones too), newest
        first."""
        return await self._transport.list_sessions(archived=None, parent_id=self.id)

    async def end(self) -> SessionInfo:
        """Remove the container at once and mark the session ended. Later calls raise
        `SessionEnded`; ending again is a no-op."""
        return await self._transport.end_session(self.id)


class AsyncAgent:
    """A named configuration from which sessions are made: the agent's model, prompt, tools
    and rules, and the sandbox its sessions run in."""

    def __init__(
        self, transport: Transport, name: str, options: SandboxOptions, config: AgentConfig,
        *, commands: CommandRegistry | None = None,
    ) -> None:
        self._transport = transport
        self._commands = commands
        self.name: str = name
        self.sandbox: SandboxOptions = options
        self.config: AgentConfig = config

    async def create_session(
        self, *, title: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> AsyncSessionHandle:
        """Create a session and start its container; returns when it takes commands.
        `metadata` labels it for its owner (see `AsyncSessionHandle.update`)."""
        request = build(CreateSessionRequest, "session", agent=self.name, title=title,
                        sandbox=self.sandbox, config=self.config,
                        metadata=dict(metadata or {}))
        info = await self._transport.create_session(request)
        return AsyncSessionHandle(self._transport, info.id, commands=self._commands)


def _host_path(value: object, name: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise InvalidArgument(f"{name} must be a host path, not {value!r:.80}")
    return Path(value)


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def _decode(data: bytes, what: str, encoding: str, instead: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FileDecodeError(
            f"{what} is not valid {encoding} (byte {exc.start}); read it with {instead}") from exc
    except LookupError as exc:
        raise InvalidArgument(f"unknown encoding {encoding!r}") from exc

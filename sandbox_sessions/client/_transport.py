"""The `Transport` protocol: the one seam between the handles and the service.

A session handle holds a transport and nothing else. Two transports implement it:

- in-process (the embedded default): the `SessionService` facade itself, opened over a local
  store and engine;
- HTTP: `HTTPTransport`, which calls `sandbox-sessions serve`, a thin adapter over the same
  facade.

Everything here crosses HTTP: requests and results are the pydantic models of `_types`, bytes
travel as streams, and what cannot cross (waiting for a turn, output callbacks, writing files
on the host) is done by the handle on top of these calls. Every method raises only errors of
our own tree, the same classes whichever transport carries them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from .._types import (
    ArtifactEntry,
    ArtifactInfo,
    CommandCall,
    CreateSessionRequest,
    Event,
    FileDiff,
    ImportMessagesRequest,
    Message,
    Metrics,
    PathEntries,
    PermissionAnswerRequest,
    QuestionAnswerRequest,
    RevertInfo,
    RevertRequest,
    SessionInfo,
    SessionStatus,
    ShellCommand,
    ShellOutput,
    ShellResult,
    Todo,
    TurnStarted,
    UpdateSessionRequest,
)

__all__ = ["OutputSink", "Transport"]

OutputSink = Callable[[ShellOutput], object]
"""Receives a running command's output as it arrives, in order."""


@runtime_checkable
class Transport(Protocol):
    """The session-keyed operations of the service, as a client reaches them."""

    async def create_session(self, request: CreateSessionRequest) -> SessionInfo:
        """Create a session and start its container; return once it takes commands."""
        ...

    async def get_session(self, session_id: str) -> SessionInfo:
        """The session's record, `busy` while a turn runs (in any process)."""
        ...

    async def list_sessions(
        self, *, include_ended: bool = False, archived: bool | None = False,
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """Usable sessions (with `include_ended`, every record), newest first: those whose
        `archived` flag is `archived` (None: either), of `agent`, in `status` (`busy` for a
        turn running anywhere; `ended` or `creating` implies `include_ended`), forked from
        `parent_id`."""
        ...

    async def update_session(
        self, session_id: str, request: UpdateSessionRequest
    ) -> SessionInfo:
        """Change the title, the permission rules, the flags or the metadata; the new
        record."""
        ...

    async def end_session(self, session_id: str) -> SessionInfo:
        """Remove the container and mark the session ended; ending twice is a no-op."""
        ...

    async def shell(
        self, session_id: str, command: ShellCommand, *, on_output: OutputSink | None = None
    ) -> ShellResult:
        """Run a command; its output reaches `on_output` as it comes. Cancelling the call
        kills the command's process group."""
        ...

    async def put_file(
        self, session_id: str, path: str, content: bytes | AsyncIterable[bytes], *,
        mode: int | None = None,
    ) -> None:
        """Write a file atomically (relative paths from the workdir), making its folders."""
        ...

    def read_file(
        self, session_id: str, path: str, *, max_bytes: int
    ) -> AsyncIterator[bytes]:
        """A regular file's bytes in chunks; `FileTooLarge` past `max_bytes`."""
        ...

    async def list_artifacts(self, session_id: str) -> list[ArtifactInfo]:
        """The regular files under `/artifacts` with safe keys, sorted."""
        ...

    async def artifact_entries(self, session_id: str) -> list[ArtifactEntry]:
        """Every entry under `/artifacts`, for a download: those it must skip say why."""
        ...

    async def path_entries(self, session_id: str, path: str) -> PathEntries:
        """A sandbox path (relative ones from the workdir) for a download: a folder with every
        entry below it, walked without following links (those it must skip say why), or a
        regular file; `SandboxFileNotFound` when it is missing, a link or a special file."""
        ...

    def read_artifact(
        self, session_id: str, key: str, *, max_bytes: int
    ) -> AsyncIterator[bytes]:
        """The artifact's bytes in chunks; `FileTooLarge` past `max_bytes`."""
        ...

    async def start_turn(
        self, session_id: str, prompt: str, *, model: str | None = None,
        command: CommandCall | None = None,
    ) -> TurnStarted:
        """Record the prompt and start a turn in the background; `SessionBusy` when one
        runs. A turn whose `turn-end` was published no longer counts as running. `model`
        runs this turn on another model than the session's; `command` is recorded on the
        user message."""
        ...

    async def summarize(self, session_id: str) -> TurnStarted:
        """Start a compaction in the background (a turn with no user message whose answer is
        the summary); `SessionBusy` while a turn runs."""
        ...

    async def abort(self, session_id: str, *, message_id: str | None = None) -> bool:
        """Stop the running turn (only the one of `message_id`, when given); return once it
        has ended, False when none was running."""
        ...

    async def reply_permission(
        self, session_id: str, request_id: str, answer: PermissionAnswerRequest
    ) -> None:
        """Answer a pending permission request; `PermissionNotFound` if it is not pending."""
        ...

    async def revert(self, session_id: str, request: RevertRequest) -> RevertInfo:
        """Put the workspace back as the user message was sent and hide it and what
        follows; `MessageNotFound`, `SessionBusy`, `SnapshotError`."""
        ...

    async def unrevert(self, session_id: str) -> RevertInfo:
        """Undo the pending revert (the one returned); `InvalidArgument` if none is."""
        ...

    async def diff(self, session_id: str, *, message_id: str | None = None) -> list[FileDiff]:
        """The files changed since the user message (the session's first snapshot when
        None)."""
        ...

    async def import_messages(self, session_id: str, request: ImportMessagesRequest) -> int:
        """Append an exported history's messages (new ids, parents mapped), then hide those
        of `request.hidden` for good; how many. Not while a turn runs (`SessionBusy`); an
        id in `hidden` that is not among the messages is `InvalidArgument`."""
        ...

    async def reply_question(
        self, session_id: str, request_id: str, answer: QuestionAnswerRequest
    ) -> None:
        """Answer a pending question; `QuestionNotFound` if it is not pending."""
        ...

    def events(
        self, session_id: str, *, after: int = 0, strict: bool = False
    ) -> AsyncIterator[Event]:
        """The session's events with seq > `after`, stored then live, never ending by
        itself. With `strict`, a store that cannot take the events raises `StoreError`."""
        ...

    def all_events(self, *, after: str | None = None) -> AsyncIterator[tuple[str, Event]]:
        """Every session's events stored after the cursor `after` (None: from now on), each
        with the cursor that resumes right after it; never ending by itself. A malformed
        cursor raises `InvalidArgument`."""
        ...

    async def messages(self, session_id: str, *, after: int = 0, hidden: bool = False
                       ) -> list[Message]:
        """The session's messages (with `after`, those created after that seq), without
        those reverts hide; with `hidden`, every message of the log, in creation order."""
        ...

    async def metrics(self, session_id: str) -> Metrics:
        """What the session's log adds up to."""
        ...

    async def todos(self, session_id: str) -> list[Todo]:
        """The agent's todo list."""
        ...

    async def gc(self) -> list[str]:
        """Remove orphaned containers; their ids."""
        ...

    async def aclose(self) -> None:
        """Release the transport's resources; sessions live on."""
        ...

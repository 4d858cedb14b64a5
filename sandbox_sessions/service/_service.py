"""`SessionService`: the one facade both transports call.

Every operation is keyed by session id and speaks the wire types of `_types`: the in-process
client calls it directly (it is the embedded `Transport`), and the HTTP server is a thin adapter
over it. Behind it, `Sessions` runs the sandbox side (records, containers, files) and `Turns`
the agent side (turns, permissions, what the log projects); neither is reached any other way.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping

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
    ShellResult,
    Todo,
    TurnStarted,
    UpdateSessionRequest,
)
from .._validation import check_text
from ..agent.base import Tool
from ..agent.harness import check_harness_model
from ..sandbox.base import Sandbox, SandboxBackend
from ..store.base import Store
from ._allevents import Cursor, subscribe_all
from ._eventlog import EventLog
from ._rewind import Rewind
from ._sessions import OutputSink, Sessions
from ._turns import Turns

__all__ = ["SessionService"]


class SessionService:
    """Sessions, their sandboxes, files and turns, and their event log, over one store and
    one sandbox backend. Open it with `service.open_service` (or let a client do it)."""

    def __init__(self, sessions: Sessions, turns: Turns, tools: dict[str, Tool]) -> None:
        self._sessions = sessions
        self._turns = turns
        self._rewind = Rewind(turns)
        self._tools = tools

    # --- what the embedded client (and tests) may reach beyond the wire ---------------------

    @property
    def store(self) -> Store:
        """The store sessions and their events live in."""
        return self._sessions.store

    @property
    def backend(self) -> SandboxBackend:
        """The backend that makes the sessions' sandboxes."""
        return self._sessions.backend

    @property
    def log(self) -> EventLog:
        """The event log of every session of the store."""
        return self._sessions.events

    async def sandbox(self, session_id: str) -> Sandbox:
        """The session's live sandbox, connecting to it on first use."""
        return await self._sessions.sandbox(session_id)

    @property
    def tools(self) -> Mapping[str, Tool]:
        """Custom tools registered in this process, by name."""
        return self._tools

    def register_tools(self, tools: Mapping[str, Tool]) -> None:
        """Make custom `Tool` objects available to the sessions of this service (they are
        Python objects: only the in-process transport can carry them)."""
        self._tools.update(tools)

    # --- sessions ------------------------------------------------------------------------

    async def create_session(self, request: CreateSessionRequest) -> SessionInfo:
        """See `Transport.create_session`."""
        check_text(request.agent, "agent name", empty=False)
        if request.title is not None:
            check_text(request.title, "title")
        if request.parent_id is not None:
            await self._sessions.get_info(check_text(request.parent_id, "parent id"))
        check_harness_model(request.config)  # a raw HTTP request is not checked by agent()
        return await self._sessions.create_session(
            agent=request.agent, title=request.title, options=request.sandbox,
            config=request.config, metadata=request.metadata, parent_id=request.parent_id)

    async def get_session(self, session_id: str) -> SessionInfo:
        """See `Transport.get_session`."""
        return await self._status(await self._sessions.get_info(session_id))

    async def _status(self, info: SessionInfo) -> SessionInfo:
        """The record with `busy` for a turn running here or in another process."""
        if info.status == "idle" and (self._turns.busy(info.id)
                                      or await self._sessions.turns.running_elsewhere(info.id)):
            info = info.model_copy(update={"status": "busy"})
        return info

    async def list_sessions(
        self, *, include_ended: bool = False, archived: bool | None = False,
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """See `Transport.list_sessions`."""
        if agent is not None:
            check_text(agent, "agent name")
        every = include_ended or status in ("ended", "creating")
        found = await self._sessions.list_sessions(include_ended=every)
        return [info for info in [await self._status(info) for info in found]
                if (archived is None or info.archived == archived)
                and (agent is None or info.agent == agent)
                and (parent_id is None or info.parent_id == parent_id)
                and (status is None or info.status == status)]

    async def update_session(
        self, session_id: str, request: UpdateSessionRequest
    ) -> SessionInfo:
        """See `Transport.update_session`."""
        return await self._turns.update(session_id, title=request.title,
                                        permissions=request.permissions,
                                        archived=request.archived, pinned=request.pinned,
                                        metadata=request.metadata)

    async def end_session(self, session_id: str) -> SessionInfo:
        """See `Transport.end_session`."""
        ended = await self._sessions.end(session_id)
        self._turns.forget(session_id)
        return ended

    async def gc(self) -> list[str]:
        """See `Transport.gc`."""
        return await self._sessions.reap_orphans()

    # --- the sandbox ---------------------------------------------------------------------

    async def shell(
        self, session_id: str, command: ShellCommand, *, on_output: OutputSink | None = None
    ) -> ShellResult:
        """See `Transport.shell`."""
        return await self._sessions.shell(session_id, command, on_output=on_output)

    async def put_file(
        self, session_id: str, path: str, content: bytes | AsyncIterable[bytes], *,
        mode: int | None = None,
    ) -> None:
        """See `Transport.put_file`."""
        await self._sessions.put_file(session_id, path, content, mode=mode)

    def read_file(
        self, session_id: str, path: str, *, max_bytes: int
    ) -> AsyncIterator[bytes]:
        """See `Transport.read_file`."""
        return self._sessions.read_file(session_id, path, max_bytes=max_bytes)

    async def list_artifacts(self, session_id: str) -> list[ArtifactInfo]:
        """See `Transport.list_artifacts`."""
        return await self._sessions.list_artifacts(session_id)

    async def artifact_entries(self, session_id: str) -> list[ArtifactEntry]:
        """See `Transport.artifact_entries`."""
        return await self._sessions.artifact_entries(session_id)

    async def path_entries(self, session_id: str, path: str) -> PathEntries:
        """See `Transport.path_entries`."""
        return await self._sessions.path_entries(session_id, path)

    def read_artifact(
        self, session_id: str, key: str, *, max_bytes: int
    ) -> AsyncIterator[bytes]:
        """See `Transport.read_artifact`."""
        return self._sessions.read_artifact(session_id, key, max_bytes=max_bytes)

    # --- turns and the log ---------------------------------------------------------------

    async def start_turn(
        self, session_id: str, prompt: str, *, model: str | None = None,
        command: CommandCall | None = None,
    ) -> TurnStarted:
        """See `Transport.start_turn`."""
        return await self._turns.start_turn(session_id, prompt, model=model, command=command)

    async def summarize(self, session_id: str) -> TurnStarted:
        """See `Transport.summarize`."""
        return await self._turns.summarize(session_id)

    async def abort(self, session_id: str, *, message_id: str | None = None) -> bool:
        """See `Transport.abort`."""
        return await self._turns.abort(session_id, message_id=message_id)

    async def reply_permission(
        self, session_id: str, request_id: str, answer: PermissionAnswerRequest
    ) -> None:
        """See `Transport.reply_permission`."""
        await self._turns.reply(session_id, request_id, answer)

    async def revert(self, session_id: str, request: RevertRequest) -> RevertInfo:
        """See `Transport.revert`."""
        return await self._rewind.revert(session_id, request.message_id)

    async def unrevert(self, session_id: str) -> RevertInfo:
        """See `Transport.unrevert`."""
        return await self._rewind.unrevert(session_id)

    async def diff(self, session_id: str, *, message_id: str | None = None) -> list[FileDiff]:
        """See `Transport.diff`."""
        return await self._rewind.diff(session_id, message_id)

    async def import_messages(self, session_id: str, request: ImportMessagesRequest) -> int:
        """See `Transport.import_messages`."""
        return await self._rewind.import_messages(session_id, request.messages,
                                                 hidden=request.hidden)

    async def reply_question(
        self, session_id: str, request_id: str, answer: QuestionAnswerRequest
    ) -> None:
        """See `Transport.reply_question`."""
        await self._turns.answer_question(session_id, request_id, answer)

    def events(
        self, session_id: str, *, after: int = 0, strict: bool = False
    ) -> AsyncIterator[Event]:
        """See `Transport.events`."""
        return self._turns.subscribe(session_id, after=after, strict=strict)

    def all_events(self, *, after: str | None = None) -> AsyncIterator[tuple[str, Event]]:
        """See `Transport.all_events`."""
        start = None if after is None else Cursor.parse(after)  # a bad cursor fails here
        return self._all_events(start)

    async def _all_events(self, start: Cursor | None) -> AsyncIterator[tuple[str, Event]]:
        async for cursor, event in subscribe_all(self.log, after=start):
            yield str(cursor), event

    async def events_cursor(self) -> str:
        """The global stream's cursor now: `all_events(after=)` it gives what comes next."""
        return str(Cursor(await self.log.store.last_position()))

    async def messages(self, session_id: str, *, after: int = 0, hidden: bool = False
                       ) -> list[Message]:
        """See `Transport.messages`."""
        return await self._turns.messages(session_id, after=after, hidden=hidden)

    async def metrics(self, session_id: str) -> Metrics:
        """See `Transport.metrics`."""
        return await self._turns.metrics(session_id)

    async def todos(self, session_id: str) -> list[Todo]:
        """See `Transport.todos`."""
        return await self._turns.todos(session_id)

    async def abort_all(self) -> None:
        """Abort every turn running in this process; each stores its `turn-end` first."""
        await self._turns.aclose()

    async def aclose(self) -> None:
        """Nothing to do: `open_service` closes what it opened."""

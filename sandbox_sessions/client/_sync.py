"""The blocking facade: `SandboxClient`, `Agent` and `SessionHandle`.

Each call runs the async core's method on an event loop in a background thread, through an
anyio `BlockingPortal`. There is no second implementation: every method forwards.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._exceptions import InvalidArgument
from .._types import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_READ,
    AgentConfig,
    ArtifactDownload,
    ArtifactInfo,
    CommandArguments,
    CommandTemplate,
    Event,
    FileContent,
    FileDiff,
    HarnessName,
    Message,
    Metrics,
    PermissionReply,
    PermissionRules,
    RevertInfo,
    SandboxOptions,
    SendResult,
    SessionInfo,
    SessionStatus,
    ShellResult,
    SubagentLike,
    Todo,
    UploadResult,
)
from ..agent._pricing import Price
from ..agent.base import Tool
from ..sandbox._archive import Caps
from ..sandbox.base import OutputCallback, SandboxBackend
from ..store.base import Store
from ._client import AsyncSandboxClient, SandboxKwargs
from ._commands import COMMAND_TIMEOUT
from ._download import DownloadProgress, TransferProgress
from ._session import (
    DOWNLOAD_MAX_BYTES,
    DOWNLOAD_MAX_FILES,
    AsyncAgent,
    AsyncSessionHandle,
    EventCallback,
    PartCallback,
    PermissionCallback,
    QuestionCallback,
    TextCallback,
)
from ._upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES

__all__ = ["Agent", "SandboxClient", "SessionHandle"]


def _blocking_iter(portal: BlockingPortal, events: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator of the event loop thread from this thread, item by item."""
    try:
        while True:
            try:
                yield portal.call(events.__anext__)
            except StopAsyncIteration:
                return
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            portal.call(close)

T = TypeVar("T")


class SessionHandle:
    """The blocking twin of `AsyncSessionHandle`; see there for each call's promises.

    As a context manager it ends the session on exit.
    """

    def __init__(self, portal: BlockingPortal, handle: AsyncSessionHandle) -> None:
        self._portal = portal
        self._async = handle
        self.id: str = handle.id

    def __repr__(self) -> str:
        return f"<SessionHandle {self.id}>"

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return await fn(*args, **kwargs)

        return self._portal.call(run)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    def get_info(self) -> SessionInfo:
        """The session's record; see `AsyncSessionHandle.get_info`."""
        return self._call(self._async.get_info)

    def shell(
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
        """Run a command in the container and wait; see `AsyncSessionHandle.shell`."""
        return self._call(self._async.shell, command, timeout=timeout, cwd=cwd, env=env,
                          max_output=max_output, on_stdout=on_stdout,
                          on_stderr=on_stderr)

    def put_file(self, path: str, content: FileContent, *, mode: int | None = None) -> None:
        """Write a file atomically; see `AsyncSessionHandle.put_file`."""
        self._call(self._async.put_file, path, content, mode=mode)

    def get_file(
        self, path: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """A file's text; see `AsyncSessionHandle.get_file`."""
        return self._call(self._async.get_file, path, encoding=encoding, max_bytes=max_bytes)

    def get_file_bytes(self, path: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """A file's bytes; see `AsyncSessionHandle.get_file_bytes`."""
        return self._call(self._async.get_file_bytes, path, max_bytes=max_bytes)

    def list_artifacts(self) -> list[ArtifactInfo]:
        """Every artifact, sorted by key; see `AsyncSessionHandle.list_artifacts`."""
        return self._call(self._async.list_artifacts)

    def get_artifact(
        self, key: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ
    ) -> str:
        """An artifact's text; see `AsyncSessionHandle.get_artifact`."""
        return self._call(self._async.get_artifact, key, encoding=encoding, max_bytes=max_bytes)

    def get_artifact_bytes(self, key: str, *, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """An artifact's bytes; see `AsyncSessionHandle.get_artifact_bytes`."""
        return self._call(self._async.get_artifact_bytes, key, max_bytes=max_bytes)

    def download_artifacts(
        self,
        destination: str | os.PathLike[str],
        *,
        caps: Caps | None = None,
        progress: DownloadProgress | None = None,
    ) -> ArtifactDownload:
        """Copy every artifact to a host folder; see `AsyncSessionHandle.download_artifacts`."""
        return self._call(self._async.download_artifacts, destination, caps=caps,
                          progress=progress)

    def upload(
        self,
        source: str | os.PathLike[str],
        destination: str = ".",
        *,
        gitignore: bool = True,
        max_bytes: int = MAX_UPLOAD_BYTES,
        max_files: int = MAX_UPLOAD_FILES,
        progress: TransferProgress | None = None,
    ) -> UploadResult:
        """Copy a host file or folder into the sandbox; see `AsyncSessionHandle.upload`."""
        return self._call(self._async.upload, source, destination, gitignore=gitignore,
                          max_bytes=max_bytes, max_files=max_files, progress=progress)

    def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        max_bytes: int = DOWNLOAD_MAX_BYTES,
        max_files: int = DOWNLOAD_MAX_FILES,
        progress: TransferProgress | None = None,
    ) -> ArtifactDownload:
        """Copy a sandbox file or folder to a host folder; see `AsyncSessionHandle.download`."""
        return self._call(self._async.download, path, destination, max_bytes=max_bytes,
                          max_files=max_files, progress=progress)

    def send(
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
        """Run one turn and return its outcome; see `AsyncSessionHandle.send`."""
        return self._call(self._async.send, prompt, on_text=on_text, on_reasoning=on_reasoning,
                          on_tool_start=on_tool_start, on_tool_end=on_tool_end,
                          on_permission=on_permission, on_event=on_event,
                          on_question=on_question)

    def stream(self, prompt: str) -> Iterator[Event]:
        """Start a turn and iterate its events; see `AsyncSessionHandle.stream`."""
        return _blocking_iter(self._portal, self._async.stream(prompt))

    def events(self, *, after: int = 0) -> Iterator[Event]:
        """The session's events, stored then live; see `AsyncSessionHandle.events`."""
        return _blocking_iter(self._portal, self._async.events(after=after))

    def abort(self) -> bool:
        """Stop the running turn; see `AsyncSessionHandle.abort`."""
        return self._call(self._async.abort)

    def reply_to_permission(
        self, request_id: str, reply: PermissionReply, *, message: str | None = None
    ) -> None:
        """Answer a pending request; see `AsyncSessionHandle.reply_to_permission`."""
        self._call(self._async.reply_to_permission, request_id, reply, message=message)

    def summarize(self, *, on_text: TextCallback | None = None,
                  on_event: EventCallback | None = None) -> SendResult:
        """Compact the session; see `AsyncSessionHandle.summarize`."""
        return self._call(self._async.summarize, on_text=on_text, on_event=on_event)

    def reply_to_question(self, request_id: str, answer: str) -> None:
        """Answer a pending question; see `AsyncSessionHandle.reply_to_question`."""
        self._call(self._async.reply_to_question, request_id, answer)

    def get_messages(self, *, hidden: bool = False) -> list[Message]:
        """The messages with their parts; see `AsyncSessionHandle.get_messages`."""
        return self._call(self._async.get_messages, hidden=hidden)

    def get_metrics(self) -> Metrics:
        """Counts, tokens and cost; see `AsyncSessionHandle.get_metrics`."""
        return self._call(self._async.get_metrics)

    def get_todos(self) -> list[Todo]:
        """The agent's todo list; see `AsyncSessionHandle.get_todos`."""
        return self._call(self._async.get_todos)

    def revert(self, message_id: str) -> RevertInfo:
        """Go back to before a user message; see `AsyncSessionHandle.revert`."""
        return self._call(self._async.revert, message_id)

    def unrevert(self) -> RevertInfo:
        """Undo the last revert; see `AsyncSessionHandle.unrevert`."""
        return self._call(self._async.unrevert)

    def diff(self, message_id: str | None = None) -> list[FileDiff]:
        """The files changed; see `AsyncSessionHandle.diff`."""
        return self._call(self._async.diff, message_id)

    def update(
        self, *, title: str | None = None, permissions: PermissionRules | None = None,
        archived: bool | None = None, pinned: bool | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> SessionInfo:
        """Change the record; see `AsyncSessionHandle.update`."""
        return self._call(self._async.update, title=title, permissions=permissions,
                          archived=archived, pinned=pinned, metadata=metadata)

    def list_commands(self) -> list[CommandTemplate]:
        """The command templates; see `AsyncSessionHandle.list_commands`."""
        return self._call(self._async.list_commands)

    def run_command(
        self,
        name: str,
        arguments: CommandArguments = None,
        *,
        timeout: float = COMMAND_TIMEOUT,
        on_text: TextCallback | None = None,
        on_permission: PermissionCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> str:
        """Run a command template as one turn; see `AsyncSessionHandle.run_command`."""
        return self._call(self._async.run_command, name, arguments, timeout=timeout,
                          on_text=on_text, on_permission=on_permission, on_event=on_event)

    def export(self, path: str | os.PathLike[str], *, workspace: bool = True) -> Path:
        """Write the session to a JSON Lines file; see `AsyncSessionHandle.export`."""
        return self._call(self._async.export, path, workspace=workspace)

    def fork(self, message_id: str | None = None, *, workspace: bool = True,
             title: str | None = None) -> SessionHandle:
        """A new session forked from this one; see `AsyncSessionHandle.fork`."""
        handle = self._call(self._async.fork, message_id, workspace=workspace, title=title)
        return SessionHandle(self._portal, handle)

    def children(self) -> list[SessionInfo]:
        """The sessions forked from this one; see `AsyncSessionHandle.children`."""
        return self._call(self._async.children)

    def end(self) -> SessionInfo:
        """Remove the container and mark the session ended; see `AsyncSessionHandle.end`."""
        return self._call(self._async.end)


class Agent:
    """The blocking twin of `AsyncAgent`."""

    def __init__(self, portal: BlockingPortal, agent: AsyncAgent) -> None:
        self._portal = portal
        self._async = agent
        self.name: str = agent.name
        self.sandbox: SandboxOptions = agent.sandbox
        self.config: AgentConfig = agent.config

    def create_session(
        self, *, title: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> SessionHandle:
        """Create a session and start its container; see `AsyncAgent.create_session`."""
        handle = self._portal.call(lambda: self._async.create_session(title=title,
                                                                      metadata=metadata))
        return SessionHandle(self._portal, handle)


class SandboxClient:
    """The blocking twin of `AsyncSandboxClient`. Use it as a context manager:

        with SandboxClient() as client:
            session = client.agent("build").create_session(title="My Session")
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token: str | None = None,
        store: Store | str | os.PathLike[str] | None = None,
        backend: SandboxBackend | None = None,
        docker_url: str | None = None,
        reap_orphans: bool = True,
        api_keys: Mapping[str, str] | None = None,
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self._async = AsyncSandboxClient(
            base_url=base_url, token=token, store=store, backend=backend,
            docker_url=docker_url, reap_orphans=reap_orphans, api_keys=api_keys, prices=prices,
        )
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    @property
    def portal(self) -> BlockingPortal:
        """The portal to the event loop thread; `InvalidArgument` when the client is closed."""
        if self._portal is None:
            raise InvalidArgument("the client is not open: use `with SandboxClient()`")
        return self._portal

    def __enter__(self) -> Self:
        with ExitStack() as stack:
            portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
            self._portal = stack.enter_context(portal_cm)
            stack.enter_context(self._portal.wrap_async_context_manager(self._async))
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close connections, the store and the event loop thread. Sessions live on."""
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    def agent(
        self,
        name: str,
        *,
        harness: HarnessName | None = None,
        model: str | None = None,
        system: str | None = None,
        tools: Sequence[str | Tool] | None = None,
        permissions: PermissionRules | None = None,
        script: list[dict[str, Any]] | str | None = None,
        max_steps: int | None = None,
        token_budget: int | None = None,
        subagents: Mapping[str, SubagentLike] | None = None,
        config: AgentConfig | None = None,
        sandbox: SandboxOptions | None = None,
        **options: Unpack[SandboxKwargs],
    ) -> Agent:
        """An agent configuration; see `AsyncSandboxClient.agent`."""
        agent = self._async.agent(name, harness=harness, model=model, system=system,
                                  tools=tools,
                                  permissions=permissions, script=script, max_steps=max_steps,
                                  token_budget=token_budget,
                                  subagents=subagents, config=config, sandbox=sandbox, **options)
        return Agent(self.portal, agent)

    def session(self, session_id: str) -> SessionHandle:
        """A handle on an existing session by id, with no I/O until used."""
        return SessionHandle(self.portal, self._async.session(session_id))

    def list_sessions(
        self, *, include_ended: bool = False, archived: bool | None = False,
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """The sessions of this store, newest first; see `AsyncSandboxClient.list_sessions`."""
        return self.portal.call(lambda: self._async.list_sessions(
            include_ended=include_ended, archived=archived, agent=agent, status=status,
            parent_id=parent_id))

    def events(self, *, after: str | None = None) -> Iterator[tuple[str, Event]]:
        """Every session's events with their cursors; see `AsyncSandboxClient.events`."""
        return _blocking_iter(self.portal, self._async.events(after=after))

    def add_command(
        self, name: str, template: str, *, description: str | None = None,
        agent: str | None = None, model: str | None = None,
    ) -> CommandTemplate:
        """Register a command template; see `AsyncSandboxClient.add_command`."""
        return self._async.add_command(name, template, description=description, agent=agent,
                                       model=model)

    def import_session(self, path: str | os.PathLike[str], *, title: str | None = None
                       ) -> SessionHandle:
        """A new session made from an export; see `AsyncSandboxClient.import_session`."""
        handle = self.portal.call(lambda: self._async.import_session(path, title=title))
        return SessionHandle(self.portal, handle)

    def list_commands(self) -> list[CommandTemplate]:
        """The command templates; see `AsyncSandboxClient.list_commands`."""
        return self.portal.call(self._async.list_commands)

    def gc(self) -> list[str]:
        """Remove orphaned containers; returns their ids."""
        return self.portal.call(self._async.gc)

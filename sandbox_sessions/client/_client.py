"""The async client, `AsyncSandboxClient`: agents and sessions, over a transport.

This is the one implementation; `SandboxClient` in `_sync.py` is a blocking facade over it.
The client opens a transport and hands it to the handles: in-process (the embedded default:
a `SessionService` over a local store and engine) or, with `base_url`, HTTP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack, get_args

import anyio
from pydantic import ValidationError

from .._exceptions import InvalidArgument, SandboxSessionsError
from .._tokens import default_token_path, load_token
from .._types import (
    AGENTS_IMAGE,
    AgentConfig,
    CommandTemplate,
    Event,
    HarnessName,
    PermissionRules,
    SandboxOptions,
    SessionInfo,
    SessionStatus,
    Subagent,
    SubagentLike,
)
from .._validation import build, check_text
from ..agent._permissions import validate_rules
from ..agent._pricing import Price
from ..agent._tools import agent_tools, check_rule_keys
from ..agent.base import Tool
from ..providers._scripted import ScriptedProvider
from ..sandbox.base import SandboxBackend
from ..service._allevents import Cursor
from ..service._open import open_service
from ..service._service import SessionService
from ..store.base import Store
from ._commands import CommandRegistry, check_name
from ._export import import_session
from ._http import HTTPTransport
from ._session import AsyncAgent, AsyncSessionHandle
from ._transport import Transport

__all__ = ["AsyncSandboxClient", "SandboxKwargs"]

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
    disk: str


def sandbox_options(base: SandboxOptions | None, overrides: SandboxKwargs) -> SandboxOptions:
    """`base` (or the defaults) with `overrides` applied; `InvalidArgument` when invalid."""
    options: SandboxOptions = _validated(SandboxOptions, base or SandboxOptions(),
                                         dict(overrides), "sandbox options")
    return options


def _validated(kind: Any, base: Any, overrides: dict[str, Any], what: str) -> Any:
    fields = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid {what}: {exc}") from exc


def _subagent(agent: SubagentLike) -> Subagent:
    if isinstance(agent, Subagent):
        return agent
    config, sandbox = getattr(agent, "config", None), getattr(agent, "sandbox", None)
    if isinstance(config, AgentConfig) and isinstance(sandbox, SandboxOptions):
        return Subagent(config=config, sandbox=sandbox)
    raise InvalidArgument(f"a subagent is an agent() or a Subagent, not {type(agent).__name__}")


class AsyncSandboxClient:
    """The entry point. Use it as an async context manager:

        async with AsyncSandboxClient() as client:
            session = await client.agent("build").create_session(title="My Session")

    With `base_url` (default: `$SANDBOX_SESSIONS_URL`), it talks to a `sandbox-sessions serve`
    bridge with the bearer `token` (default: `$SANDBOX_SESSIONS_TOKEN`, else the server's
    token file): every call, result and error is the same as embedded, but custom `Tool`
    objects (which run in this process) are refused. Embedded (the default), it runs sessions
    itself: `store` is a `Store` or the path of a
    SQLite file (default: `$SANDBOX_SESSIONS_DB`, else the user's state folder); `backend` is a
    `SandboxBackend` (default: Docker on `docker_url`, else `$DOCKER_HOST` or the local
    socket). A `Store` passed in is left open; a backend that is an async context manager
    (such as an unopened `DockerBackend`) is entered with the client and exited with it.
    With `reap_orphans`, containers left behind by ended sessions or deleted stores are
    removed at start; an engine that is down then is logged, not raised.
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
        self._base_url = base_url if base_url is not None else os.environ.get(
            "SANDBOX_SESSIONS_URL") or None
        self._token = token
        self._options: dict[str, Any] = {
            "store": store, "backend": backend, "docker_url": docker_url,
            "reap_orphans": reap_orphans, "api_keys": api_keys, "prices": prices}
        self._transport: Transport | None = None
        self._stack: AsyncExitStack | None = None
        self._commands = CommandRegistry()

    def _opened(self) -> Transport:
        if self._transport is None:
            raise InvalidArgument("the client is not open: use `async with AsyncSandboxClient()`")
        return self._transport

    @property
    def service(self) -> SessionService:
        """The embedded service (in-process only): its store, backend and sandboxes."""
        transport = self._opened()
        if not isinstance(transport, SessionService):
            raise InvalidArgument("this client talks to a server: it has no embedded service")
        return transport

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            if self._base_url is None:
                self._transport = await stack.enter_async_context(open_service(**self._options))
            else:
                transport = HTTPTransport(self._base_url, self._bridge_token())
                stack.push_async_callback(transport.aclose)
                self._transport = transport
            self._stack = stack.pop_all()
        return self

    def _bridge_token(self) -> str:
        if self._token is not None:
            return self._token
        return os.environ.get("SANDBOX_SESSIONS_TOKEN") or load_token(
            default_token_path(), create=False)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections and the store. Sessions and their containers live on.

        Running turns are aborted (each ends with its `turn-end`, stored); calls still running
        in other tasks (shell commands, streams, downloads) fail with errors of this library.
        Never raises anything but a `SandboxSessionsError` (or the caller's cancellation).
        Call it from the task that opened the client (`async with` does).
        """
        stack, self._stack, self._transport = self._stack, None, None
        if stack is None:
            return
        try:
            await stack.aclose()
        except BaseExceptionGroup as group:
            _, failures = group.split(anyio.get_cancelled_exc_class())
            if failures is None:
                raise
            log.error("closing the client", exc_info=failures)
            raise SandboxSessionsError(
                f"closing the client failed: {_first(failures)!r}") from failures

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
    ) -> AsyncAgent:
        """An agent named `name`: what runs its turns (`harness`: `builtin`, our loop, by
        default; or `claude-code`, `codex`, `opencode`, that CLI inside the sandbox, whose
        image is then `AGENTS_IMAGE` unless one is given), its model (`provider/model`),
        system prompt, tools (names of
        built-in tools, or `Tool` objects), permission rules, for `scripted` its script, and
        its budgets: `max_steps` model calls per turn, `token_budget` tokens for the session
        (a turn that reaches either ends with reason `limit`). `subagents` are the agents its
        `task` tool may hand work to, by name (each `agent()` of this client, or a
        `Subagent`); each subtask runs in a child session of its own.
        `config` gives every `AgentConfig` field at once; the keywords override it. Keyword
        sandbox options (`image`, `network`, `memory`, ...) override `sandbox`'s fields.

        Everything is checked here, before anything is registered: an unknown tool name, a
        custom tool named like a built-in or like another tool registered on this client, and
        a permission rule whose top-level key is not `"*"`, a built-in tool or one of the
        agent's tools raise `InvalidArgument`. `Tool` objects are registered on the client by
        name, for every session this client runs (register them again in a new process)."""
        transport = self._opened()
        registered = transport.tools if isinstance(transport, SessionService) else {}
        chosen = tools if tools is not None else (config or AgentConfig()).tools
        names, custom = agent_tools(chosen, registered=registered)
        if custom and not isinstance(transport, SessionService):
            raise InvalidArgument("custom Tool objects run in this process: they need the "
                                  "embedded client, not a server")
        overrides = {"harness": harness, "model": model, "system": system, "tools": names,
                     "permissions": permissions, "script": script, "max_steps": max_steps,
                     "token_budget": token_budget,
                     "subagents": None if subagents is None else {
                         check_text(key, "subagent name", empty=False): _subagent(value)
                         for key, value in subagents.items()}}
        agent_config = _validated(AgentConfig, config or AgentConfig(), overrides, "agent")
        if agent_config.permissions:
            validate_rules(agent_config.permissions)
            check_rule_keys(agent_config.permissions, agent_config.tools)
        if agent_config.script is not None:
            ScriptedProvider(agent_config.script)  # a malformed script fails here, not later
        if agent_config.harness != "builtin":
            if custom:
                raise InvalidArgument("custom Tool objects run in our loop: a "
                                      f"{agent_config.harness} agent cannot use them")
            if agent_config.model is not None:
                from ..agent.harness import harness as bridge  # the service imports it first

                bridge(agent_config.harness).check_model(agent_config.model)
            if "image" not in options and (sandbox is None or "image" not in
                                           sandbox.model_fields_set):
                options = {**options, "image": AGENTS_IMAGE}
        options_checked = sandbox_options(sandbox, options)
        if isinstance(transport, SessionService):
            transport.register_tools(custom)
        return AsyncAgent(transport, name, options_checked, agent_config,
                          commands=self._commands)

    def session(self, session_id: str) -> AsyncSessionHandle:
        """A handle on an existing session by id. No I/O until it is used; an unknown id then
        raises `SessionNotFound`."""
        check_text(session_id, "session id", empty=False)
        return AsyncSessionHandle(self._opened(), session_id, commands=self._commands)

    async def list_sessions(
        self, *, include_ended: bool = False, archived: bool | None = False,
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """The usable sessions of this store, newest first; with `include_ended`, every
        record, ended ones and ones still being created (`creating`) included. Archived
        sessions are left out unless `archived` is True (only them) or None (both); `agent`,
        `status` (`busy` while a turn runs anywhere) and `parent_id` (forks of that session)
        filter too. Turns left open by a
        process that died are closed first."""
        if agent is not None:
            check_text(agent, "agent name")
        if parent_id is not None:
            check_text(parent_id, "parent id")
        if archived is not None and not isinstance(archived, bool):
            raise InvalidArgument("archived must be True, False or None")
        if status is not None and status not in get_args(SessionStatus):
            raise InvalidArgument(f"status must be one of {', '.join(get_args(SessionStatus))}")
        return await self._opened().list_sessions(include_ended=include_ended,
                                                  archived=archived, agent=agent,
                                                  status=status, parent_id=parent_id)

    def events(self, *, after: str | None = None) -> AsyncIterator[tuple[str, Event]]:
        """Every session's events, each with its cursor: those stored after the cursor
        `after`, else those from now on; never ends by itself. Resume after a disconnect (or in
        another process) with the last cursor seen: nothing lost or repeated."""
        if after is not None:  # checked here: a bad cursor fails alike over both transports
            Cursor.parse(check_text(after, "event cursor", empty=False))
        return self._opened().all_events(after=after)

    def add_command(
        self, name: str, template: str, *, description: str | None = None,
        agent: str | None = None, model: str | None = None,
    ) -> CommandTemplate:
        """Register a command template for this client's sessions (`run_command(name)`); it
        hides a file of the same name. `name` is words joined by `/` (`team/review`)."""
        command = build(CommandTemplate, "command template", name=check_name(name),
                        template=check_text(template, "template"), description=description,
                        agent=agent, model=model)
        self._commands.add(command)
        return command

    async def import_session(
        self, path: str | os.PathLike[str], *, title: str | None = None
    ) -> AsyncSessionHandle:
        """A new session made from an export (`session.export(path)`): the same agent, config,
        sandbox options and metadata, its history (new message ids) and, when the file holds a
        complete one, its workspace. A file of another format or version, or a malformed
        line, is an `InvalidArgument` and makes nothing; a torn last line is left out with a
        warning. If the import fails half way, the new session is ended."""
        info = await import_session(self._opened(), path, title=title)
        return AsyncSessionHandle(self._opened(), info.id, commands=self._commands)

    async def list_commands(self) -> list[CommandTemplate]:
        """The command templates this client's sessions can run, by name (see
        `AsyncSessionHandle.list_commands`)."""
        return self._commands.list()

    async def gc(self) -> list[str]:
        """Remove orphaned containers: of this store, those whose session is ended, unknown,
        or was being created by a process that is gone; and those of deleted stores. A live or
        starting session's container is never removed. Returns their ids."""
        return await self._opened().gc()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error

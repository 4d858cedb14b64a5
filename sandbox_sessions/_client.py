"""The async client, `AsyncSandboxClient`: the store, the engine, the event log, the agents.

This is the one implementation; `SandboxClient` in `_sync.py` is a blocking facade over it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import anyio
import httpx
from pydantic import ValidationError

from ._conversation import Conversations
from ._eventlog import EventLog
from ._exceptions import InvalidArgument, SandboxSessionsError
from ._service import SessionService
from ._session import AsyncAgent, AsyncSessionHandle
from ._types import AgentConfig, PermissionRules, SandboxOptions, SessionInfo
from .agent._permissions import validate_rules
from .agent._pricing import DEFAULT_PRICES, Price
from .agent._tools import agent_tools, check_rule_keys
from .agent.base import Tool
from .providers._scripted import ScriptedProvider
from .sandbox._engine import Engine
from .sandbox.docker import DockerBackend
from .store._sqlite import SQLiteStore

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
        api_keys: Mapping[str, str] | None = None,
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self._store_path = store
        self._docker_url = docker_url
        self._reap_orphans = reap_orphans
        self._api_keys = dict(api_keys or {})
        self._prices = {**DEFAULT_PRICES, **(prices or {})}
        self._tools: dict[str, Tool] = {}
        self._conversations: Conversations | None = None
        self._stack: AsyncExitStack | None = None

    def _opened(self) -> Conversations:
        if self._conversations is None:
            raise InvalidArgument("the client is not open: use `async with AsyncSandboxClient()`")
        return self._conversations

    @property
    def service(self) -> SessionService:
        return self._opened().sessions

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            store = await anyio.to_thread.run_sync(SQLiteStore, self._store_path)
            stack.push_async_callback(store.aclose)
            engine = Engine(self._docker_url)
            stack.callback(engine.close)  # after the task group: no call uses it any more
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # stops the helper readers
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(
                600, connect=10)))
            events = EventLog(store, task_group)
            stack.push_async_callback(events.flush)  # last events on disk before closing
            backend = DockerBackend(engine, task_group=task_group)
            service = SessionService(store, backend, events)
            stack.push_async_callback(service.aclose)
            self._conversations = conversations = Conversations(
                service, events, task_group, prices=self._prices, api_keys=self._api_keys,
                http=http, extra_tools=self._tools)
            stack.push_async_callback(conversations.aclose)  # first: turns end while all runs
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
        stack, self._stack, self._conversations = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def agent(
        self,
        name: str,
        *,
        model: str | None = None,
        system: str | None = None,
        tools: Sequence[str | Tool] | None = None,
        permissions: PermissionRules | None = None,
        script: list[dict[str, Any]] | str | None = None,
        config: AgentConfig | None = None,
        sandbox: SandboxOptions | None = None,
        **options: Unpack[SandboxKwargs],
    ) -> AsyncAgent:
        """An agent named `name`: its model (`provider/model`), system prompt, tools (names of
        built-in tools, or `Tool` objects), permission rules and, for `scripted`, its script.
        `config` gives every `AgentConfig` field at once; the keywords override it. Keyword
        sandbox options (`image`, `network`, `memory`, ...) override `sandbox`'s fields.

        Everything is checked here, before anything is registered: an unknown tool name, a
        custom tool named like a built-in or like another tool registered on this client, and
        a permission rule whose top-level key is not `"*"`, a built-in tool or one of the
        agent's tools raise `InvalidArgument`. `Tool` objects are registered on the client by
        name, for every session this client runs (register them again in a new process)."""
        conversations = self._opened()
        chosen = tools if tools is not None else (config or AgentConfig()).tools
        names, custom = agent_tools(chosen, registered=self._tools)
        overrides = {"model": model, "system": system, "tools": names,
                     "permissions": permissions, "script": script}
        agent_config = _validated(AgentConfig, config or AgentConfig(), overrides, "agent")
        if agent_config.permissions:
            validate_rules(agent_config.permissions)
            check_rule_keys(agent_config.permissions, agent_config.tools)
        if agent_config.script is not None:
            ScriptedProvider(agent_config.script)  # a malformed script fails here, not later
        options_checked = sandbox_options(sandbox, options)
        self._tools.update(custom)  # the live registry `Conversations` looks tools up in
        return AsyncAgent(conversations, name, options_checked, agent_config)

    def session(self, session_id: str) -> AsyncSessionHandle:
        """A handle on an existing session by id. No I/O until it is used; an unknown id then
        raises `SessionNotFound`."""
        return AsyncSessionHandle(self._opened(), session_id)

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """The sessions of this store, newest first."""
        return await self.service.store.list_sessions(include_ended=include_ended)

    async def gc(self) -> list[str]:
        """Remove orphaned containers (see `SessionService.reap_orphans`); returns their ids."""
        return await self.service.reap_orphans()

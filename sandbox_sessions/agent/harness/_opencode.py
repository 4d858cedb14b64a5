"""opencode: `opencode serve` inside the sandbox, driven over its HTTP API through the channel.

Each turn starts `opencode serve --hostname 127.0.0.1 --port 0` in the sandbox (its processes
marked with the run's token, so leaving kills them all), reads the port it prints, and talks to
it over the helper's tunnel (`TunnelTransport`). opencode keeps its sessions under
`~/.local/share/opencode` in the container, so a later turn, even from a new process on the
host, continues the session whose id the last turn stored (`outcome.conversation`).

Its model is a custom provider (`@ai-sdk/openai-compatible`, chat completions) whose
`baseURL` is the model proxy's, with the placeholder key; the real key stays on the host.
Anything that would reach the network (models.dev, autoupdate, share, LSP downloads) is
turned off. Every permission opencode has is `ask` (`question` is denied: nobody could answer
it, and `external_directory`/`doom_loop` are left to our rules on the call itself), so each
call reaches our rules and broker first: `once` when they allow it, `reject` with the
refusal as its message when they refuse, and a reject without a message denies the call,
aborts opencode's session and ends the turn (`Rejected`).

The `/event` stream gives the turn's events: `message.part.delta` (text and reasoning),
`message.part.updated` (step-start, step-finish, tool parts with their state), `todo.updated`,
`permission.asked`, `session.error`, and `session.idle`, which ends the turn.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.abc
import httpx
from httpx_sse import aconnect_sse

from ..._exceptions import InvalidArgument, ProviderError, SandboxError
from ..._types import AgentConfig, Todo
from ...sandbox.base import ShellRequest
from .._loop import Rejected
from ._base import HarnessTurn, ToolMap, command_of, path_of
from ._process import RUN_MARKER, Background, kill_marked
from ._tunnel_http import Connecting, TunnelTransport

__all__ = ["OpenCode"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness.opencode")

PROVIDER_ID = "sandbox-sessions"
"""opencode's id of the provider that reaches the model proxy."""
START_TIMEOUT = 60.0
"""Seconds opencode may take to listen."""
REQUEST_TIMEOUT = 60.0
ABORT_TIMEOUT = 5.0
MAX_OUTPUT = 64 << 10
_LISTENING = re.compile(r"listening on http://[^:\s]+:(\d+)")


def _anything(data: Mapping[str, Any], workdir: str) -> Sequence[str]:
    return ["*"]


TOOLS: ToolMap = {
    "bash": ("bash", command_of("command")),
    "read": ("read", path_of("filePath")),
    "write": ("write", path_of("filePath")),
    "edit": ("edit", path_of("filePath")),
    "list": ("list", path_of("path")),
    "glob": ("glob", path_of("path")),
    "grep": ("grep", path_of("path")),
    "todowrite": ("todowrite", _anything),
}
"""opencode's tools are named as ours; their inputs name the path `filePath` or `path`."""

ENV = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
}
"""Nothing opencode does may try the network (the sandbox has none: it would only wait)."""


def opencode_config(config: AgentConfig, model_name: str, base_url: str, key: str
                    ) -> dict[str, Any]:
    """The configuration opencode is started with (`OPENCODE_CONFIG_CONTENT`): the model
    `model_name` at `base_url` (the proxy's) with `key` (the placeholder)."""
    model: dict[str, Any] = {"name": model_name}
    options = dict(config.options)
    if options:
        model["options"] = options  # the openai-compatible provider adds them to the body
    output = options.get("max_tokens") or options.get("max_completion_tokens")
    if config.context_limit is not None or isinstance(output, int):
        model["limit"] = {"context": config.context_limit or 128_000,
                          "output": output if isinstance(output, int) else 32_000}
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "provider": {PROVIDER_ID: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "sandbox-sessions model proxy",
            "options": {"baseURL": base_url, "apiKey": key, "includeUsage": True},
            "models": {model_name: model},
        }},
        "enabled_providers": [PROVIDER_ID],
        "model": f"{PROVIDER_ID}/{model_name}",
        "small_model": f"{PROVIDER_ID}/{model_name}",
        "permission": {"*": "ask", "question": "deny", "external_directory": "allow",
                       "doom_loop": "allow"},
    }


class OpenCode:
    """The opencode harness."""

    name = "opencode"
    provider = "openai"
    tools: ToolMap = TOOLS

    def check_model(self, model: str) -> None:
        prefix, _, name = model.partition("/")
        if prefix != "openai" or not name:
            raise InvalidArgument(
                f"the opencode harness runs openai/<model> (an OpenAI-compatible chat "
                f"completions API, through the model proxy), not {model!r}")

    async def run(self, turn: HarnessTurn) -> None:
        failure: Exception | None = None
        try:
            async with serve(turn) as client:
                try:
                    session_id = await _session(client, turn.resume)
                    turn.outcome.conversation = session_id
                    await _Turn(turn, client, session_id).run()
                except (Rejected, ProviderError) as exc:
                    failure = exc  # raised out of the server's task group, not in a group
                except httpx.HTTPError as exc:
                    failure = ProviderError(f"opencode's server failed: {exc}")
        except SandboxError as exc:  # it could not start: the turn's error, with its output
            failure = ProviderError(str(exc))
        if failure is not None:
            raise failure


@asynccontextmanager
async def serve(turn: HarnessTurn) -> AsyncIterator[httpx.AsyncClient]:
    """`opencode serve` in the sandbox for the block, and an HTTP client that reaches it.
    Leaving kills it and every process it started."""
    sandbox = turn.sandbox
    token = secrets.token_hex(16)
    env = {**ENV, RUN_MARKER: token,
           "OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(
               turn.turn.config, turn.model_name, turn.proxy.base_url,
               turn.proxy.placeholder_key))}
    command = "exec " + shlex.join(["opencode", "serve", "--hostname", "127.0.0.1",
                                    "--port", "0"])
    server = Background()
    port: list[int] = []
    ready = anyio.Event()

    def on_output(text: str) -> None:
        server.on_output(text)
        if port:
            return
        found = _LISTENING.search(server.output.decode(errors="replace"))
        if found:
            port.append(int(found.group(1)))
            ready.set()

    async def run() -> None:
        request = ShellRequest(command=command, cwd=turn.workdir, env=env, timeout=None,
                               max_output=MAX_OUTPUT, on_stdout=on_output,
                               on_stderr=on_output)
        try:
            await server.run(sandbox, request)
        finally:
            ready.set()

    failed: SandboxError | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            with anyio.move_on_after(START_TIMEOUT):
                await ready.wait()
            if port:
                transport = TunnelTransport(cast(Connecting, sandbox), port[0])
                async with httpx.AsyncClient(transport=transport,
                                             base_url=f"http://127.0.0.1:{port[0]}",
                                             timeout=REQUEST_TIMEOUT) as client:
                    try:
                        yield client
                    finally:
                        group.cancel_scope.cancel()
            else:
                tail = server.tail()
                why = server.why() or f"it did not listen within {START_TIMEOUT:.0f} s"
                failed = SandboxError(f"opencode could not start in the sandbox: {why}"
                                      + (f": {tail}" if tail else ""))
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await kill_marked(sandbox, token)
    if failed is not None:
        raise failed  # out of the task group: not wrapped in an exception group


async def _session(client: httpx.AsyncClient, resume: str | None) -> str:
    """opencode's session of this conversation: `resume` when opencode still has it, else a
    new one."""
    if resume:
        found = await client.get(f"/session/{resume}")
        if found.status_code == 200:
            return resume
        log.warning("opencode has no session %s (HTTP %s): starting a new one", resume,
                    found.status_code)
    created = await client.post("/session", json={})
    _check(created, "create a session")
    session_id = created.json().get("id")
    if not isinstance(session_id, str):
        raise ProviderError(f"opencode created a session without an id: {created.text[:500]}")
    return session_id


def _check(response: httpx.Response, what: str) -> None:
    if response.is_error:
        raise ProviderError(f"opencode could not {what}: HTTP {response.status_code}: "
                            f"{response.text[:1000]}")


class _Turn:
    """One prompt sent to opencode's session, its events read until the session is idle."""

    def __init__(self, turn: HarnessTurn, client: httpx.AsyncClient, session_id: str) -> None:
        self.turn, self.client, self.session_id = turn, client, session_id
        self.roles: dict[str, str] = {}
        """Role of each message (by opencode's id)."""
        self.kinds: dict[str, str] = {}
        """Type of each text or reasoning part (by opencode's id)."""
        self.sent: dict[str, int] = {}
        """Characters of each text or reasoning part already emitted."""
        self.calls: dict[str, tuple[str, dict[str, Any]]] = {}
        """Tool and input of each call (by opencode's call id)."""
        self.steps: set[str] = set()
        self.done = anyio.Event()
        self.prompted = False
        self.error: str | None = None
        self.rejected = False

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            connected = anyio.Event()
            group.start_soon(self._events, group, connected)
            with anyio.fail_after(REQUEST_TIMEOUT):
                await connected.wait()
            try:
                sent = await self.client.post(
                    f"/session/{self.session_id}/prompt_async",
                    json={"parts": [{"type": "text", "text": self.turn.prompt}],
                          "model": {"providerID": PROVIDER_ID,
                                    "modelID": self.turn.model_name}})
                _check(sent, "take the prompt")
                self.prompted = True
                await self.done.wait()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._abort()
                raise
            except (httpx.HTTPError, ProviderError) as exc:
                self.error = self.error or str(exc)
            group.cancel_scope.cancel()
        if self.rejected:
            raise Rejected()
        if self.error is not None:
            self.turn.outcome.reason, self.turn.outcome.error = "error", self.error

    async def _abort(self) -> None:
        """Stop opencode's turn (the server is killed next anyway)."""
        with anyio.move_on_after(ABORT_TIMEOUT):
            try:
                await self.client.post(f"/session/{self.session_id}/abort")
            except httpx.HTTPError as exc:
                log.debug("opencode's session %s not aborted: %s", self.session_id, exc)

    async def _events(self, group: anyio.abc.TaskGroup, connected: anyio.Event) -> None:
        try:
            async with aconnect_sse(self.client, "GET", "/event",
                                    timeout=httpx.Timeout(REQUEST_TIMEOUT, read=None)) as source:
                _check(source.response, "stream its events")
                async for sse in source.aiter_sse():
                    connected.set()
                    try:
                        event = json.loads(sse.data)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        self._handle(event, group)
        except httpx.HTTPError as exc:
            self.error = self.error or f"opencode's event stream failed: {exc}"
        else:
            self.error = self.error or "opencode's event stream ended before its turn"
        connected.set()
        self.done.set()

    def _handle(self, event: Mapping[str, Any], group: anyio.abc.TaskGroup) -> None:
        kind = event.get("type")
        props = event.get("properties")
        if not isinstance(props, dict) or props.get("sessionID") != self.session_id:
            return
        if kind == "message.updated":
            info = props.get("info") or {}
            if isinstance(info.get("id"), str):
                self.roles[info["id"]] = str(info.get("role"))
        elif kind == "message.part.updated":
            part = props.get("part")
            if isinstance(part, dict):
                self._part(part)
        elif kind == "message.part.delta":
            self._delta(props)
        elif kind == "todo.updated":
            self.turn.set_todos(_todos(props.get("todos")))
        elif kind == "permission.asked":
            group.start_soon(self._permit, props)
        elif kind == "session.error":
            error = props.get("error") or {}
            name = error.get("name") if isinstance(error, dict) else None
            if name != "MessageAbortedError" or not self.rejected:
                data = error.get("data") if isinstance(error, dict) else None
                message = data.get("message") if isinstance(data, dict) else None
                self.error = f"opencode: {name or 'error'}: {message or json.dumps(error)[:500]}"
        elif kind == "session.idle" and self.prompted:
            self.done.set()

    def _assistant(self, part: Mapping[str, Any]) -> bool:
        return self.roles.get(str(part.get("messageID"))) == "assistant"

    def _part(self, part: Mapping[str, Any]) -> None:
        kind, part_id = part.get("type"), str(part.get("id"))
        if not self._assistant(part):
            return
        if kind in ("text", "reasoning"):
            self.kinds[part_id] = str(kind)
            text = part.get("text")
            if isinstance(text, str):  # what the deltas did not bring
                self._emit(part_id, text[self.sent.get(part_id, 0):])
        elif kind == "step-start" and part_id not in self.steps:
            self.steps.add(part_id)
            self.turn.step_start()
        elif kind == "step-finish" and part_id not in self.steps:
            self.steps.add(part_id)
            self.turn.step_finish(str(part.get("reason") or "stop"))
        elif kind == "tool":
            self._tool(part)

    def _delta(self, props: Mapping[str, Any]) -> None:
        part_id, delta = str(props.get("partID")), props.get("delta")
        if props.get("field") == "text" and isinstance(delta, str) \
                and self.roles.get(str(props.get("messageID"))) == "assistant":
            self._emit(part_id, delta)

    def _emit(self, part_id: str, delta: str) -> None:
        if not delta:
            return
        self.sent[part_id] = self.sent.get(part_id, 0) + len(delta)
        if self.kinds.get(part_id) == "reasoning":
            self.turn.reasoning(delta, key=part_id)
        else:
            self.turn.text(delta, key=part_id)

    def _tool(self, part: Mapping[str, Any]) -> None:
        call_id, name = str(part.get("callID")), str(part.get("tool"))
        state = part.get("state") or {}
        status = state.get("status")
        data = _dict(state.get("input"))
        if status == "pending":
            return  # its input is still coming
        self.calls[call_id] = (name, data)
        if status == "running":
            self.turn.tool_running(call_id, name, data)
        elif status == "completed":
            metadata = _dict(state.get("metadata"))
            kept = {key: value for key, value in metadata.items()
                    if key != "output" and isinstance(value, str | int | float | bool)}
            self.turn.tool_end(call_id, output=str(state.get("output") or ""),
                               title=str(state.get("title") or ""), metadata=kept,
                               name=name, data=data)
        elif status == "error":
            self.turn.tool_end(call_id, error=str(state.get("error") or "failed"),
                               name=name, data=data)

    async def _permit(self, props: Mapping[str, Any]) -> None:
        request_id = str(props.get("id"))
        call = _dict(props.get("tool"))
        call_id = str(call.get("callID") or request_id)
        metadata = _dict(props.get("metadata"))
        known = self.calls.get(call_id)
        if known is None:  # not seen running yet: opencode's permission and its metadata
            data = dict(metadata)
            if isinstance(metadata.get("filepath"), str):
                data.setdefault("filePath", metadata["filepath"])
            known = (str(props.get("permission")), data)
        name, data = known
        try:
            refusal = await self.turn.permit(call_id, name, data)
        except Rejected:
            self.rejected = True
            await self._reply(request_id, "reject")
            await self._abort()
            self.done.set()
            return
        if refusal is None:
            await self._reply(request_id, "once")
        else:
            await self._reply(request_id, "reject", refusal)

    async def _reply(self, request_id: str, reply: str, message: str | None = None) -> None:
        body: dict[str, Any] = {"reply": reply}
        if message is not None:
            body["message"] = message
        try:
            answer = await self.client.post(f"/permission/{request_id}/reply", json=body)
            _check(answer, "take a permission reply")
        except (httpx.HTTPError, ProviderError) as exc:
            self.error = self.error or f"opencode did not take the permission reply: {exc}"
            self.done.set()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _todos(items: Any) -> list[Todo]:
    todos: list[Todo] = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        status = item.get("status")
        priority = item.get("priority")
        todos.append(Todo(
            id=str(item.get("id") or index + 1), content=str(item.get("content") or ""),
            status=status if status in ("pending", "in_progress", "completed", "cancelled")
            else "pending",
            priority=priority if priority in ("high", "medium", "low") else "medium"))
    return todos

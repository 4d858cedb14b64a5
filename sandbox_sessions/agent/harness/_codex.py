"""Codex (`codex app-server`) as a harness: its JSON-RPC over stdio, translated to our events.

The app server speaks JSON-RPC 2.0 without the `jsonrpc` field, one JSON object a line. A turn
here is: `initialize` (+ the `initialized` notification), `thread/start` (or `thread/resume`
with the thread id the session's previous turn stored), `turn/start` with the prompt, then
notifications until `turn/completed`. Codex asks before each command and each patch with a
server->client request (`item/commandExecution/requestApproval`,
`item/fileChange/requestApproval`); we ask the session's rules and broker, then answer
`accept` or `decline`. See docs/harness-codex.md for the mapping and its limits.

The model is reached through the proxy: a `model_providers.sandbox` entry (`wire_api =
"responses"`, `base_url` = the proxy's loopback URL, `env_key` = a variable holding the
placeholder key), given as `-c` overrides on the command line, so nothing about the model
is written into the container. The threads Codex keeps (its rollout files) live in
`CODEX_HOME` = /home/sandbox/.codex in the container, so a later turn, even one run by a
restarted process, resumes the thread.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..._exceptions import InvalidArgument, ProtocolError, ProviderError, SandboxError
from ..._types import Todo
from .._loop import Rejected
from .._proxy import ProxyProvider
from ._base import HarnessTurn, ToolMap, absolute, command_of
from ._process import CliProcess, launch

__all__ = ["CODEX_HOME", "Codex"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness.codex")

CODEX_HOME = "/home/sandbox/.codex"
"""Codex's own folder in the container: its threads (rollouts), logs and state."""
KEY_VARIABLE = "SANDBOX_SESSIONS_MODEL_KEY"
"""The environment variable Codex reads the (placeholder) key from."""
PROVIDER_ID = "sandbox"
REQUEST_TIMEOUT = 120.0
"""Seconds Codex may take to answer one of our requests (the turn itself is not bounded)."""
INTERRUPT_TIMEOUT = 10.0
"""Seconds to wait for an interrupted turn to end before the process is killed."""
APPROVAL_POLICY = "untrusted"
"""Every command asks (Codex's `unless-trusted`): the broker decides."""
SANDBOX_MODE = "danger-full-access"
"""Codex's own sandbox (bubblewrap, Landlock, seccomp) is off: the container is the sandbox,
and bubblewrap cannot make namespaces there (no capabilities, no-new-privileges)."""


def _changed_paths(data: Mapping[str, Any], workdir: str) -> Sequence[str]:
    """The paths a patch changes (a move's target too), absolute."""
    paths: list[str] = []
    for change in data.get("changes") or ():
        if not isinstance(change, Mapping):
            continue
        for path in (change.get("path"), (change.get("kind") or {}).get("move_path")):
            if isinstance(path, str) and path:
                paths.append(absolute(path, workdir))
    return list(dict.fromkeys(paths)) or [workdir]


TOOLS: ToolMap = {
    "exec_command": ("bash", command_of("command")),
    "apply_patch": ("edit", _changed_paths),
    "apply_patch_add": ("write", _changed_paths),
}
"""Codex's actions as our tools: a command item is `exec_command` (bash, judged on the
command line the model wrote), a patch that only adds files `apply_patch_add` (write), any
other patch `apply_patch` (edit), judged on every path it touches."""


class _Rpc:
    """Our side of the app server's JSON-RPC: requests we make, and what the server sends."""

    def __init__(self, process: CliProcess) -> None:
        self.process = process
        self._next = 1
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._incoming: tuple[MemoryObjectSendStream[dict[str, Any]],
                              MemoryObjectReceiveStream[dict[str, Any]]] = \
            anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self.closed = False

    @property
    def incoming(self) -> MemoryObjectReceiveStream[dict[str, Any]]:
        """Notifications and server requests, in the order the server sent them."""
        return self._incoming[1]

    async def read(self) -> None:
        """Read the server's output until it closes it (run in a task)."""
        send = self._incoming[0]
        try:
            async for message in self.process.messages():
                if "method" not in message and "id" in message:
                    found = self._waiting.pop(message["id"], None) \
                        if isinstance(message["id"], int) else None
                    if found is not None:
                        found[1].append(message)
                        found[0].set()
                    continue
                await send.send(message)
        finally:
            self.closed = True
            for event, _ in self._waiting.values():
                event.set()
            self._waiting.clear()
            await send.aclose()

    async def request(self, method: str, params: Mapping[str, Any]) -> Any:
        """Send a request and wait for its result; `ProviderError` for an error answer."""
        if self.closed:
            raise ProviderError(f"codex ended before {method}{self._stderr()}")
        ident, self._next = self._next, self._next + 1
        event, box = anyio.Event(), list[dict[str, Any]]()
        self._waiting[ident] = (event, box)
        await self.process.send_json({"id": ident, "method": method, "params": dict(params)})
        with anyio.move_on_after(REQUEST_TIMEOUT):
            await event.wait()
        if not box:
            self._waiting.pop(ident, None)
            why = "ended" if self.closed else f"did not answer in {REQUEST_TIMEOUT:.0f} s"
            raise ProviderError(f"codex {why} ({method}){self._stderr()}")
        answer = box[0]
        if "error" in answer:
            error = answer["error"] or {}
            message = error.get("message") if isinstance(error, Mapping) else error
            raise ProviderError(f"codex refused {method}: {message}")
        return answer.get("result")

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = dict(params)
        await self.process.send_json(message)

    async def answer(self, ident: Any, result: Mapping[str, Any]) -> None:
        await self.process.send_json({"id": ident, "result": dict(result)})

    async def refuse(self, ident: Any, message: str) -> None:
        await self.process.send_json({"id": ident, "error": {"code": -32601,
                                                             "message": message}})

    def _stderr(self) -> str:
        return ""  # the process's stderr is known once it ended: `Codex.run` adds it


class Codex:
    """The Codex CLI's app server, run in the sandbox for each turn."""

    name = "codex"
    provider: ProxyProvider = "openai"
    tools: ToolMap = TOOLS

    def check_model(self, model: str) -> None:
        prefix, _, rest = model.partition("/")
        if prefix not in ("openai", "openai-responses") or not rest:
            raise InvalidArgument(
                f"the codex harness runs OpenAI Responses models (openai/<model> or "
                f"openai-responses/<model>), not {model!r}")

    def argv(self, turn: HarnessTurn) -> list[str]:
        """The command line: the app server on stdio, configured for the proxy."""
        provider = {"name": "sandbox-sessions proxy", "base_url": turn.proxy.base_url,
                    "wire_api": "responses", "env_key": KEY_VARIABLE,
                    "request_max_retries": 0, "stream_max_retries": 0}
        overrides = {
            "model": turn.model_name,
            "model_provider": PROVIDER_ID,
            f"model_providers.{PROVIDER_ID}": provider,
            "sandbox_mode": SANDBOX_MODE,
            "check_for_update_on_startup": False,
        }
        argv = ["sh", "-c", 'mkdir -p "$CODEX_HOME" && exec "$@"', "sh", "codex", "app-server"]
        for key, value in overrides.items():
            argv += ["-c", f"{key}={_toml(value)}"]
        return argv

    def env(self, turn: HarnessTurn) -> dict[str, str]:
        return {"CODEX_HOME": CODEX_HOME, KEY_VARIABLE: turn.proxy.placeholder_key,
                "HOME": "/home/sandbox", "RUST_LOG": "error", "NO_COLOR": "1"}

    async def run(self, turn: HarnessTurn) -> None:
        failure: ProviderError | Rejected | None = None
        try:
            async with launch(turn.sandbox, self.argv(turn), env=self.env(turn),
                              cwd=turn.workdir, name="codex") as process:
                rpc = _Rpc(process)
                async with anyio.create_task_group() as group:
                    group.start_soon(rpc.read)
                    try:
                        await _Session(turn, rpc).run()
                    except (ProviderError, Rejected) as exc:
                        failure = exc  # raised below, not wrapped in the task groups'
                    finally:
                        group.cancel_scope.cancel()
                        rpc.incoming.close()
        except BaseExceptionGroup as group_error:
            found = _single(group_error)
            if type(found) in (SandboxError, ProtocolError):
                raise ProviderError(str(found)) from found
            raise found from None
        except SandboxError as exc:
            if type(exc) in (SandboxError, ProtocolError):  # it could not start, or spoke
                raise ProviderError(str(exc)) from exc     # nonsense: the turn's error
            raise
        if isinstance(failure, ProviderError) and rpc.closed and process.stderr_tail:
            raise ProviderError(f"{failure}: {process.stderr_tail[-2000:]}")
        if failure is not None:
            raise failure


def _single(error: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception a nest of task groups wrapped (the group itself if several)."""
    found: BaseException = error
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return found


def _toml(value: Any) -> str:
    """`value` as a TOML value (an inline table for a mapping)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


class _Session:
    """One turn's conversation with the app server."""

    def __init__(self, turn: HarnessTurn, rpc: _Rpc) -> None:
        self.turn = turn
        self.rpc = rpc
        self.thread_id = ""
        self.turn_id = ""
        self.items: dict[str, dict[str, Any]] = {}
        """Items started and not completed, by id (an approval names only the item)."""
        self.output: dict[str, list[str]] = {}
        self.in_step = False
        self.step_calls = False
        self.ended = False

    async def run(self) -> None:
        turn, rpc = self.turn, self.rpc
        await rpc.request("initialize", {
            "clientInfo": {"name": "sandbox_sessions", "title": "sandbox-sessions",
                           "version": "1"},
            "capabilities": {"experimentalApi": False, "requestAttestation": False}})
        await rpc.notify("initialized")
        settings = {"model": turn.model_name, "modelProvider": PROVIDER_ID,
                    "cwd": turn.workdir, "approvalPolicy": APPROVAL_POLICY,
                    "sandbox": SANDBOX_MODE}
        if turn.resume:
            started = await rpc.request("thread/resume", {"threadId": turn.resume, **settings,
                                                          "excludeTurns": True})
        else:
            started = await rpc.request("thread/start", settings)
        self.thread_id = str(started["thread"]["id"])
        turn.outcome.conversation = self.thread_id
        began = await rpc.request("turn/start", {
            "threadId": self.thread_id,
            "input": [{"type": "text", "text": turn.prompt, "text_elements": []}]})
        self.turn_id = str((began or {}).get("turn", {}).get("id") or "")
        self._step_start()
        async for message in rpc.incoming:
            if "id" in message and "method" in message:
                await self._server_request(message)
            else:
                self._notification(message.get("method", ""), message.get("params") or {})
            if self.ended:
                return
        raise ProviderError(f"codex ended before its turn did{rpc._stderr()}")

    # --- steps ---------------------------------------------------------------------------

    def _step_start(self) -> None:
        if not self.in_step:
            self.in_step, self.step_calls = True, False
            self.turn.step_start()

    def _step_finish(self) -> None:
        if self.in_step:
            self.in_step = False
            self.turn.step_finish("tool_calls" if self.step_calls else "stop")

    # --- notifications -------------------------------------------------------------------

    def _notification(self, method: str, params: Mapping[str, Any]) -> None:
        turn = self.turn
        if params.get("threadId") not in (None, self.thread_id):
            return  # another thread's (a sub-agent's): not ours to show
        if method == "item/agentMessage/delta":
            self._step_start()
            turn.text(str(params.get("delta") or ""), str(params.get("itemId") or ""))
        elif method in ("item/reasoning/textDelta", "item/reasoning/summaryTextDelta"):
            self._step_start()
            turn.reasoning(str(params.get("delta") or ""), str(params.get("itemId") or ""))
        elif method == "item/commandExecution/outputDelta":
            self.output.setdefault(str(params.get("itemId")), []).append(
                str(params.get("delta") or ""))
        elif method == "item/started":
            self._item_started(params.get("item") or {})
        elif method == "item/completed":
            self._item_completed(params.get("item") or {})
        elif method == "turn/plan/updated":
            self._plan(params.get("plan") or [])
        elif method == "thread/tokenUsage/updated":
            self._step_finish()  # sent once each model response is complete
        elif method == "error":
            error = params.get("error") or {}
            if not params.get("willRetry"):
                turn.outcome.error = str(error.get("message") or error)
        elif method == "turn/completed":
            self._turn_completed(params.get("turn") or {})

    def _item_started(self, item: Mapping[str, Any]) -> None:
        kind, ident = item.get("type"), str(item.get("id") or "")
        if kind in ("userMessage", None):
            return
        self._step_start()
        if kind == "commandExecution":
            self.items[ident] = dict(item)
            self.step_calls = True
            self.turn.tool_start(ident, "exec_command", _command_input(item))
        elif kind == "fileChange":
            self.items[ident] = dict(item)
            self.step_calls = True
            self.turn.tool_start(ident, _patch_tool(item), _patch_input(item))
        elif kind in ("mcpToolCall", "dynamicToolCall", "webSearch"):
            self.step_calls = True
            self.turn.tool_running(ident, str(item.get("tool") or kind),
                                   _plain(item.get("arguments")))

    def _item_completed(self, item: Mapping[str, Any]) -> None:
        kind, ident = item.get("type"), str(item.get("id") or "")
        turn = self.turn
        started = self.items.pop(ident, None)
        if kind == "commandExecution":
            output = item.get("aggregatedOutput")
            if output is None:
                output = "".join(self.output.pop(ident, []))
            status, code = item.get("status"), item.get("exitCode")
            data = _command_input(started or item)
            metadata = {"exit_code": code, "cwd": item.get("cwd")}
            if status == "completed" and (code in (None, 0)):
                turn.tool_end(ident, output=output, title=str(item.get("command") or ""),
                              metadata=metadata, name="exec_command", data=data)
            elif status == "declined":
                turn.tool_end(ident, error="declined", name="exec_command", data=data)
            else:
                turn.tool_end(ident, error=output or f"exit status {code}",
                              name="exec_command", data=data)
        elif kind == "fileChange":
            data = _patch_input(started or item)
            status = item.get("status")
            if status == "completed":
                paths = [c.get("path") for c in item.get("changes") or ()]
                turn.tool_end(ident, output="\n".join(str(p) for p in paths),
                              title=", ".join(str(p) for p in paths),
                              name=_patch_tool(item), data=data)
            else:
                turn.tool_end(ident, error=str(status), name=_patch_tool(item), data=data)
        elif kind in ("mcpToolCall", "dynamicToolCall"):
            error = item.get("error")
            if error:
                turn.tool_end(ident, error=json.dumps(error)[:4000])
            else:
                turn.tool_end(ident, output=json.dumps(item.get("result")
                                                       or item.get("contentItems"))[:100_000])
        elif kind == "webSearch":
            turn.tool_end(ident, output=json.dumps(dict(item))[:4000])
        elif kind == "agentMessage" and ident and not self._texted(ident):
            turn.text(str(item.get("text") or ""), ident)  # no delta came: the whole text
        elif kind == "plan":
            pass

    def _texted(self, ident: str) -> bool:
        return f"text:{ident}" in self.turn._texts

    def _plan(self, plan: Sequence[Mapping[str, Any]]) -> None:
        statuses = {"pending": "pending", "inProgress": "in_progress",
                    "completed": "completed"}
        self.turn.set_todos([
            Todo(id=str(index + 1), content=str(step.get("step") or ""),
                 status=statuses.get(str(step.get("status")), "pending"))
            for index, step in enumerate(plan)])

    def _turn_completed(self, data: Mapping[str, Any]) -> None:
        if data.get("id") and self.turn_id and data.get("id") != self.turn_id:
            return
        self._step_finish()
        self.ended = True
        status = data.get("status")
        outcome = self.turn.outcome
        if status == "completed":
            outcome.reason = "completed"
            outcome.error = None
        elif status == "interrupted":
            outcome.reason, outcome.error = "aborted", None
        else:
            error = data.get("error") or {}
            outcome.reason = "error"
            outcome.error = str(error.get("message") or outcome.error or f"codex: {status}")

    # --- server requests -----------------------------------------------------------------

    async def _server_request(self, message: Mapping[str, Any]) -> None:
        method, ident = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method == "item/commandExecution/requestApproval":
            item = self.items.get(str(params.get("itemId"))) or {}
            call = str(params.get("itemId") or ident)
            data = _command_input({**item, **{k: v for k, v in params.items()
                                              if k in ("command", "cwd") and v}})
            await self._approve(ident, call, "exec_command", data)
        elif method == "item/fileChange/requestApproval":
            item = self.items.get(str(params.get("itemId"))) or {}
            call = str(params.get("itemId") or ident)
            await self._approve(ident, call, _patch_tool(item), _patch_input(item))
        elif method in ("execCommandApproval", "applyPatchApproval"):
            await self.rpc.answer(ident, {"decision": "denied"})  # the v1 API: not ours
        else:
            await self.rpc.refuse(ident, f"{method} is not supported by this client")

    async def _approve(self, ident: Any, call: str, name: str, data: Mapping[str, Any]
                       ) -> None:
        turn, rpc = self.turn, self.rpc
        try:
            refusal = await turn.permit(call, name, data)
        except Rejected:
            # `cancel`: Codex declines the call and interrupts its turn (no model request
            # follows); run_harness then ends ours `rejected`.
            await rpc.answer(ident, {"decision": "cancel"})
            await self._interrupted()
            raise
        if refusal is None:
            await rpc.answer(ident, {"decision": "accept"})
            turn.tool_running(call, name, data)
            return
        # A decline carries no text: the reason reaches the model as the user's words,
        # steered into the running turn before the decline (so it is read with the result).
        try:
            await rpc.request("turn/steer", {
                "threadId": self.thread_id, "expectedTurnId": self.turn_id,
                "input": [{"type": "text", "text": refusal, "text_elements": []}]})
        except ProviderError as exc:
            log.debug("the refusal could not be steered into the turn: %s", exc)
        await rpc.answer(ident, {"decision": "decline"})

    async def _interrupted(self) -> None:
        """Wait (a little) until Codex says its turn ended; ask it with `turn/interrupt`
        when it does not soon. The process is killed after this, whatever it said."""
        for ask in (False, True):
            if ask:
                try:
                    with anyio.fail_after(INTERRUPT_TIMEOUT):
                        await self.rpc.request("turn/interrupt", {
                            "threadId": self.thread_id, "turnId": self.turn_id})
                except (ProviderError, TimeoutError) as exc:
                    log.debug("turn/interrupt: %s", exc)
                    return
            with anyio.move_on_after(INTERRUPT_TIMEOUT / 2):
                async for message in self.rpc.incoming:
                    if "id" in message and "method" in message:
                        await self.rpc.answer(message["id"], {"decision": "cancel"})
                    elif message.get("method") == "turn/completed":
                        self._step_finish()
                        return
                return  # the server closed its output


def _command_input(item: Mapping[str, Any]) -> dict[str, Any]:
    """A command item's input as our bash call shows it: `command` is the line the model
    wrote (`/bin/bash -lc '<line>'` unwrapped), `argv` what Codex runs."""
    command = str(item.get("command") or "")
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    data: dict[str, Any] = {"command": command}
    if argv:
        data["argv"] = argv
        line = command_of("argv")(data, "")
        data["command"] = line[0] if line else command
    if item.get("cwd"):
        data["cwd"] = item["cwd"]
    return data


def _patch_input(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"changes": [dict(change) for change in item.get("changes") or ()
                        if isinstance(change, Mapping)]}


def _patch_tool(item: Mapping[str, Any]) -> str:
    """`apply_patch_add` for a patch that only adds files, else `apply_patch`."""
    kinds = {(change.get("kind") or {}).get("type") for change in item.get("changes") or ()
             if isinstance(change, Mapping)}
    return "apply_patch_add" if kinds == {"add"} else "apply_patch"


def _plain(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {"arguments": value}

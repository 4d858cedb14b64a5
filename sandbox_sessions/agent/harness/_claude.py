"""The Claude Code harness: `claude -p` in the sandbox, driven over its stream-json protocol.

Claude Code runs as

    claude -p --output-format stream-json --input-format stream-json --verbose
           --include-partial-messages --permission-prompt-tool stdio --model <m> [--resume=<id>]

with its stdio on the host (`_process.launch`). We write the `initialize` control request and
the user's message, each one JSON line, and read what it prints, a JSON object a line:

- `system` / `init`: its session id, which becomes `outcome.conversation`; the next turn runs
  with `--resume=<that id>` (Claude keeps the transcript under `$HOME/.claude` in the sandbox,
  so this also works after our process restarted).
- `stream_event`: the Anthropic Messages SSE events of each model call: `message_start` and
  `message_stop` (one step each), `text_delta`, `thinking_delta`, `message_delta`'s
  `stop_reason`.
- `assistant`: a content block, complete: a `tool_use` block starts our tool call with its
  input (a `TodoWrite` also sets the session's todos).
- `user`: the `tool_result` of each call, which ends it (`is_error`: an error).
- `control_request` `can_use_tool` (tool_name, input, tool_use_id): a permission prompt. It is
  asked of the session's rules and broker (`HarnessTurn.permit`), and answered with a
  `control_response`: `{"behavior": "allow", "updatedInput": input}`, or `{"behavior": "deny",
  "message": why}` (the turn goes on), or for a reject without a message the same with
  `"interrupt": true`, Claude stops, and the turn ends `rejected`.
- `result`: the end of the turn (`is_error`: reason `error`, with its `errors` or `result`
  text). Stdin is closed then, and Claude exits.

Every tool call is made to ask: `--settings` gives `permissions.ask` rules for the tools that
touch the sandbox (Claude would run read-only ones unasked), `--setting-sources=` leaves the
workspace's and the user's settings files out, and `--permission-mode default` stops a settings
file from choosing another mode. Our rules then decide (their default is allow).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from ..._exceptions import ContainerGone, InvalidArgument, SandboxError, SandboxUnavailable
from ..._types import Todo
from .._loop import Rejected
from ._base import HarnessTurn, ToolMap, command_of, path_of
from ._process import CliProcess, launch

__all__ = ["ASKED_TOOLS", "ClaudeCode", "claude_argv", "claude_env"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness")

CLAUDE = "claude"
HOME = "/home/sandbox"
DRAIN_SECONDS = 10.0
"""How long Claude may take to exit once its `result` is read and stdin is closed."""
REJECT_SECONDS = 30.0
"""How long Claude may take to end its turn after a call was denied with `interrupt`."""


def _anything(data: Mapping[str, Any], workdir: str) -> Sequence[str]:
    return ["*"]


TOOLS: ToolMap = {
    "Bash": ("bash", command_of("command")),
    "Monitor": ("bash", command_of("command", "ws")),
    "Read": ("read", path_of("file_path")),
    "Write": ("write", path_of("file_path")),
    "Edit": ("edit", path_of("file_path")),
    "MultiEdit": ("edit", path_of("file_path")),
    "NotebookEdit": ("edit", path_of("notebook_path")),
    "Glob": ("glob", path_of("path")),
    "Grep": ("grep", path_of("path")),
    "LS": ("list", path_of("path")),
    "TodoWrite": ("todowrite", _anything),
}
"""Claude Code's tools -> ours. Its other tools (WebFetch, Task, ...) keep their own names."""

ASKED_TOOLS: tuple[str, ...] = (
    "Bash", "Monitor", "Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "Glob", "Grep",
    "LS", "WebFetch", "WebSearch",
)
"""The tools Claude is told to always ask about (it runs some of them unasked otherwise)."""

_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                 "max_tokens": "length", "model_context_window_exceeded": "length"}
_TODO_STATUS = {"pending", "in_progress", "completed", "cancelled"}


def claude_argv(model: str, resume: str | None, system: str | None = None) -> list[str]:
    """The command line of one turn; the agent's `system` prompt is added to Claude's."""
    settings = {"permissions": {"ask": list(ASKED_TOOLS)}}
    argv = [CLAUDE, "-p", "--output-format", "stream-json", "--input-format", "stream-json",
            "--verbose", "--include-partial-messages", "--permission-prompt-tool", "stdio",
            "--permission-mode", "default", "--setting-sources=", "--strict-mcp-config",
            "--settings", json.dumps(settings, separators=(",", ":"))]
    if model:
        argv.append(f"--model={model}")
    if system:
        argv.append(f"--append-system-prompt={system}")
    if resume:
        argv.append(f"--resume={resume}")  # the `=` form: an id is never read as a flag
    return argv


def claude_env(base_url: str, key: str, model: str) -> dict[str, str]:
    """Claude Code's environment: the proxy, the placeholder key, and nothing that calls
    anything but the model (the sandbox has no network anyway)."""
    env = {
        "HOME": HOME,
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": key,
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        "CLAUDE_CODE_IDE_SKIP_AUTO_INSTALL": "1",
        "NO_UPDATE_NOTIFIER": "1",
    }
    if model:
        # Side calls (titles, summaries, subagents) use the session's model too.
        env.update(ANTHROPIC_DEFAULT_HAIKU_MODEL=model, ANTHROPIC_DEFAULT_SONNET_MODEL=model,
                   ANTHROPIC_DEFAULT_OPUS_MODEL=model, CLAUDE_CODE_SUBAGENT_MODEL=model)
    return env


class ClaudeCode:
    """The Claude Code bridge (`harness="claude-code"`): Anthropic models only."""

    name = "claude-code"
    provider = "anthropic"
    tools: ToolMap = TOOLS

    def check_model(self, model: str) -> None:
        provider, _, name = model.partition("/")
        if provider != "anthropic" or not name:
            raise InvalidArgument(
                f"the claude-code harness speaks the Anthropic Messages API: its model must be "
                f"anthropic/<model>, not {model!r}")

    async def run(self, turn: HarnessTurn) -> None:
        resume = turn.resume
        while True:
            stream = await self._run(turn, resume)
            if stream is None or not stream.lost or resume is None:
                break
            # Claude's transcript is gone (the container was made anew): a new conversation
            log.warning("Claude Code has no conversation %s any more: starting a new one",
                        resume)
            resume = None
        if stream is None:
            return
        if stream.rejected:
            raise Rejected()
        if stream.failure is not None:
            raise stream.failure

    async def _run(self, turn: HarnessTurn, resume: str | None) -> _Stream | None:
        """One run of Claude; None when it could not run (the outcome says why)."""
        model = turn.model_name
        argv = claude_argv(model, resume, turn.turn.config.system)
        env = claude_env(turn.proxy.base_url, turn.proxy.placeholder_key, model)
        try:
            async with launch(turn.sandbox, argv, env=env, cwd=turn.workdir,
                              name="Claude Code") as process:
                stream = _Stream(turn, process, resumed=resume is not None)
                await stream.run()
        except (ContainerGone, SandboxUnavailable):
            raise  # the service says what became of the container
        except SandboxError as exc:  # it could not start, or broke the protocol
            turn.outcome.reason, turn.outcome.error = "error", str(exc)
            return None
        if not stream.ended:
            code = process.result.exit_code if process.result is not None else None
            turn.outcome.reason = "error"
            turn.outcome.error = (
                "Claude Code ended without a result"
                + (f" (exit code {code})" if code is not None else "")
                + (f": {process.stderr_tail}" if process.stderr_tail else ""))
        return stream


class _Stream:
    """One turn's conversation with Claude Code over its stdio."""

    def __init__(self, turn: HarnessTurn, process: CliProcess, *, resumed: bool) -> None:
        self.turn = turn
        self.process = process
        self.resumed = resumed
        self.ended = False
        """Its `result` was read."""
        self.lost = False
        """It was to resume a conversation it has no transcript of, and did nothing."""
        self.rejected = False
        self.failure: BaseException | None = None
        self._scope = anyio.CancelScope()
        self._asks: dict[str, anyio.CancelScope] = {}
        self._step_open = False
        self._stop_reason: str | None = None
        self._names: dict[str, str] = {}

    async def run(self) -> None:
        await self.process.send_json({"type": "control_request", "request_id": "init_1",
                                      "request": {"subtype": "initialize", "hooks": None}})
        await self.process.send_json({
            "type": "user", "session_id": "", "parent_tool_use_id": None,
            "message": {"role": "user", "content": self.turn.prompt}})
        async with anyio.create_task_group() as group:
            with self._scope:
                async for message in self.process.messages():
                    if not self.ended:
                        await self._on_message(message, group)
            group.cancel_scope.cancel()

    async def _on_message(self, message: Mapping[str, Any],
                          group: anyio.abc.TaskGroup) -> None:
        kind = message.get("type")
        session = message.get("session_id")
        if isinstance(session, str) and session:
            self.turn.outcome.conversation = session
        if kind == "stream_event":
            self._on_event(message)
        elif kind == "assistant":
            self._on_assistant(message)
        elif kind == "user":
            self._on_user(message)
        elif kind == "control_request":
            group.start_soon(self._on_control, message)
        elif kind == "control_cancel_request":
            scope = self._asks.get(str(message.get("request_id")))
            if scope is not None:
                scope.cancel()
        elif kind == "result":
            self._on_result(message)
            # Claude exits once its stdin ends; what it prints until then is not read.
            await self.process.close_stdin()
            self._scope.deadline = min(self._scope.deadline,
                                       anyio.current_time() + DRAIN_SECONDS)

    # --- the stream ----------------------------------------------------------------------

    def _on_event(self, message: Mapping[str, Any]) -> None:
        if message.get("parent_tool_use_id"):
            return  # a subagent's model call: its tool calls still come to us
        event = message.get("event")
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        turn = self.turn
        key = f"{turn.steps}:{event.get('index')}"
        if kind == "message_start":
            self._close_step()
            turn.step_start()
            self._step_open, self._stop_reason = True, None
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                return
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                turn.text(delta["text"], key)
            elif delta.get("type") == "thinking_delta" \
                    and isinstance(delta.get("thinking"), str):
                turn.reasoning(delta["thinking"], key)
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self._names[str(block.get("id"))] = str(block.get("name"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self._close_step()

    def _close_step(self) -> None:
        if self._step_open:
            self._step_open = False
            reason = self._stop_reason or "stop"
            self.turn.step_finish(_STOP_REASONS.get(reason, reason))

    def _on_assistant(self, message: Mapping[str, Any]) -> None:
        for block in _blocks(message):
            if block.get("type") != "tool_use":
                continue
            call_id, name = str(block.get("id")), str(block.get("name"))
            data = _mapping(block.get("input"))
            self._names[call_id] = name
            self.turn.tool_start(call_id, name, data)
            if name == "TodoWrite":
                self.turn.set_todos(_todos(data))

    def _on_user(self, message: Mapping[str, Any]) -> None:
        for block in _blocks(message):
            if block.get("type") != "tool_result":
                continue
            call_id = str(block.get("tool_use_id"))
            text = _text(block.get("content"))
            name = self._names.get(call_id, "")
            if block.get("is_error"):
                self.turn.tool_end(call_id, error=text or "the tool failed", name=name)
            else:
                self.turn.tool_end(call_id, output=text, name=name)

    def _on_result(self, message: Mapping[str, Any]) -> None:
        self._close_step()
        self.ended = True
        outcome = self.turn.outcome
        if message.get("is_error") and not self.rejected:
            error = _result_error(message)
            if self.resumed and not message.get("num_turns") \
                    and error.startswith("No conversation found"):
                self.lost = True
                return
            outcome.reason, outcome.error = "error", error
        elif isinstance(message.get("result"), str) and not outcome.text:
            outcome.text = message["result"]

    # --- permission prompts --------------------------------------------------------------

    async def _on_control(self, message: Mapping[str, Any]) -> None:
        request_id = str(message.get("request_id"))
        request = message.get("request")
        if not isinstance(request, dict) or request.get("subtype") != "can_use_tool":
            subtype = request.get("subtype") if isinstance(request, dict) else None
            await self._answer(request_id, error=f"unsupported control request {subtype!r}")
            return
        call_id = str(request.get("tool_use_id") or request_id)
        name = str(request.get("tool_name"))
        data = _mapping(request.get("input"))
        self._names.setdefault(call_id, name)
        scope = self._asks[request_id] = anyio.CancelScope()
        answer: dict[str, Any] | None = None
        try:
            with scope:
                refusal = await self.turn.permit(call_id, name, data)
                if refusal is None:
                    answer = {"behavior": "allow", "updatedInput": data}
                    self.turn.tool_running(call_id)
                else:
                    answer = {"behavior": "deny", "message": refusal}
        except Rejected:
            self._reject()
            answer = {"behavior": "deny", "message": "The user rejected this call.",
                      "interrupt": True}
        except Exception as exc:
            self.failure = exc
            self._reject(rejected=False)
            answer = {"behavior": "deny", "message": f"permission check failed: {exc}",
                      "interrupt": True}
        finally:
            self._asks.pop(request_id, None)
        if answer is not None:  # None: Claude cancelled the request, it wants no answer
            await self._answer(request_id, answer)

    def _reject(self, rejected: bool = True) -> None:
        """Stop the turn: Claude is denied with `interrupt` and given a while to end it."""
        self.rejected = self.rejected or rejected
        deadline = anyio.current_time() + REJECT_SECONDS
        self._scope.deadline = min(self._scope.deadline, deadline)

    async def _answer(self, request_id: str, response: Mapping[str, Any] | None = None, *,
                      error: str | None = None) -> None:
        if error is not None:
            body: dict[str, Any] = {"subtype": "error", "request_id": request_id,
                                    "error": error}
        else:
            body = {"subtype": "success", "request_id": request_id,
                    "response": dict(response or {})}
        await self.process.send_json({"type": "control_response", "response": body})


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    inner = message.get("message")
    content = inner.get("content") if isinstance(inner, dict) else None
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _text(content: Any) -> str:
    """A tool result's text: a string, or the text of its blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(block["text"] for block in content if isinstance(block, dict)
                         and isinstance(block.get("text"), str))
    return ""


def _todos(data: Mapping[str, Any]) -> list[Todo]:
    todos: list[Todo] = []
    entries = data.get("todos")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            continue
        status = entry.get("status")
        todos.append(Todo(id=str(entry.get("id") or index + 1), content=entry["content"],
                          status=status if status in _TODO_STATUS else "pending"))
    return todos


def _result_error(message: Mapping[str, Any]) -> str:
    """The most telling text of a failed `result`: its errors, its result text, its
    subtype."""
    errors = message.get("errors")
    if isinstance(errors, list):
        texts = [str(error) for error in errors if error]
        if texts:
            return "; ".join(texts)
    result = message.get("result")
    if isinstance(result, str) and result.strip():
        return result.strip()
    subtype = message.get("subtype")
    return f"Claude Code failed ({subtype})" if subtype else "Claude Code failed"


"""The agent loop: one turn is `step()` until the model stops calling tools.

A step calls the model (with retries for failures before any output), streams its text and
reasoning into the log, then runs each tool call through the permission broker and the tool.
Every change is an event; the caller emits the turn's single `turn-end`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .._exceptions import ContainerGone, ProviderError, SandboxError, SandboxUnavailable
from .._types import (
    AgentConfig,
    ArtifactCreatedEvent,
    PatchEvent,
    PatchPart,
    PermissionAction,
    PermissionRequest,
    PermissionRules,
    QuestionRequest,
    ReasoningDeltaEvent,
    RetryEvent,
    RetryPart,
    SnapshotEvent,
    SnapshotPart,
    StepFinishEvent,
    StepFinishPart,
    StepStartEvent,
    StepStartPart,
    TextDeltaEvent,
    TodoUpdatedEvent,
    Tokens,
    ToolEndEvent,
    ToolPart,
    ToolRunningEvent,
    ToolStartEvent,
    ToolState,
    TurnEndReason,
)
from ..providers.base import (
    Finish,
    ModelMessage,
    ModelRequest,
    Provider,
    ReasoningDelta,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
)
from ..sandbox.base import Sandbox
from ..service._eventlog import EventLog
from ._broker import PermissionBroker, now
from ._history import capped, new_id
from ._permissions import always_patterns, evaluate, merge_always
from ._pricing import Price, cost_of
from ._questions import QuestionBroker
from ._snapshots import Snapshots
from .base import PreparedCall, Tool, ToolContext, ToolError, ToolOutput

__all__ = ["Outcome", "Rejected", "Turn", "permit", "run_turn"]

log: logging.Logger = logging.getLogger("sandbox_sessions.agent")

YIELD_EVERY = 512
"""Model events handled between two trips through the event loop."""

T = TypeVar("T")
_STRICTNESS: tuple[PermissionAction, ...] = ("allow", "ask", "deny")


@dataclass
class Turn:
    """Everything one turn needs. `rules` is the session's live copy; `save_rules` persists
    it after an `always` reply."""

    session_id: str
    message_id: str
    model: str
    model_name: str
    config: AgentConfig
    provider: Provider | None
    """None for a harness: the agent CLI in the sandbox calls its model itself."""
    tools: Mapping[str, Tool]
    sandbox: Sandbox
    workdir: str
    events: EventLog
    broker: PermissionBroker
    prices: Mapping[str, Price]
    rules: PermissionRules
    save_rules: Callable[[PermissionRules], Awaitable[None]]
    retry_delays: Sequence[float] = (0.5, 1.0, 2.0)
    tokens_left: int | None = None
    """Of the session's token budget, what this turn may use (None: no budget)."""
    questions: QuestionBroker | None = None
    """Where the `question` tool's questions wait (None: nobody can answer)."""
    summarize: bool = False
    """A compaction: the model is asked for a summary, with no tools."""
    subtasks: Callable[[Turn, str, str, str], Awaitable[tuple[str, str]]] | None = None
    """Runs a `task` call's subtask (see `ToolContext.run_subtask`)."""
    snapshots: Snapshots | None = None
    """The workspace's snapshots (None: off, or failed earlier in the turn)."""
    snapshot: str | None = None
    """The latest snapshot's tree: the workspace as the turn's tools last left it."""
    prompt_id: str | None = None
    """The user message whose snapshot the turn takes first (None: a compaction)."""
    snapshot_taken: anyio.Event = field(default_factory=anyio.Event)
    """Set once the prompt's snapshot is taken (or failed): tools wait for it."""
    prompt: str = ""
    """The user's prompt (a harness sends it to its CLI)."""
    conversation: str | None = None
    """A harness's conversation id, as the session's last turn left it."""


@dataclass
class Outcome:
    reason: TurnEndReason
    error: str | None = None
    finish: str | None = None
    tokens: Tokens = field(default_factory=Tokens)
    cost: float = 0.0
    text: str = ""
    """The final step's text (a summary's, for a compaction)."""
    conversation: str | None = None
    """A harness's own conversation id, which the session's next turn continues."""


@dataclass
class _StepResult:
    text: str = ""
    reasoning: str = ""
    signature: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish: str = "stop"
    started: bool = False


class Rejected(Exception):
    """A reject without a message: the turn ends with reason `rejected`."""


def _emit(turn: Turn, kind: type[Any], **fields: Any) -> Any:
    return turn.events.emit(turn.session_id, kind, message_id=turn.message_id, **fields)


async def run_turn(turn: Turn, history: list[ModelMessage], outcome: Outcome) -> Outcome:
    """Run steps until the model answers without tool calls; `history` grows as it goes.

    `outcome` is updated as steps finish, so its totals are right even if the turn is
    cancelled (aborted) half way. The prompt's snapshot is taken meanwhile, while the first
    model call runs (which changes no file); no tool runs before it is taken.
    """
    async with anyio.create_task_group() as group:
        if turn.snapshots is not None and turn.prompt_id is not None:
            group.start_soon(_snapshot_prompt, turn)
        else:
            turn.snapshot_taken.set()
        return await _steps(turn, history, outcome)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the group may swallow)


async def _snapshot_prompt(turn: Turn) -> None:
    """Snapshot the workspace for the turn's prompt (a `snapshot` event). A failure turns
    snapshots off for the turn (logged); a container that is gone fails the tool calls."""
    assert turn.snapshots is not None
    assert turn.prompt_id is not None
    try:
        track = await turn.snapshots.track()
    except SandboxError as exc:
        log.warning("session %s: the turn runs without snapshots: %s", turn.session_id, exc)
        turn.snapshots = None
    else:
        turn.snapshot = track.tree
        turn.events.emit(turn.session_id, SnapshotEvent, message_id=turn.prompt_id,
                         part=SnapshotPart(id=new_id("prt"), snapshot=track.tree))
    finally:
        turn.snapshot_taken.set()


async def _steps(turn: Turn, history: list[ModelMessage], outcome: Outcome) -> Outcome:
    for _ in range(turn.config.max_steps):
        if turn.tokens_left is not None and outcome.tokens.total >= turn.tokens_left:
            budget = turn.config.token_budget
            outcome.reason = "limit"
            outcome.error = f"the session's token budget ({budget}) is spent"
            return outcome
        _emit(turn, StepStartEvent, part=StepStartPart(id=new_id("prt")))
        try:
            step = await _call_model(turn, history)
        except ProviderError as exc:
            outcome.reason, outcome.error = "error", str(exc)
            return outcome
        tokens = _tokens(step.usage)
        cost = cost_of(turn.model, tokens, turn.prices)
        if step.calls:
            await turn.snapshot_taken.wait()
        snapshot = turn.snapshot if step.calls and turn.snapshots is not None else None
        _emit(turn, StepFinishEvent, part=StepFinishPart(id=new_id("prt"), reason=step.finish,
                                                          tokens=tokens, cost=cost,
                                                          snapshot=snapshot))
        outcome.tokens, outcome.cost = outcome.tokens + tokens, outcome.cost + cost
        outcome.finish = step.finish
        content = ((TextContent(step.text),) if step.text else ()) + tuple(step.calls)
        history.append(ModelMessage("assistant", content, step.reasoning, step.signature))
        if not step.calls:
            outcome.text = step.text
            return outcome
        try:
            results = await _run_calls(turn, step.calls)
        except Rejected:
            outcome.reason = "rejected"
            await _patch(turn)
            return outcome
        await _patch(turn)
        history.append(ModelMessage("user", tuple(results)))
    outcome.reason = "limit"
    outcome.error = f"the turn reached its {turn.config.max_steps} steps (max_steps)"
    return outcome


async def _patch(turn: Turn) -> None:
    """Snapshot the workspace after a step's tool calls and emit a `patch` part listing the
    files they changed. A snapshot that fails turns snapshots off for the rest of the turn
    (logged); the turn goes on."""
    if turn.snapshots is None or turn.snapshot is None:
        return
    try:
        track = await turn.snapshots.track(since=turn.snapshot)
    except (ContainerGone, SandboxUnavailable):
        raise
    except SandboxError as exc:
        log.warning("session %s: snapshots are off for this turn: %s", turn.session_id, exc)
        turn.snapshots = None
        return
    if track.changed:
        _emit(turn, PatchEvent, part=PatchPart(id=new_id("prt"), hash=turn.snapshot,
                                               files=track.changed, truncated=track.truncated))
    turn.snapshot = track.tree


def _tokens(usage: Usage) -> Tokens:
    return Tokens(input=usage.input, output=usage.output, reasoning=usage.reasoning,
                  cache_read=usage.cache_read, cache_write=usage.cache_write)


async def _call_model(turn: Turn, history: list[ModelMessage]) -> _StepResult:
    specs = tuple(ToolSpec(t.name, t.description, t.parameters) for t in turn.tools.values())
    request = ModelRequest(model=turn.model_name, system=turn.config.system,
                           messages=tuple(history), tools=specs, options=turn.config.options)
    for attempt, delay in enumerate([*turn.retry_delays, None]):
        step = _StepResult()
        try:
            await _stream_into(turn, request, step)
            return step
        except ProviderError as exc:
            if not exc.retryable or step.started or delay is None:
                raise
            part = RetryPart(id=new_id("prt"), attempt=attempt + 1, error=str(exc), delay=delay)
            _emit(turn, RetryEvent, part=part)
            await anyio.sleep(delay)
    raise AssertionError("unreachable")


async def _stream_into(turn: Turn, request: ModelRequest, step: _StepResult) -> None:
    assert turn.provider is not None, "a harness's turn has no provider"
    text_id = reasoning_id = ""
    text: list[str] = []
    reasoning: list[str] = []
    count = 0
    async for event in turn.provider.stream(request):
        step.started = True
        count += 1
        if count % YIELD_EVERY == 0:
            # Let the log's writer and readers work while a fast model streams on, so
            # committing, publishing and reading overlap with producing (and abort can act).
            await anyio.lowlevel.checkpoint()
        if isinstance(event, TextDelta):
            text_id = text_id or new_id("prt")
            text.append(event.text)
            _emit(turn, TextDeltaEvent, part_id=text_id, delta=event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning_id = reasoning_id or new_id("prt")
            reasoning.append(event.text)
            step.signature = event.signature or step.signature
            _emit(turn, ReasoningDeltaEvent, part_id=reasoning_id, delta=event.text,
                  signature=event.signature)
        elif isinstance(event, ToolCall):
            step.calls.append(event)
        elif isinstance(event, Usage):
            step.usage = event
        elif isinstance(event, Finish):
            step.finish = event.reason
    step.text, step.reasoning = "".join(text), "".join(reasoning)


async def _run_calls(turn: Turn, calls: list[ToolCall]) -> list[ToolResultContent]:
    results: list[ToolResultContent] = []
    for index, call in enumerate(calls):
        try:
            results.append(await _run_call(turn, call))
        except Rejected:
            for skipped in calls[index + 1:]:
                part = _pending_part(turn, skipped)
                _end(turn, part, error="not run: the user rejected an earlier call")
            raise
    return results


def _pending_part(turn: Turn, call: ToolCall) -> ToolPart:
    state = ToolState(status="pending", input=dict(call.input), time_start=now())
    part = ToolPart(id=new_id("prt"), tool=call.name, call_id=call.id, state=state)
    _emit(turn, ToolStartEvent, part=part)
    return part


def _end(turn: Turn, part: ToolPart, *, error: str | None = None,
         output: ToolOutput | None = None) -> ToolResultContent:
    update: dict[str, Any] = {"time_end": now()}
    if output is None:
        update.update(status="error", error=error)
    else:
        update.update(status="completed", output=output.output, title=output.title,
                      metadata={**output.metadata, "is_error": output.is_error})
    part = part.model_copy(update={"state": part.state.model_copy(update=update)})
    _emit(turn, ToolEndEvent, part=part)
    text = output.output if output is not None else error or "the call failed"
    return ToolResultContent(part.call_id, capped(text, turn.config.max_tool_output),
                             is_error=output is None or output.is_error)


async def _prepare(tool: Tool, input: Mapping[str, Any], ctx: ToolContext) -> PreparedCall:
    """The call's patterns and its bound run: from `prepare` when the tool has one, else from
    `permission_pattern` and `run` (see `PreparingTool`)."""
    prepare = getattr(tool, "prepare", None)  # not isinstance: that would read every property
    if callable(prepare):
        prepared = await prepare(input, ctx)
        if not isinstance(prepared, PreparedCall) or not prepared.patterns:
            raise ToolError(f"{tool.name}.prepare() gave no PreparedCall with patterns")
        return prepared
    return PreparedCall(patterns=(tool.permission_pattern(input, ctx),),
                        run=functools.partial(tool.run, input, ctx))


async def _guarded(turn: Turn, part: ToolPart,
                   step: Callable[[], Awaitable[T]]) -> T | ToolResultContent:
    """`step()`'s value, or the ended part's result when it failed as a tool may fail. An
    abort or a sandbox that is gone ends the part and goes on up."""
    try:
        return await step()
    except anyio.get_cancelled_exc_class():
        _end(turn, part, error="aborted")
        raise
    except (ContainerGone, SandboxUnavailable):
        _end(turn, part, error="the sandbox is not available")
        raise
    except (ToolError, SandboxError) as exc:
        return _end(turn, part, error=str(exc))


async def _run_call(turn: Turn, call: ToolCall) -> ToolResultContent:
    part = _pending_part(turn, call)
    tool = turn.tools.get(call.name)
    if tool is None:
        return _end(turn, part, error=f"unknown tool {call.name!r}")
    ask_user = None if turn.questions is None else functools.partial(_ask_user, turn, call.id)
    subtask = None if turn.subtasks is None else functools.partial(turn.subtasks, turn)
    context = ToolContext(sandbox=turn.sandbox, session_id=turn.session_id, call_id=call.id,
                          workdir=turn.workdir, timeout=turn.config.tool_timeout,
                          ask_user=ask_user, run_subtask=subtask)
    prepared = await _guarded(turn, part, functools.partial(_prepare, tool, call.input, context))
    if isinstance(prepared, ToolResultContent):
        return prepared
    try:
        refusal = await permit(turn, part, tool.name, prepared.patterns)
    except Rejected:
        _end(turn, part, error="rejected by the user")
        raise
    except anyio.get_cancelled_exc_class():
        _end(turn, part, error="aborted while waiting for permission")
        raise
    if refusal is not None:
        return _end(turn, part, error=refusal)
    running = part.model_copy(update={"state": part.state.model_copy(update={"status": "running"})})
    _emit(turn, ToolRunningEvent, part=running)
    output = await _guarded(turn, running, prepared.run)
    if isinstance(output, ToolResultContent):
        return output
    if output.todos is not None:
        turn.events.emit(turn.session_id, TodoUpdatedEvent, todos=list(output.todos))
    if output.artifact is not None:
        turn.events.emit(turn.session_id, ArtifactCreatedEvent, artifact=output.artifact)
    return _end(turn, running, output=output)


async def _ask_user(turn: Turn, call_id: str, question: str, options: Sequence[str],
                    allow_custom: bool) -> str | None:
    assert turn.questions is not None
    request = QuestionRequest(id=new_id("que"), session_id=turn.session_id,
                              message_id=turn.message_id, call_id=call_id, question=question,
                              options=list(options), allow_custom=allow_custom, time=now())
    return await turn.questions.ask(request, turn.config)


def _verdict(turn: Turn, tool: str, patterns: Sequence[str]) -> tuple[PermissionAction, str]:
    """The strictest action over `patterns`, and the first pattern that drew it."""
    verdicts = [(evaluate(turn.rules, tool, pattern), pattern) for pattern in patterns]
    return max(verdicts, key=lambda verdict: _STRICTNESS.index(verdict[0]))


async def permit(turn: Turn, part: ToolPart, tool: str, patterns: Sequence[str],
                 metadata: Mapping[str, Any] | None = None) -> str | None:
    """None when the call of `tool` may run; else the error the call ends with. Raises
    `Rejected` for a reject without a message.

    Every pattern is judged (a file tool's path as written and resolved) and the strictest
    verdict wins; an `always` reply allows each of them from then on. `metadata` is added to
    the request's (which holds the call's input).
    """
    action, pattern = _verdict(turn, tool, patterns)
    if action == "allow":
        return None
    if action == "deny":
        return f"denied by the session's permission rules ({tool}: {pattern})"
    always = list(dict.fromkeys(
        allowed for each in patterns for allowed in always_patterns(tool, each)))
    request = PermissionRequest(
        id=new_id("per"), session_id=turn.session_id, message_id=turn.message_id,
        call_id=part.call_id, tool=tool, patterns=list(patterns), always=always,
        metadata={"input": part.state.input, **(metadata or {})}, time=now())
    answer = await turn.broker.ask(request, turn.config)
    if answer.reply == "always":
        turn.rules = merge_always(turn.rules, tool, always)
        await turn.save_rules(turn.rules)
    if answer.reply != "reject":
        return None
    if answer.message is None:
        raise Rejected()
    return f"the user rejected this call: {answer.message}"

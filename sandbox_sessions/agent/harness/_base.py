"""What every harness bridge shares: the turn, the proxy, typed events, and permissions.

A bridge (`_claude.py`, `_codex.py`, `_opencode.py`) runs one turn of an agent CLI inside the
sandbox and translates the CLI's native stream into our events through a `HarnessTurn`:
`text`, `reasoning`, `step_start`/`step_finish`, `tool_start`/`tool_running`/`tool_end`,
`set_todos`, and `permit` for the CLI's permission prompts. `permit` maps the CLI's tool onto
ours (`ToolMap`), so one rule set serves every harness, and asks the session's permission
broker before the CLI is answered.

Tokens and cost are the model proxy's: it reads them from each proxied response, whatever the
CLI reports, and each `step_finish` carries what the model used since the step before.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..._types import (
    Event,
    ReasoningDeltaEvent,
    StepFinishEvent,
    StepFinishPart,
    StepStartEvent,
    StepStartPart,
    TextDeltaEvent,
    Todo,
    TodoUpdatedEvent,
    Tokens,
    ToolEndEvent,
    ToolPart,
    ToolRunningEvent,
    ToolStartEvent,
    ToolState,
)
from .._broker import now
from .._history import new_id
from .._loop import Outcome, Turn, permit
from .._pricing import cost_of
from .._proxy import ModelProxy, ProxyProvider
from ._process import StdioSandbox

__all__ = ["Harness", "HarnessTurn", "ToolMap", "absolute", "command_of", "path_of"]

log: logging.Logger = logging.getLogger("sandbox_sessions.harness")

Patterns = Callable[[Mapping[str, Any], str], Sequence[str]]
"""The permission patterns of a call, from its input and the workdir."""
ToolMap = Mapping[str, tuple[str, Patterns]]
"""A CLI's tool name -> our tool's name and how its call's patterns are read."""


def command_of(*keys: str) -> Patterns:
    """Patterns of a shell tool: the command line, the first of `keys` the input has (a list
    of arguments is joined as a shell would read it)."""
    def patterns(data: Mapping[str, Any], workdir: str) -> Sequence[str]:
        for key in keys:
            value = data.get(key)
            if isinstance(value, str):
                return [value]
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return [_shell_line(value)]
        return [json.dumps(dict(data), sort_keys=True)]
    return patterns


def absolute(path: str, workdir: str) -> str:
    """`path` made absolute from the workdir and normalized, as file tools' patterns are."""
    return posixpath.normpath(posixpath.join(workdir, path))


def path_of(*keys: str) -> Patterns:
    """Patterns of a file tool: the path (the first of `keys` the input has), made absolute
    from the workdir and normalized; the workdir itself when the input names none."""
    def patterns(data: Mapping[str, Any], workdir: str) -> Sequence[str]:
        for key in keys:
            value = data.get(key)
            if isinstance(value, str) and value:
                return [absolute(value, workdir)]
        return [workdir]
    return patterns


def _shell_line(argv: Sequence[str]) -> str:
    """`bash -lc "<line>"` is the line itself; other argument lists are quoted and joined."""
    if len(argv) == 3 and posixpath.basename(argv[0]) in ("bash", "sh", "zsh") \
            and argv[1] in ("-c", "-lc"):
        return argv[2]
    return shlex.join(argv)


@dataclass
class HarnessTurn:
    """One turn of a harness: what the bridge reads, and how it reports."""

    turn: Turn
    prompt: str
    """The user's prompt."""
    resume: str | None
    """The CLI's conversation id the session's previous turn left (None: a new one)."""
    proxy: ModelProxy
    outcome: Outcome
    tools: ToolMap = field(default_factory=dict)
    _parts: dict[str, ToolPart] = field(default_factory=dict)
    _texts: dict[str, str] = field(default_factory=dict)
    _counted: Tokens = field(default_factory=Tokens)
    _steps: int = 0

    @property
    def sandbox(self) -> StdioSandbox:
        return self.turn.sandbox  # type: ignore[return-value]

    @property
    def model_name(self) -> str:
        """The model, without its provider prefix (`claude-sonnet-4-5`)."""
        return self.turn.model_name

    @property
    def workdir(self) -> str:
        return self.turn.workdir

    def _emit(self, kind: type[Event], **fields: Any) -> Any:
        return self.turn.events.emit(self.turn.session_id, kind,
                                     message_id=self.turn.message_id, **fields)

    def _part_id(self, kind: str, key: str) -> str:
        found = self._texts.get(f"{kind}:{key}")
        if found is None:
            found = self._texts[f"{kind}:{key}"] = new_id("prt")
        return found

    def text(self, delta: str, key: str = "") -> None:
        """A text delta; deltas of one `key` (the CLI's message or item id) make one part."""
        if delta:
            self._emit(TextDeltaEvent, part_id=self._part_id("text", key), delta=delta)
            self.outcome.text += delta

    def reasoning(self, delta: str, key: str = "") -> None:
        """A reasoning delta, as `text`."""
        if delta:
            self._emit(ReasoningDeltaEvent, part_id=self._part_id("reasoning", key),
                       delta=delta)

    def step_start(self) -> None:
        """A model call begins; the final text is the last step's."""
        self._steps += 1
        self.outcome.text = ""
        self._emit(StepStartEvent, part=StepStartPart(id=new_id("prt")))

    def step_finish(self, reason: str = "stop") -> None:
        """A model call ended: its tokens are what the proxy read since the step before."""
        used = self.proxy.usage
        tokens = Tokens(input=used.input - self._counted.input,
                        output=used.output - self._counted.output,
                        reasoning=used.reasoning - self._counted.reasoning,
                        cache_read=used.cache_read - self._counted.cache_read,
                        cache_write=used.cache_write - self._counted.cache_write)
        self._counted = used
        cost = cost_of(self.turn.model, tokens, self.turn.prices)
        self._emit(StepFinishEvent, part=StepFinishPart(id=new_id("prt"), reason=reason,
                                                         tokens=tokens, cost=cost))
        self.outcome.finish = reason

    @property
    def steps(self) -> int:
        return self._steps

    def our_tool(self, name: str) -> str:
        """Our name for the CLI's tool `name` (its own name when we have none)."""
        mapped = self.tools.get(name)
        return mapped[0] if mapped is not None else name

    def tool_start(self, call_id: str, name: str, data: Mapping[str, Any]) -> ToolPart:
        """A tool call the CLI makes (pending); again for the same id updates nothing."""
        part = self._parts.get(call_id)
        if part is not None:
            return part
        state = ToolState(status="pending", input=dict(data), time_start=now(),
                          metadata={"harness_tool": name})
        part = ToolPart(id=new_id("prt"), tool=self.our_tool(name), call_id=call_id,
                        state=state)
        self._parts[call_id] = part
        self._emit(ToolStartEvent, part=part)
        return part

    def tool_running(self, call_id: str, name: str = "", data: Mapping[str, Any] | None = None
                     ) -> None:
        """The call runs (started first when it was not)."""
        part = self.tool_start(call_id, name, data or {})
        if part.state.status != "pending":
            return
        part = part.model_copy(update={"state": part.state.model_copy(
            update={"status": "running"})})
        self._parts[call_id] = part
        self._emit(ToolRunningEvent, part=part)

    def tool_end(self, call_id: str, *, output: str | None = None, error: str | None = None,
                 title: str = "", metadata: Mapping[str, Any] | None = None,
                 name: str = "", data: Mapping[str, Any] | None = None) -> None:
        """The call ended: with `output`, or failed with `error`. A call never started is
        started first; one already ended is left as it is."""
        part = self.tool_start(call_id, name, data or {})
        if part.state.status in ("completed", "error"):
            return
        update: dict[str, Any] = {"time_end": now()}
        if error is not None:
            update.update(status="error", error=error)
        else:
            update.update(status="completed", output=output or "", title=title,
                          metadata={**part.state.metadata, **(metadata or {})})
        part = part.model_copy(update={"state": part.state.model_copy(update=update)})
        self._parts[call_id] = part
        self._emit(ToolEndEvent, part=part)

    def open_calls(self) -> list[str]:
        """The ids of the calls started and not ended."""
        return [call_id for call_id, part in self._parts.items()
                if part.state.status in ("pending", "running")]

    def set_todos(self, todos: Sequence[Todo]) -> None:
        """The CLI's todo list, as it stands now."""
        self.turn.events.emit(self.turn.session_id, TodoUpdatedEvent, todos=list(todos))

    async def permit(self, call_id: str, name: str, data: Mapping[str, Any]) -> str | None:
        """Ask the session's rules, then its broker, whether the CLI's call may run: None when
        it may, else the refusal the CLI is told. A reject without a message raises `Rejected`
        (the bridge denies the call and ends the turn: reason `rejected`)."""
        part = self.tool_start(call_id, name, data)
        mapped = self.tools.get(name)
        if mapped is None:
            ours, patterns = name, [json.dumps(dict(data), sort_keys=True)[:2000]]
        else:
            ours, patterns = mapped[0], list(mapped[1](data, self.workdir))
        return await permit(self.turn, part, ours, patterns or ["*"],
                            metadata={"harness_tool": name})


class Harness(Protocol):
    """One agent CLI: how its turn runs in the sandbox."""

    name: str
    """`claude-code`, `codex`, `opencode`."""
    provider: ProxyProvider
    """The wire format its model is reached with, through the proxy."""
    tools: ToolMap

    def check_model(self, model: str) -> None:
        """`InvalidArgument` when the CLI cannot use `model` (`provider/model`)."""

    async def run(self, turn: HarnessTurn) -> None:
        """Run the turn: emit its events and set `turn.outcome`'s `reason`, `error` and
        `conversation`; return when the CLI's turn has ended."""

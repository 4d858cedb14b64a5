"""A deterministic provider that plays a script: for offline tasks, demos and tests.

Each model call consumes the next entry of the script, in order. An entry is a mapping:

    text: str                 streamed as several TextDeltas
    reasoning: str            streamed as several ReasoningDeltas, before the text
    tool_calls: [{name, input, id?}]
    usage: {input, output, reasoning?, cache_read?, cache_write?}   estimated when absent
    error: {message, status?} the call fails with ProviderError (after any text)
    delay: seconds            waited before the first event

A script is a list of entries, or the path of a JSON or YAML file that holds one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._exceptions import InvalidArgument
from ._http import is_retryable_status
from .base import (
    Finish,
    ModelEvent,
    ModelRequest,
    ProviderError,
    ReasoningDelta,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    Usage,
)

__all__ = ["Script", "ScriptEntry", "ScriptedProvider"]

_WORDS = re.compile(r"\s*\S+\s*|\s+")
_CHARS_PER_TOKEN = 4

Script = Sequence[Mapping[str, Any]] | str | os.PathLike[str]
"""A list of entries, or the path of a JSON or YAML file holding one."""


class _Strict(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ScriptedCall(_Strict):
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class _ScriptedUsage(_Strict):
    input: int = Field(ge=0)
    output: int = Field(ge=0)
    reasoning: int = Field(default=0, ge=0)
    cache_read: int = Field(default=0, ge=0)
    cache_write: int = Field(default=0, ge=0)


class _ScriptedError(_Strict):
    message: str
    status: int | None = None


class ScriptEntry(_Strict):
    """One entry of a script, as the module's docstring describes it (what the task file
    validates its inline entries with)."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ScriptedCall] = Field(default_factory=list)
    usage: _ScriptedUsage | None = None
    error: _ScriptedError | None = None
    delay: float = Field(default=0.0, ge=0)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "entry"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _read_file(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the script {str(path)!r}: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"the script {str(path)!r} is not valid: {exc}") from exc


def _load(script: Script) -> tuple[ScriptEntry, ...]:
    """Read and validate a script; raises `InvalidArgument` naming the entry at fault."""
    where = ""
    raw: object = script
    if isinstance(script, str | os.PathLike):
        where = f" in {os.fspath(script)!r}"
        raw = _read_file(Path(script))
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        kind = type(raw).__name__
        raise InvalidArgument(f"a script must be a list of entries{where}, not {kind}")
    entries = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidArgument(
                f"script entry {index}{where} must be a mapping, not {type(item).__name__}"
            )
        try:
            entries.append(ScriptEntry.model_validate(dict(item)))
        except ValidationError as exc:
            raise InvalidArgument(f"script entry {index}{where}: {_describe(exc)}") from None
    return tuple(entries)


def _pieces(text: str) -> list[str]:
    """Split on whitespace boundaries, keeping the whitespace: the pieces join back exactly."""
    return _WORDS.findall(text)


def _tokens(chars: int) -> int:
    return (chars + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _request_chars(request: ModelRequest) -> int:
    size = len(request.system or "")
    for message in request.messages:
        size += len(message.reasoning)
        for part in message.content:
            if isinstance(part, TextContent):
                size += len(part.text)
            elif isinstance(part, ToolResultContent):
                size += len(part.output)
            else:
                size += len(part.name) + len(json.dumps(dict(part.input), default=str))
    for tool in request.tools:
        schema = json.dumps(dict(tool.parameters), default=str)
        size += len(tool.name) + len(tool.description) + len(schema)
    return size


def _usage(entry: ScriptEntry, request: ModelRequest) -> Usage:
    if entry.usage is not None:
        return Usage(**entry.usage.model_dump())
    calls = sum(len(call.name) + len(json.dumps(call.input)) for call in entry.tool_calls)
    reasoning = _tokens(len(entry.reasoning or ""))
    output = _tokens(len(entry.text or "") + calls) + reasoning
    return Usage(input=_tokens(_request_chars(request)), output=output, reasoning=reasoning)


class ScriptedProvider:
    """Plays a script of model turns, one entry per call, in order (see the module's doc).

    The script is read and validated at construction: a malformed one raises `InvalidArgument`
    naming the entry at fault. Text and reasoning are streamed in word-sized deltas whose join
    is the scripted text exactly. A call past the end raises `ProviderError`. Calls without an
    `id` get `call_<call>_<n>`. Every request received is kept in `requests`.
    """

    def __init__(self, script: Script) -> None:
        self._entries = _load(script)
        self._next = 0
        self.requests: list[ModelRequest] = []
        """The requests received so far, in order."""

    def __repr__(self) -> str:
        return f"ScriptedProvider(calls={self._next}/{len(self._entries)})"

    def skip(self, calls: int) -> None:
        """Consume `calls` entries unplayed: a session resumed after that many model calls
        goes on where it was, in this process or a new one."""
        self._next = min(self._next + max(calls, 0), len(self._entries))

    @property
    def remaining(self) -> int:
        """How many entries are left to play."""
        return len(self._entries) - self._next

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Play the next entry: reasoning, text, tool calls, usage, then `Finish`.

        The finish reason is `tool_calls` when the entry has calls, else `stop`. An entry with
        an `error` raises `ProviderError` after its text (retryable for 408, 409, 429 and
        5xx statuses). The entry is consumed when iteration starts.
        """
        if self._next >= len(self._entries):
            raise ProviderError(f"script exhausted after {len(self._entries)} calls")
        call_number, entry = self._next, self._entries[self._next]
        self._next += 1
        self.requests.append(request)
        if entry.delay:
            await anyio.sleep(entry.delay)
        for piece in _pieces(entry.reasoning or ""):
            yield ReasoningDelta(piece)
        for piece in _pieces(entry.text or ""):
            yield TextDelta(piece)
        if entry.error is not None:
            status = entry.error.status
            retryable = status is not None and is_retryable_status(status)
            raise ProviderError(entry.error.message, status=status, retryable=retryable)
        for index, call in enumerate(entry.tool_calls):
            call_id = call.id or f"call_{call_number}_{index}"
            yield ToolCall(id=call_id, name=call.name, input=call.input)
        yield _usage(entry, request)
        yield Finish("tool_calls" if entry.tool_calls else "stop")

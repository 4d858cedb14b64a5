"""What every built-in tool shares: typed input, its JSON schema, paths, and file errors.

A built-in tool declares a small pydantic model for its input. The model's JSON schema (inlined
and without titles, which some providers choke on) is the tool's `parameters`, and the model
validates each call, so a missing or ill-typed argument becomes a `ToolError` the model can read.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .._exceptions import (
    FileDecodeError,
    FileTooLarge,
    SandboxFileNotFound,
    SandboxPermissionError,
)
from ..sandbox.base import ShellRequest
from .base import ToolContext, ToolError, ToolOutput

__all__ = [
    "MAX_READ_BYTES",
    "BuiltinTool",
    "ToolInput",
    "file_errors",
    "file_mode",
    "read_text",
    "resolve_path",
    "schema_of",
]

MAX_READ_BYTES = 10 * 1024 * 1024
"""Largest file `read` and `edit` take in (10 MiB); larger ones are for `bash` (sed, head)."""


class ToolInput(BaseModel):
    """The input of one call. Unknown arguments are refused, so a misspelt one is reported."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)


InputT = TypeVar("InputT", bound=ToolInput)


def _clean(node: Any, defs: Mapping[str, Any]) -> Any:
    """`node` with `$ref`s inlined, titles dropped and `X | None` written as plain `X`."""
    if isinstance(node, list):
        return [_clean(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _clean(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
        (kept,) = [option for option in options if option != {"type": "null"}]
        rest = {k: v for k, v in node.items()
                if k != "anyOf" and not (k == "default" and v is None)}
        return _clean({**kept, **rest}, defs)
    # A property may be called "title": only drop the key where it holds a schema's title.
    return {
        key: _clean(value, defs)
        for key, value in node.items()
        if key != "$defs" and not (key == "title" and isinstance(value, str))
    }


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """A self-contained JSON Schema object for `model`, as providers take tool parameters."""
    raw = model.model_json_schema()
    cleaned: dict[str, Any] = _clean(raw, raw.get("$defs", {}))
    return cleaned


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "input"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


class BuiltinTool(Generic[InputT]):
    """The shared shape of the built-in tools: parse the input, then act on the typed model.

    Subclasses set `name`, `description` and `input_model`, implement `execute`, and
    `pattern` where the call has no `path` argument. Both `permission_pattern` and `run`
    raise `ToolError` for invalid input, so a malformed call fails before any permission is
    asked.
    """

    name: str
    description: str
    input_model: type[InputT]

    @property
    def parameters(self) -> Mapping[str, Any]:
        """The JSON Schema of `input_model`."""
        return schema_of(self.input_model)

    def parse(self, input: Mapping[str, Any]) -> InputT:
        """The call's input as the typed model; `ToolError` naming each bad argument."""
        try:
            return self.input_model.model_validate(input)
        except ValidationError as exc:
            raise ToolError(f"invalid input for {self.name}: {_describe(exc)}") from None

    def permission_pattern(self, input: Mapping[str, Any], ctx: ToolContext) -> str:
        """See `Tool.permission_pattern`."""
        return self.pattern(self.parse(input), ctx)

    async def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """See `Tool.run`."""
        return await self.execute(self.parse(input), ctx)

    def pattern(self, args: InputT, ctx: ToolContext) -> str:
        """The permission pattern of a validated call: by default the absolute path of its
        `path` argument (file tools). Tools without one override this."""
        path = getattr(args, "path", None)
        if not isinstance(path, str):
            raise NotImplementedError(f"{type(self).__name__} must define pattern()")
        return resolve_path(ctx, path)

    async def execute(self, args: InputT, ctx: ToolContext) -> ToolOutput:
        """Carry out a validated call."""
        raise NotImplementedError


def resolve_path(ctx: ToolContext, path: str) -> str:
    """`path` made absolute (relative ones from `ctx.workdir`) and normalized."""
    if not path or "\x00" in path:
        raise ToolError(f"not a usable path: {path!r}")
    joined = posixpath.normpath(posixpath.join(ctx.workdir, path))
    # normpath keeps a leading "//" (POSIX allows it a meaning); no sandbox path needs one.
    return "/" + joined.lstrip("/")


@contextmanager
def file_errors() -> Iterator[None]:
    """Turn the sandbox's file errors (missing, forbidden, too large) into `ToolError`s."""
    try:
        yield
    except (SandboxFileNotFound, SandboxPermissionError, FileTooLarge, FileDecodeError) as exc:
        raise ToolError(str(exc)) from exc


async def read_text(ctx: ToolContext, path: str) -> str:
    """The UTF-8 text of the file at absolute `path`; `ToolError` if missing, binary or large."""
    with file_errors():
        chunks = [c async for c in ctx.sandbox.stream_file(path, max_bytes=MAX_READ_BYTES)]
    data = b"".join(chunks)
    if b"\x00" in data[:8192]:
        raise ToolError(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolError(f"{path} is not valid UTF-8 text (byte {exc.start})") from None


async def file_mode(ctx: ToolContext, path: str) -> int | None:
    """The permission bits of an existing file, or None when there is none (or no `stat`).

    Writes replace the file atomically; passing its old mode on keeps a script executable.
    """
    # -L: the mode of what a link points to; a link's own mode (777) must not be copied.
    request = ShellRequest(command=f"stat -L -c %a -- {shlex.quote(path)} 2>/dev/null",
                           timeout=ctx.timeout, cwd="/", max_output=64)
    result = await ctx.sandbox.shell(request)
    text = result.stdout.strip()
    if not result.ok or not text or any(c not in "01234567" for c in text):
        return None
    return int(text, 8) & 0o7777

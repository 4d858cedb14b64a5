"""What every built-in tool shares: typed input, its JSON schema, paths, and file errors.

A built-in tool declares a small pydantic model for its input. The model's JSON schema (inlined
and without titles, which some providers choke on) is the tool's `parameters`, and the model
validates each call, so a missing or ill-typed argument becomes a `ToolError` the model can read.

A tool that acts on a path (`PathTool`) is judged on that path twice: as written (made absolute
from the workdir and normalized) and as the container resolves it, links followed (`realpath
-m`: missing components are kept, so a write to a new file is judged where it will land). It
then acts on the resolved path, so a link changed after the check cannot redirect it.
"""

from __future__ import annotations

import functools
import posixpath
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .._exceptions import (
    FileDecodeError,
    FileTooLarge,
    SandboxFileNotFound,
    SandboxPermissionError,
)
from .._types import ShellResult
from ..sandbox.base import ShellRequest
from .base import PreparedCall, ToolContext, ToolError, ToolOutput

__all__ = [
    "MAX_READ_BYTES",
    "BuiltinTool",
    "PathTool",
    "Target",
    "ToolInput",
    "file_errors",
    "file_mode",
    "read_text",
    "real_paths",
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

    Subclasses set `name`, `description` and `input_model`, and implement `pattern` and
    `execute` (tools acting on a path derive from `PathTool` instead). `permission_pattern`,
    `prepare` and `run` all raise `ToolError` for invalid input, so a malformed call fails
    before any permission is asked.
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
        """See `Tool.permission_pattern`: the call as written."""
        return self.pattern(self.parse(input), ctx)

    async def prepare(self, input: Mapping[str, Any], ctx: ToolContext) -> PreparedCall:
        """See `PreparingTool.prepare`: the pattern as written, and `execute` on the input."""
        args = self.parse(input)
        return PreparedCall(patterns=(self.pattern(args, ctx),),
                            run=functools.partial(self.execute, args, ctx))

    async def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """See `Tool.run`: the call prepared, then carried out (no rule is judged here)."""
        prepared = await self.prepare(input, ctx)
        return await prepared.run()

    def pattern(self, args: InputT, ctx: ToolContext) -> str:
        """The permission pattern of a validated call, as written."""
        raise NotImplementedError(f"{type(self).__name__} must define pattern()")

    async def execute(self, args: InputT, ctx: ToolContext) -> ToolOutput:
        """Carry out a validated call."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Target:
    """The path a file tool acts on, as the call wrote it and as the container resolved it."""

    written: str
    """Absolute (relative paths taken from the workdir) and normalized, links left as they are."""
    real: str
    """With every link followed, when the call was prepared: what the tool acts on."""

    @property
    def patterns(self) -> tuple[str, ...]:
        """What the rules judge: the written path, then the real one when it differs."""
        return (self.written,) if self.real == self.written else (self.written, self.real)


class PathTool(BuiltinTool[InputT]):
    """A built-in tool acting on the path in its `path` argument (a file, or a folder searched).

    `prepare` resolves that path in the sandbox, links followed; the rules judge both forms
    (`Target.patterns`), and `act` gets the `Target` and works on `target.real`.
    """

    def pattern(self, args: InputT, ctx: ToolContext) -> str:
        """The absolute, normalized path of the `path` argument, links not followed."""
        path = getattr(args, "path", None)
        if not isinstance(path, str):
            raise NotImplementedError(f"{type(self).__name__} has no path argument")
        return resolve_path(ctx, path)

    async def prepare(self, input: Mapping[str, Any], ctx: ToolContext) -> PreparedCall:
        """Both forms of the path as patterns, and `act` bound to them."""
        args = self.parse(input)
        written = self.pattern(args, ctx)
        (real,) = await real_paths(ctx, written)
        target = Target(written=written, real=real)
        return PreparedCall(patterns=target.patterns,
                            run=functools.partial(self.act, args, ctx, target))

    async def act(self, args: InputT, ctx: ToolContext, target: Target) -> ToolOutput:
        """Carry out a validated call on `target.real`."""
        raise NotImplementedError


def resolve_path(ctx: ToolContext, path: str) -> str:
    """`path` made absolute (relative ones from `ctx.workdir`) and normalized."""
    if not path or "\x00" in path:
        raise ToolError(f"not a usable path: {path!r}")
    joined = posixpath.normpath(posixpath.join(ctx.workdir, path))
    # normpath keeps a leading "//" (POSIX allows it a meaning); no sandbox path needs one.
    return "/" + joined.lstrip("/")


# Each path is resolved by `realpath -m` (GNU coreutils). Where a link cannot be resolved (a
# loop), realpath keeps it in the result as it is; a tool acting on that would follow
# whatever the link says by then, so a result with a link left in it is refused. Paths come
# in as quoted arguments and go out NUL-terminated: a name may hold a new line.
_RESOLVE = r"""
for p in "$@"; do
  r=$(realpath -m -- "$p" && echo .) || exit 3
  r=${r%?.}
  q=$r
  while [ -n "$q" ]; do
    if [ -L "$q" ]; then echo "$q is a link that does not resolve (a loop?)" >&2; exit 4; fi
    q=${q%/*}
  done
  printf '%s\0' "$r"
done
"""


async def real_paths(ctx: ToolContext, *paths: str) -> list[str]:
    """Each absolute `path` as the sandbox resolves it, links followed, in one command.

    Components that do not exist are kept as written (`realpath -m`), so a new file under a
    linked folder resolves into the link's target. `ToolError` when a path cannot be resolved
    (a link loop, no `realpath` in the image, a name that is not UTF-8): the call is refused
    rather than judged on a path it might not act on.
    """
    command = "set -- " + " ".join(shlex.quote(path) for path in paths) + _RESOLVE
    result = await ctx.sandbox.shell(ShellRequest(
        command=command, timeout=ctx.timeout, cwd="/", max_output=64 * 1024 * len(paths)))
    resolved = _printed_paths(result, len(paths))
    if resolved is None:
        problem = "timed out" if result.timed_out else (
            result.stderr.strip() or "not a usable path (a name that is not UTF-8?)")
        raise ToolError(f"cannot resolve {', '.join(paths)}: {problem}")
    return resolved


def _printed_paths(result: ShellResult, count: int) -> list[str] | None:
    """The `count` paths `_RESOLVE` printed, or None when it failed or printed anything else
    (a name not valid UTF-8 comes out with U+FFFD in it: not a path the tool could act on)."""
    if not result.ok or result.truncated:
        return None
    *paths, rest = result.stdout.split("\x00")
    if rest or len(paths) != count:
        return None
    if any(not path.startswith("/") or "\ufffd" in path for path in paths):
        return None
    return paths


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

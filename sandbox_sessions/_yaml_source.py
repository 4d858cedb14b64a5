"""YAML files written by hand, read with the line of every key, and errors that name it.

The CLI's YAML files (the task file, and later `--permissions FILE`) are written by people and
read in CI, where a message must say which line and which key is wrong. PyYAML's `safe_load`
forgets lines, silently keeps the last of two equal keys, and expands aliases (a few lines of
`&a [*b, *b, ...]` grow into gigabytes). So a file is composed into nodes (`yaml.compose`'s
nodes carry their `start_mark`) and turned into plain data here, with the line of each key
path (`("steps", 2, "shell")`), refusing on the way:

- aliases (`*name`), and so merge keys (`<<: *base`): refused outright, not counted, as a
  hand-written file has no need of them;
- keys that are not plain strings (`1:`, `null:`, `[a, b]:`, or `on:`, which YAML 1.1 reads as
  true), and a key given twice in one mapping (both lines named);
- tags other than YAML's own (`!!python/object`, `!custom`), more than one document, nesting
  deeper than `MAX_DEPTH` and more than `MAX_NODES` values.

Then `explain()` turns the first problem of a pydantic `ValidationError` into plain words at
its line: `task.yaml:14: steps[2].expect_artifact.min_bytes: must be an integer >= 0`.
Validators that find a problem inside the value they check raise `ProblemAt`, whose path goes
on from the field's. Pure functions but `read_text_file`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from ._exceptions import InvalidArgument

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "KeyPath",
    "Located",
    "ProblemAt",
    "compose",
    "describe_error",
    "explain",
    "format_path",
    "read_text_file",
]

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted."""
MAX_NODES = 100_000
"""Most values (scalars, lists, mappings) in one file."""

KeyPath = tuple[str | int, ...]
"""Where a value is: mapping keys and list indexes from the top (`("steps", 2, "shell")`)."""

_YAML = "tag:yaml.org,2002:"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SCALARS = {"str", "int", "float", "bool", "null", "timestamp"}
"""YAML's own scalar types; a date is let through to be refused as "not a string" later."""
_KIND_OF_TAG = {"bool": "true or false", "int": "a number", "float": "a number",
                "null": "null", "timestamp": "a date", "binary": "binary data"}


class ProblemAt(ValueError):
    """A validator's problem inside the value it checks: at `where` below the field."""

    def __init__(self, where: KeyPath, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Located:
    """A file's data, and the 1-based line of each key path in it."""

    source: str
    """The file as the user named it, which every message starts with."""
    data: object
    lines: dict[KeyPath, int]

    def line(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor that is in the file."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: KeyPath, message: str) -> InvalidArgument:
        """`file:line: path: message`, as an `InvalidArgument`."""
        return at_line(self.source, self.line(path), path, message)


def at_line(source: str, line: int, path: KeyPath, message: str) -> InvalidArgument:
    where = f"{format_path(path)}: " if path else ""
    return InvalidArgument(f"{source}:{line}: {where}{message}")


def format_path(path: KeyPath) -> str:
    """`steps[2].expect_file.path`; keys that are not plain words quoted (`bash["git *"]`)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


# --- reading ----------------------------------------------------------------------------------


def read_text_file(path: str | os.PathLike[str], *, what: str, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`; `InvalidArgument` naming
    `path` otherwise. Opened without blocking, so a FIFO fails at once instead of waiting."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(f"{name}: no such {what}") from None
    except OSError as exc:
        raise InvalidArgument(f"{name}: cannot open the {what} ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO, a device
        os.close(fd)
        raise InvalidArgument(f"{name}: the {what} is not a regular file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidArgument(f"{name}: the {what} is over {max_bytes} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidArgument(f"{name}:{line}: not UTF-8 text (byte "
                              f"0x{data[exc.start]:02x})") from None


# --- composing --------------------------------------------------------------------------------


class _Mark(Protocol):
    """PyYAML's marks (the pure Python one and the C one): where something starts."""

    @property
    def line(self) -> int: ...


class _Refused(Exception):
    """A hostile or unreadable construct, at a mark and a key path."""

    def __init__(self, mark: _Mark | None, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.line = 1 if mark is None else mark.line + 1
        self.message = message
        self.path = path


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, refusing aliases and bounding depth and size as it goes (its
    recursion would otherwise end in a `RecursionError`)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.count = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        peek: Callable[[], yaml.Event] = self.peek_event  # untyped in the stubs
        event = peek()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, f"aliases (*{event.anchor}) are not allowed in "
                                             "this file: write the value out")
        self.depth += 1
        self.count += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        if self.count > MAX_NODES:
            raise _Refused(event.start_mark, f"more than {MAX_NODES} values")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def compose(text: str, *, source: str) -> Located:
    """The data of a one-document YAML text with each key path's line (see the module's
    docstring for what is refused); `InvalidArgument` naming `source` and the line."""
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
    except _Refused as exc:
        raise at_line(source, exc.line, exc.path, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = 1 if mark is None else mark.line + 1
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "?"
        raise at_line(source, line, (), f"not valid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise at_line(source, line, (), f"not valid YAML: the character U+{exc.character:04X} "
                                        "is not allowed") from None
    lines: dict[KeyPath, int] = {}
    try:
        data = None if node is None else _data(node, (), lines, loader)
    except _Refused as exc:
        raise at_line(source, exc.line, exc.path, exc.message) from None
    return Located(source, data, lines)


def _data(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int],
          loader: _Loader) -> object:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        _check_tag(node, path, "map")
        return _mapping(node, path, lines, loader)
    if isinstance(node, yaml.SequenceNode):
        _check_tag(node, path, "seq")
        return [_data(item, (*path, index), lines, loader)
                for index, item in enumerate(node.value)]
    if node.tag.removeprefix(_YAML) not in _SCALARS:
        raise _Refused(node.start_mark, f"the tag {_short(node.tag)} is not allowed", path)
    try:
        value = loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise _Refused(node.start_mark, f"not a valid value: {exc.problem}", path) from None
    if isinstance(value, str) and "\x00" in value:
        raise _Refused(node.start_mark, "text must not contain a NUL character", path)
    return value


def _check_tag(node: yaml.Node, path: KeyPath, kind: str) -> None:
    if node.tag != _YAML + kind:
        raise _Refused(node.start_mark, f"the tag {_short(node.tag)} is not allowed", path)


def _short(tag: str) -> str:
    """A tag as it is written: `!!python/object`, `!custom`."""
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


def _mapping(node: yaml.MappingNode, path: KeyPath, lines: dict[KeyPath, int],
             loader: _Loader) -> dict[str, object]:
    result: dict[str, object] = {}
    first: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = _key(key_node, path)
        line = key_node.start_mark.line + 1
        if key in first:
            raise _Refused(key_node.start_mark, f"the key {key!r} is given twice, at lines "
                           f"{first[key]} and {line}", path)
        first[key] = line
        lines[(*path, key)] = line
        result[key] = _data(value_node, (*path, key), lines, loader)
    return result


def _key(node: yaml.Node, path: KeyPath) -> str:
    if node.tag == _YAML + "merge":
        raise _Refused(node.start_mark, "merge keys (<<) are not allowed", path)
    if not isinstance(node, yaml.ScalarNode):
        shape = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
        raise _Refused(node.start_mark, f"a key must be a string, not a {shape}", path)
    if node.tag != _YAML + "str":
        kind = _KIND_OF_TAG.get(node.tag.removeprefix(_YAML), node.tag)
        raise _Refused(node.start_mark, f"the key {node.value!r} is read as {kind}, not a "
                       "string: quote it", path)
    return str(node.value)


# --- validation errors in plain words ---------------------------------------------------------

_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "bool_type": "true or false", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "greater_than": "", "greater_than_equal": "", "less_than": "", "less_than_equal": "",
}


def explain(error: ValidationError, root: type[BaseModel], located: Located) -> InvalidArgument:
    """The problem of `error` on the earliest line of the file, as `file:line: path: words`.
    A missing key comes after every other problem: with a misspelt key (`stpes`), the
    unknown key says more than the missing one."""
    items = error.errors(include_url=False)
    found = [(item["type"] == "missing", *describe_error(item, root)) for item in items]
    _, path, message = min(found, key=lambda item: (item[0], located.line(item[1])))
    return located.error(path, message)


def describe_error(item: ErrorDetails, root: type[BaseModel]) -> tuple[KeyPath, str]:
    """Where one pydantic error is in the data validated as `root`, and what is wrong, in
    plain words."""
    path, field, owner = _walk(root, item["loc"])
    kind, ctx = item["type"], item.get("ctx", {})
    if kind == "missing":
        return path[:-1], f"missing key {path[-1]!r}"
    if kind == "extra_forbidden":
        keys = ", ".join(owner.model_fields) if owner is not None else "?"
        return path, f"unknown key {path[-1]!r} (expected one of: {keys})"
    if kind in {"value_error", "assertion_error"}:
        cause = ctx.get("error")
        if isinstance(cause, ProblemAt):
            return (*path, *cause.where), cause.message
        return path, str(cause) if cause is not None else item["msg"]
    if kind in _EXPECTED:
        return path, _expected(kind, item["input"], field)
    if kind == "literal_error":
        return path, f"must be one of {ctx.get('expected')}"
    if kind in {"string_too_short", "too_short"} and ctx.get("min_length") == 1:
        return path, "must not be empty"
    return path, item["msg"][:1].lower() + item["msg"][1:]


def _expected(kind: str, given: object, field: FieldInfo | None) -> str:
    """`must be an integer >= 0, not a string`: the type and the bounds of the field."""
    what = _EXPECTED[kind] or _kind_of(_unwrap(field.annotation) if field else None, given)
    bounds = _bounds(field)
    text = f"must be {what}{bounds}"
    return text if _EXPECTED[kind] == "" else f"{text}, not {_kind_of(None, given)}"


def _bounds(field: FieldInfo | None) -> str:
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = [f" {sign} {getattr(item, name)}" for item in (field.metadata if field else ())
             for name, sign in signs.items() if hasattr(item, name)]
    return " and".join(found)


def _kind_of(declared: object, value: object) -> str:
    """What `value` is, in words; for a number, what the field `declared` takes."""
    if declared in {int, float} and isinstance(value, int | float):
        return "an integer" if declared is int else "a number"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _walk(root: type[BaseModel], loc: tuple[str | int, ...]
          ) -> tuple[KeyPath, FieldInfo | None, type[BaseModel] | None]:
    """The key path that pydantic's `loc` stands for (with the tags of tagged unions left
    out: they are not keys of the file), the field it ends at, and the model that holds
    that field."""
    path: list[str | int] = []
    kind: object = root
    field: FieldInfo | None = None
    owner: type[BaseModel] | None = None
    for part in loc:
        kind = _unwrap(kind)
        member = _tagged(kind, part)
        if member is not None:
            kind = member
            continue
        path.append(part)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(part, str):
            owner, field = kind, kind.model_fields.get(part)
            kind = None if field is None else field.annotation
        elif get_origin(kind) is list and isinstance(part, int):
            owner, field, kind = None, None, get_args(kind)[0]
        else:
            owner, field, kind = None, None, None
    return tuple(path), field, owner


def _unwrap(kind: object) -> object:
    """`X` for `Annotated[X, ...]` and for `X | None`."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        elif get_origin(kind) in {Union, types.UnionType}:
            members = [arg for arg in get_args(kind) if arg is not type(None)]
            if len(members) != 1:
                return kind
            kind = members[0]
        else:
            return kind


def _tagged(kind: object, part: str | int) -> Any:
    """The member of a tagged union that `part` names, or None."""
    if get_origin(kind) not in {Union, types.UnionType}:
        return None
    for member in get_args(kind):
        if get_origin(member) is Annotated and any(
                isinstance(meta, Tag) and meta.tag == part for meta in member.__metadata__):
            return get_args(member)[0]
    return None

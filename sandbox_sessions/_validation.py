"""Argument checks at the API boundary: what a caller passes is refused here, with
`InvalidArgument`, before anything is changed.

Both transports call the service, and the service calls these first, so a value that would
fail deep down (a NUL byte in a path reaching `open()`, `5` turned into five NUL bytes by
`bytes(5)`, a `nan` timeout in a deadline) is refused with a message naming the argument.
Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._exceptions import InvalidArgument

__all__ = [
    "MAX_COUNT",
    "build",
    "check_bytes",
    "check_command",
    "check_count",
    "check_env",
    "check_mode",
    "check_path",
    "check_text",
    "check_timeout",
]

MAX_COUNT = (1 << 63) - 1
"""The largest byte count accepted anywhere (`max_output`, `max_bytes`)."""

M = TypeVar("M", bound=BaseModel)


def build(kind: type[M], what: str, /, **fields: Any) -> M:
    """A `kind` made of `fields`; `InvalidArgument` naming each bad field, never pydantic's
    `ValidationError`."""
    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid {what}: {describe(exc)}") from None


def describe(error: ValidationError) -> str:
    """A pydantic error as one line: `field: problem; field: problem`."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "value"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _type_name(value: object) -> str:
    return type(value).__name__


def check_text(value: object, name: str, *, empty: bool = True) -> str:
    """`value` as a str without NUL bytes (and non-empty unless `empty`)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, not {_type_name(value)}")
    if "\x00" in value:
        raise InvalidArgument(f"{name} must not contain a NUL byte")
    if not empty and not value:
        raise InvalidArgument(f"{name} must not be empty")
    return value


def check_path(value: object, name: str = "path") -> str:
    """A non-empty path without NUL bytes."""
    return check_text(value, name, empty=False)


def check_command(value: object) -> str:
    """A command line: a str without NUL bytes (bash cannot take one in an argument)."""
    return check_text(value, "command")


def check_env(env: object) -> dict[str, str]:
    """An environment: str keys that are non-empty, without `=` or NUL; str values without NUL."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgument(f"env must be a mapping of str to str, not {_type_name(env)}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        check_text(key, "env key", empty=False)
        if "=" in key:
            raise InvalidArgument(f"env key {key!r} must not contain '='")
        checked[key] = check_text(value, f"env[{key!r}]")
    return checked


def check_count(value: object, name: str, *, optional: bool = False) -> int | None:
    """A whole number of bytes, 0 or more (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {_type_name(value)}")
    if not 0 <= value <= MAX_COUNT:
        raise InvalidArgument(f"{name} must be between 0 and {MAX_COUNT}, not {value}")
    return value


def check_mode(value: object) -> int | None:
    """File permission bits: None, or an int from 0 to 0o7777."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"mode must be an int such as 0o644, not {_type_name(value)}")
    if not 0 <= value <= 0o7777:
        raise InvalidArgument(f"mode must be between 0 and 0o7777, not {value:#o}")
    return value


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """Seconds: None (no limit), or a finite number of 0 or more."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds, not {_type_name(value)}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for any float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{name} must be a finite number of seconds, 0 or more, "
                              f"not {value}")
    return seconds


def check_bytes(content: object, name: str = "content") -> bytes:
    """File content: bytes-like as is, text encoded as UTF-8; anything else is refused."""
    if isinstance(content, str):
        try:
            return content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{name} is not encodable as UTF-8 (position {exc.start}); pass bytes") from None
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    raise InvalidArgument(f"{name} must be str or bytes, not {_type_name(content)}")

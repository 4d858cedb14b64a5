"""Permission rules: which tool calls run, which ask the user first, and which are refused.

Pure logic, no I/O. A rule set maps a tool name (`"*"` for every tool) to an action, or to a
map of glob patterns to actions, matched against the call's permission pattern (the command
line for `bash`, the absolute path for file tools):

    {"*": "ask",
     "read": "allow",
     "bash": {"*": "ask", "git status *": "allow", "rm -rf *": "deny"}}

In a pattern, `*` matches any run of characters (`/` and spaces included) and `?` any one
character; everything else is literal. A pattern ending in `" *"` also matches without that
tail, so `"git status *"` covers `git status` itself as well as `git status --short`.

The **last** matching rule wins, reading the `"*"` tool's entry first and then the tool's own,
each in insertion order; a bare action counts as the pattern `*`. When nothing matches, the
call is **allowed**: sessions that want to be asked must say so (`{"*": "ask"}`).

A pattern is matched against the whole command line, so `"git status *"` also matches
`git status; rm -rf ~`. Use `allow` patterns on commands for convenience, not as a sandbox:
the container is the boundary.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import cast, get_args

from .._exceptions import InvalidArgument
from .._types import PermissionAction, PermissionRules

__all__ = [
    "DEFAULT_ACTION",
    "Rules",
    "always_patterns",
    "evaluate",
    "matches",
    "merge_always",
    "validate_rules",
]

Rules = Mapping[str, PermissionAction | Mapping[str, PermissionAction]]
"""Rules as this module reads them; `PermissionRules` is the concrete (stored) form."""

DEFAULT_ACTION: PermissionAction = "allow"
"""The action of a call that no rule matches."""

ACTIONS: frozenset[str] = frozenset(get_args(PermissionAction))

# Commands whose first argument names what they do (`git push`, `npm install`): `always` on
# one of them allows that subcommand only.
_SUBCOMMANDS = frozenset({
    "apt", "apt-get", "brew", "bun", "cargo", "conda", "deno", "docker", "dotnet", "gh", "git",
    "go", "gradle", "helm", "kubectl", "mvn", "npm", "npx", "pip", "pip3", "pnpm", "poetry",
    "terraform", "uv", "yarn",
})
# Words safe to put in a pattern as they are: no wildcard, no shell syntax.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    body, optional_tail = (pattern[:-2], True) if pattern.endswith(" *") else (pattern, False)
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in body
    )
    return re.compile(regex + ("(?: .*)?" if optional_tail else ""), re.DOTALL)


def matches(pattern: str, value: str) -> bool:
    """Whether the rule pattern `pattern` matches the whole of `value`."""
    return _compile(pattern).fullmatch(value) is not None


def _entries(entry: PermissionAction | Mapping[str, PermissionAction]) -> Iterable[
        tuple[str, PermissionAction]]:
    return [("*", entry)] if isinstance(entry, str) else entry.items()


def evaluate(rules: Rules, tool: str, pattern: str) -> PermissionAction:
    """The action for a call of `tool` whose permission pattern is `pattern`.

    The last matching rule wins: the `"*"` entry's rules are read first, then the tool's own.
    `DEFAULT_ACTION` ("allow") when none matches.
    """
    action = DEFAULT_ACTION
    for key in ("*", tool) if tool != "*" else ("*",):
        entry = rules.get(key)
        if entry is None:
            continue
        for glob, verdict in _entries(entry):
            if matches(glob, pattern):
                action = verdict
    return action


def _command_prefix(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:  # an unclosed quote: still a command line bash may run
        words = command.split()
    if not words or not _PLAIN_WORD.fullmatch(words[0]):
        return []
    takes_subcommand = words[0] in _SUBCOMMANDS and len(words) > 1
    if takes_subcommand and _PLAIN_WORD.fullmatch(words[1]) and not words[1].startswith("-"):
        return words[:2]
    return words[:1]


def always_patterns(tool: str, pattern: str) -> list[str]:
    """The patterns an `always` reply allows from now on, for a call of `tool` on `pattern`.

    For `bash`, the command and its subcommand, if it has one, with any arguments:
    `git status --short` gives `git status *`, `ls -la src` gives `ls *`. A command line that
    does not start with a plain word (a subshell, a quoted name) gives only itself. For every
    other tool, the exact pattern (the path). A value holding `*` or `?` (other than `*`
    alone, which `todowrite` uses) would match more than itself, so it gives nothing:
    `always` then allows just this call.
    """
    if tool == "bash":
        prefix = _command_prefix(pattern)
        if prefix:
            return [" ".join(prefix) + " *"]
    if pattern != "*" and ("*" in pattern or "?" in pattern):
        return []
    return [pattern]


def merge_always(rules: Rules, tool: str, patterns: Iterable[str]) -> PermissionRules:
    """A copy of `rules` where `tool` allows each of `patterns`; `rules` is left unchanged.

    The new rules go last in the tool's entry, so they win over what came before. A pattern
    already present moves to the end; a tool entry that was a bare action becomes `{"*": it}`.
    """
    merged: PermissionRules = {
        key: value if isinstance(value, str) else dict(value) for key, value in rules.items()
    }
    added = list(patterns)
    if not added:
        return merged
    current = merged.get(tool)
    entry = {"*": current} if isinstance(current, str) else dict(current or {})
    for pattern in added:
        entry.pop(pattern, None)
        entry[pattern] = "allow"
    merged[tool] = entry
    return merged


def _check_action(value: object, where: str) -> PermissionAction:
    if not isinstance(value, str) or value not in ACTIONS:
        raise InvalidArgument(f"permission rule {where}: {value!r} is not allow, ask or deny")
    return cast(PermissionAction, value)


def validate_rules(rules: object) -> PermissionRules:
    """`rules` checked and copied into the stored form; `InvalidArgument` names what is wrong.

    Tool names and patterns must be strings (tool names non-empty), and every action one of
    `allow`, `ask` or `deny`.
    """
    if not isinstance(rules, Mapping):
        raise InvalidArgument(f"permission rules must be a mapping, not {type(rules).__name__}")
    checked: PermissionRules = {}
    for tool, entry in rules.items():
        if not isinstance(tool, str) or not tool:
            raise InvalidArgument(f"permission rules: {tool!r} is not a tool name")
        if not isinstance(entry, Mapping):
            checked[tool] = _check_action(entry, f"for {tool!r}")
            continue
        patterns: dict[str, PermissionAction] = {}
        for glob, action in entry.items():
            if not isinstance(glob, str):
                raise InvalidArgument(f"permission rule for {tool!r}: {glob!r} is not a pattern")
            patterns[glob] = _check_action(action, f"{tool!r} {glob!r}")
        checked[tool] = patterns
    return checked

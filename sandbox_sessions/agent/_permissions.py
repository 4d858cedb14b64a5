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

A **bash line** is parsed with a real bash parser (`_bash`), and judged as the strictest of:
the whole line as written, and every command it can run (each simple command, wherever it
stands, and the commands that runners such as `env`, `xargs`, `bash -c` or `eval` run),
as its words with quoting removed. So `git status *` does not allow `git status; rm -rf ~`,
nor `echo $(rm x)`. Parts only known when bash runs (`$HOME`, `$(date)`, a glob) are unknown
text: a rule counts if it could match them, and the search stops at one that must.

It **fails closed**: a line the parser cannot fully account for (a syntax error, a name only
known at run time, a construct not modelled...) is judged as if it could run anything, by the
strictest rule that could apply to any text, and never better than `ask`.

Rules are a policy for the agent, not a sandbox: a command they allow may run others of its
own (an interpreter, `make`, git aliases). The container is the boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import cast, get_args

from .._exceptions import InvalidArgument
from .._types import PermissionAction, PermissionRules
from ._bash import analyze
from ._bash_words import Word, join_words
from ._patterns import ANY, Value, could_match, matches, must_match

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


def _entries(entry: PermissionAction | Mapping[str, PermissionAction]) -> Iterable[
        tuple[str, PermissionAction]]:
    return [("*", entry)] if isinstance(entry, str) else entry.items()


def evaluate(rules: Rules, tool: str, pattern: str) -> PermissionAction:
    """The action for a call of `tool` whose permission pattern is `pattern`.

    The last matching rule wins: the `"*"` entry's rules are read first, then the tool's own.
    `DEFAULT_ACTION` ("allow") when none matches. A bash command line is judged command by
    command and fails closed (see the module docstring), so `git status *` does not allow
    `git status; rm -rf x`.
    """
    if tool == "bash":
        return _evaluate_bash(rules, pattern)
    return _evaluate_value(rules, tool, (pattern,))


_SEVERITY = {"allow": 0, "ask": 1, "deny": 2}


def _strictest(actions: Iterable[PermissionAction]) -> PermissionAction:
    return max(actions, key=_SEVERITY.__getitem__)


def _evaluate_bash(rules: Rules, line: str) -> PermissionAction:
    """The strictest action over the whole line and every command it can run; for a line
    the parser cannot see through, also over any text at all, and at least `ask`."""
    analysis = analyze(line)
    verdicts = [_evaluate_value(rules, "bash", value)
                for value in [(line,), *analysis.values]]
    if analysis.blind:
        verdicts += [_evaluate_value(rules, "bash", (ANY,)), "ask"]
    return _strictest(verdicts)


def _ordered(rules: Rules, tool: str) -> list[tuple[str, PermissionAction]]:
    ordered: list[tuple[str, PermissionAction]] = []
    for key in ("*", tool) if tool != "*" else ("*",):
        entry = rules.get(key)
        if entry is not None:
            ordered.extend(_entries(entry))
    return ordered


def _evaluate_value(rules: Rules, tool: str, value: Value) -> PermissionAction:
    """The strictest action the last matching rule could have, whatever the unknown parts
    of `value` are: rules are read from the last, each that could match counts, and the
    search stops at one that must match (else `DEFAULT_ACTION` counts too)."""
    possible: list[PermissionAction] = []
    for glob, action in reversed(_ordered(rules, tool)):
        if could_match(glob, value):
            possible.append(action)
            if must_match(glob, value):
                return _strictest(possible)
    return _strictest([*possible, DEFAULT_ACTION])


def _command_prefix(command: tuple[Word, ...]) -> list[str]:
    words = [word.text or "" for word in command[:2]]
    if not words or not _PLAIN_WORD.fullmatch(words[0]):
        return []
    takes_subcommand = words[0] in _SUBCOMMANDS and len(words) > 1
    if takes_subcommand and _PLAIN_WORD.fullmatch(words[1]) and not words[1].startswith("-"):
        return words[:2]
    return words[:1]


def _exactly(value: str) -> list[str]:
    return [] if "*" in value or "?" in value else [value]


def _bash_always(line: str) -> list[str]:
    analysis = analyze(line)
    if analysis.blind:
        return []  # nothing can allow a line the parser cannot see through
    patterns: list[str] = []
    for command in analysis.commands:
        prefix = _command_prefix(command)
        text = join_words(command)
        exact = _exactly(text[0]) if len(text) == 1 and isinstance(text[0], str) else []
        if not prefix and not exact:
            return []
        patterns.append(" ".join(prefix) + " *" if prefix else exact[0])
    patterns = list(dict.fromkeys(patterns))
    if not any(matches(pattern, line) for pattern in patterns):
        if not _exactly(line):
            return []
        patterns.append(line)
    return patterns


def always_patterns(tool: str, pattern: str) -> list[str]:
    """The patterns an `always` reply allows from now on, for a call of `tool` on `pattern`.

    For `bash`, for each command the line can run, the command and its subcommand, if it has
    one, with any arguments: `git status --short` gives `git status *`, `ls -la src` gives
    `ls *`, `cd x && make` gives `cd *` and `make *`. A command that does not start with a
    plain word (a quoted name) gives its exact text, and the line itself is added when no
    pattern covers it (`(ls)`). When that cannot be done without wildcards, or the line is
    one the parser cannot see through, it gives nothing: `always` then allows just this
    call. For every other tool, the exact pattern (the path). A value holding `*` or `?`
    (other than `*` alone, which `todowrite` uses) would match more than itself, so it gives
    nothing.
    """
    if tool == "bash":
        return _bash_always(pattern)
    if pattern == "*":
        return [pattern]
    return _exactly(pattern)


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

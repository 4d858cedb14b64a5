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
    `DEFAULT_ACTION` ("allow") when none matches. A bash command line is judged command by
    command (see `_evaluate_bash`), so `git status *` does not allow `git status; rm -rf x`.
    """
    if tool == "bash":
        return _evaluate_bash(rules, pattern)
    return _evaluate_one(rules, tool, pattern)


_SEVERITY = {"allow": 0, "ask": 1, "deny": 2}
_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "|&", ";;", "(", ")"})
_SUBSTITUTION = re.compile(r"\$\(|`|<\(|>\(")
_NOTHING_ELSE = "\x00sandbox-sessions: a command no rule names\x00"


def simple_commands(command: str) -> list[str]:
    """The simple commands of a command line: split on `;`, `&&`, `||`, `|`, `&` and new
    lines, outside quotes. An unparsable line (an open quote) is one command."""
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    commands: list[str] = []
    words: list[str] = []
    try:
        for token in lexer:
            if token in _SEPARATORS:
                commands.append(" ".join(words))
                words = []
            else:
                words.append(token)
    except ValueError:
        return [command]
    commands.append(" ".join(words))
    return [c for c in commands if c]


def _evaluate_bash(rules: Rules, command: str) -> PermissionAction:
    """The strictest action over the whole line and each of its simple commands. A command
    or process substitution (`$(...)`, backticks) hides commands no pattern can see: then
    `allow` needs a rule that allows any command at all."""
    verdicts = [_evaluate_one(rules, "bash", part) for part in [command, *simple_commands(command)]]
    action = max(verdicts, key=_SEVERITY.__getitem__)
    if action == "allow" and _SUBSTITUTION.search(command):
        return _evaluate_one(rules, "bash", _NOTHING_ELSE)
    return action


def _evaluate_one(rules: Rules, tool: str, pattern: str) -> PermissionAction:
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

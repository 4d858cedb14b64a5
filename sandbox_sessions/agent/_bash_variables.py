"""Variables bash reads as code, and the builtins that set them or name them.

Pure logic, no I/O. Bash runs text it never parsed as code in a few places, all of them
about variables:

- **Arithmetic** (`$((x))`, `(( ))`, `let`, `[[ x -eq 1 ]]`, array subscripts, `${x:n}`,
  `${!x}`): a variable holding `a[$(cmd)]` runs `cmd`. So every variable read there is
  recorded (`Findings.refs`), and every assignment too (whether each value given was a plain
  integer); `Findings.settle` reports the line as blind when a variable read may hold more.
  A variable the line never assigns comes from the session's environment, which the user
  sets, and counts as safe, except bash's own that carry outside text (`REPLY`, `OPTARG`,
  `BASH_REMATCH`, `PWD`...).
- **Names given to builtins** (`unset`, `read`, `printf -v`, `test -v`, `declare`...): a
  name `a[$(cmd)]` runs `cmd`. A name with an expansion in its subscript, or only known at
  run time, is blind.
- **Variables bash or its children read as code or as where commands are** (`PATH`,
  `BASH_ENV`, `PS4`, `LD_PRELOAD`, `BASH_FUNC_*`...): an assignment to one is blind, as are
  the attributes that make assignments code (`declare -i`, `declare -n`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._bash_words import Spec, Word, scan, static_word

__all__ = ["BUILTINS", "Findings", "assign_to", "check_name"]

# Variables whose value is a number whatever happens: `$#`, `$?`, `$$`, `$!`.
_NUMERIC_SPECIALS = frozenset("#?$!")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bash's own variables whose value comes from files, commands or the line's arguments.
_OUTSIDE_TEXT = frozenset({
    "COPROC", "DIRSTACK", "FUNCNAME", "HISTFILE", "MAPFILE", "OLDPWD", "OPTARG", "PWD",
    "REPLY",
})
_OUTSIDE_PREFIXES = ("BASH_", "COMP_", "READLINE_")
_DANGEROUS = frozenset({
    "BASH_ALIASES", "BASH_CMDS", "BASH_ENV", "BASH_LOADABLES_PATH", "BASHOPTS", "ENV",
    "EXECIGNORE", "LD_AUDIT", "LD_LIBRARY_PATH", "LD_PRELOAD", "PATH", "PROMPT_COMMAND",
    "PS0", "PS1", "PS2", "PS3", "PS4", "SHELLOPTS",
})


@dataclass
class Findings:
    """What a walk over one line (and the lines nested in it) found: the commands that can
    run, why it cannot see through (`blind`), and the variables arithmetic reads (`refs`)
    with what the line assigns them (`assigned`: whether every value was an integer)."""

    commands: list[tuple[Word, ...]] = field(default_factory=list)
    blind: list[str] = field(default_factory=list)
    refs: set[str] = field(default_factory=set)
    assigned: dict[str, bool] = field(default_factory=dict)
    unknown_assignments: bool = False

    def assign(self, name: str, *, value: Word | None = None, safe: bool = False) -> None:
        """Record an assignment to `name`: safe if `safe`, or if `value` is an integer."""
        text = value.text if value is not None else None
        is_number = safe or (text is not None and _INTEGER.fullmatch(text) is not None)
        self.assigned[name] = self.assigned.get(name, True) and is_number

    def arithmetic(self, text: str) -> None:
        """Record `text`, which bash evaluates as arithmetic: each identifier is a variable
        it reads; an expansion, quote or subscript in it is code the parser never saw."""
        if any(char in text for char in "$`[\\"):
            self.blind.append("an arithmetic expression bash evaluates as code")
        self.refs.update(_IDENTIFIER.findall(text))

    def settle(self) -> None:
        """Add a blind reason if a variable read in arithmetic may hold an expression."""
        for name in sorted(self.refs):
            if not self._safe_in_arithmetic(name):
                self.blind.append(f"arithmetic reads ${name}, which may hold code")
                return

    def _safe_in_arithmetic(self, name: str) -> bool:
        if len(name) == 1 and not (name.isalpha() or name == "_"):
            return name in _NUMERIC_SPECIALS
        if name.isdigit() or name == "_" or self.unknown_assignments:
            return False
        if name not in self.assigned:
            return name not in _OUTSIDE_TEXT and not name.startswith(_OUTSIDE_PREFIXES)
        return self.assigned[name]


def assign_to(name: str, value: Word | None, findings: Findings) -> None:
    """Check and record an assignment of `value` to the variable `name`."""
    if name in _DANGEROUS or name.startswith("BASH_FUNC_"):
        findings.blind.append(f"an assignment to {name}, which changes what commands are")
    findings.assign(name, value=value)


def check_name(text: str | None, findings: Findings) -> None:
    """A variable name a builtin reads (`unset NAME`): bash evaluates its subscript."""
    if text is None:
        findings.blind.append("a variable name only known when the command runs")
    elif "[" in text:
        findings.arithmetic(text.partition("[")[2].removesuffix("]"))


def _target(word: Word, findings: Findings, *, value: Word | None = None) -> None:
    """A variable a builtin assigns to (`read x`): its name must be static."""
    check_name(word.text, findings)
    if word.text is not None:
        assign_to(word.text.partition("[")[0], value, findings)


def _declare(words: Sequence[Word], findings: Findings) -> None:
    for word in words[1:]:
        first = word.parts[0]
        text = word.text
        name, eq, value = (text if text is not None else str(first)).partition("=")
        if text is not None and text[:1] in ("-", "+"):
            if {"i", "n"} & set(text[1:]):
                findings.blind.append("an integer or name-reference variable")
        elif eq and isinstance(first, str):
            number = static_word(value) if text is not None else None
            _target(static_word(name.removesuffix("+")), findings, value=number)
        else:
            check_name(text, findings)  # a name alone: its value does not change


def _unset(words: Sequence[Word], findings: Findings) -> None:
    for word in words[1:]:
        if word.text is None or not word.text.startswith("-"):
            check_name(word.text, findings)


def _let(words: Sequence[Word], findings: Findings) -> None:
    for word in words[1:]:
        if word.text is None:
            findings.blind.append("an arithmetic expression only known when it runs")
        else:
            findings.arithmetic(word.text)


def _read(words: Sequence[Word], findings: Findings) -> None:
    scanned = scan(Spec(flags="ers", takes="adinNptu"), words)
    if scanned is None:
        findings.blind.append("read options that hide its variables")
        return
    start, seen = scanned
    names = [*words[start:], *([static_word(seen["a"])] if "a" in seen else [])]
    for word in names or [static_word("REPLY")]:
        _target(word, findings)


def _mapfile(words: Sequence[Word], findings: Findings) -> None:
    scanned = scan(Spec(flags="t", takes="dnOsuc"), words)  # `-C` runs a callback: unknown
    if scanned is None:
        findings.blind.append("mapfile options that run a callback or hide its variable")
        return
    for word in words[scanned[0]:] or [static_word("MAPFILE")]:
        _target(word, findings)


def _printf(words: Sequence[Word], findings: Findings) -> None:
    if len(words) > 2 and words[1].text is None:
        findings.blind.append("printf options only known when it runs")
    elif len(words) > 2 and words[1].text == "-v":
        _target(words[2], findings)


def _test(words: Sequence[Word], findings: Findings) -> None:
    for before, word in itertools.pairwise(words):
        if before.text == "-v":
            check_name(word.text, findings)


def _wait(words: Sequence[Word], findings: Findings) -> None:
    for before, word in itertools.pairwise(words):
        if before.text == "-p":
            _target(word, findings, value=static_word("0"))  # a job's number


def _getopts(words: Sequence[Word], findings: Findings) -> None:
    if len(words) > 2:
        _target(words[2], findings)


def _source(words: Sequence[Word], findings: Findings) -> None:
    findings.unknown_assignments = True  # the file may set any variable


BUILTINS: dict[str, Callable[[Sequence[Word], Findings], None]] = {
    **dict.fromkeys(["declare", "export", "local", "readonly", "typeset"], _declare),
    **dict.fromkeys(["mapfile", "readarray"], _mapfile),
    **dict.fromkeys([".", "source"], _source),
    **dict.fromkeys(["[", "test"], _test),
    "getopts": _getopts,
    "let": _let,
    "printf": _printf,
    "read": _read,
    "unset": _unset,
    "wait": _wait,
}
"""Builtins that set variables or name them, by name: each records what it does."""

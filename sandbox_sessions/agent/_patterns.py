"""The rule pattern language, matched against text that may be only partly known.

Pure logic, no I/O. A pattern is a glob: `*` matches any run of characters (spaces, `/` and
new lines included), `?` any one character, everything else is literal; a pattern ending in
`" *"` also matches without that tail (`"git status *"` covers `git status`). It must match
the whole value. Matching takes time linear in the value for a given pattern (no regex
backtracking), however long the value.

A value is a tuple of parts: strings, known exactly, and `ANY`, text that cannot be known
before the command runs (`$HOME`, `$(date)`, a glob). Two questions are asked of a pattern:

- `could_match`: is there *some* text for the unknown parts that the pattern matches?
- `must_match`: does the pattern match *whatever* the unknown parts turn out to be?

For a value with no unknown part both are plain matching. Both answers are exact (the
languages involved are regular); when the search would grow past a bound, they give the
answer that only ever makes a verdict stricter (`could_match` True, `must_match` False).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["ANY", "Unknown", "Value", "could_match", "matches", "must_match"]


class Unknown:
    """The type of `ANY`: text that cannot be known before the command runs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = Unknown()
"""A part of a value that may be any text at all (empty, spaces and new lines included)."""

Value = tuple[str | Unknown, ...]
"""A value matched against patterns: known strings and unknown parts, in order."""

# Bounds on the searches over unknown parts: rule patterns and commands are short, so real
# searches stay far below them; past them the answer is the safe one.
_MAX_SUBSETS = 4096
_MAX_PRODUCT = 200_000  # pattern length x value length
# Tokens: a literal character, or these two (a pattern has no escape, so a literal `*` or
# `?` cannot occur in one).
_STAR, _ONE = "*", "?"


@functools.lru_cache(maxsize=1024)
def _runs(body: str) -> tuple[re.Pattern[str], ...]:
    """The runs of `body` between its stars, each a regex of fixed length (`?` is `.`)."""
    return tuple(
        re.compile("".join("." if char == _ONE else re.escape(char) for char in run), re.DOTALL)
        for run in body.split(_STAR)
    )


def _glob(body: str, value: str) -> bool:
    """Whether the glob `body` matches the whole of `value`.

    Each run between stars has a fixed length, so taking every middle run at its leftmost
    place is optimal: a few linear searches, where a regex of `.*`s backtracks."""
    first, *rest = _runs(body)
    if not rest:
        return first.fullmatch(value) is not None
    *middle, last = rest
    end = len(value) - len(body) + body.rindex(_STAR) + 1  # where the last run must start
    start = first.match(value)
    if start is None or end < start.end() or last.fullmatch(value, end) is None:
        return False
    position = start.end()
    for run in middle:
        found = run.search(value, position, end)
        if found is None:
            return False
        position = found.end()
    return True


def matches(pattern: str, value: str) -> bool:
    """Whether the rule pattern `pattern` matches the whole of `value`."""
    if pattern.endswith(" *") and _glob(pattern[:-2], value):
        return True
    return _glob(pattern, value)


def _automaton(pattern: str) -> tuple[str, frozenset[int]]:
    """The pattern as tokens and the positions where it may end: after the body, and after
    the optional `" *"` tail when there is one (`"x *"` is `x` or `x *`)."""
    if pattern.endswith(" *"):
        return pattern, frozenset({len(pattern) - 2, len(pattern)})
    return pattern, frozenset({len(pattern)})


def _value_tokens(value: Value) -> tuple[str | Unknown, ...]:
    tokens: list[str | Unknown] = []
    for part in value:
        if isinstance(part, Unknown):
            if not tokens or tokens[-1] is not ANY:
                tokens.append(ANY)
        else:
            tokens.extend(part)
    return tuple(tokens)


def _known(value: Value) -> str | None:
    if any(isinstance(part, Unknown) for part in value):
        return None
    return "".join(part for part in value if isinstance(part, str))


def _too_large(pattern: str, value: Value) -> bool:
    length = sum(1 if isinstance(part, Unknown) else len(part) for part in value)
    return (len(pattern) + 1) * length > _MAX_PRODUCT


def could_match(pattern: str, value: Value) -> bool:
    """Whether `pattern` matches `value` for at least one choice of its unknown parts."""
    known = _known(value)
    if known is not None:
        return matches(pattern, known)
    if _too_large(pattern, value):
        return True
    tokens, ends = _automaton(pattern)
    text = _value_tokens(value)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i in ends and j == len(text):
            return True
        todo.extend(_product_moves(tokens, text, i, j))
    return False


def _product_moves(tokens: str, text: tuple[str | Unknown, ...], i: int, j: int) -> Iterable[
        tuple[int, int]]:
    """Moves of the pattern (at token `i`) and the value (at `j`) reading the same text."""
    token = tokens[i] if i < len(tokens) else None
    part = text[j] if j < len(text) else None
    if token == _STAR:
        yield i + 1, j  # the star matches nothing more
    if part is ANY:
        yield i, j + 1  # the unknown text ends here
    if token is None or part is None:
        return
    if part is ANY:
        if token != _STAR:
            yield i + 1, j  # the unknown text supplies the character the pattern wants
    elif token == _STAR:
        yield i, j + 1
    elif token in (_ONE, part):
        yield i + 1, j + 1


def _closure(tokens: str, states: Iterable[int]) -> frozenset[int]:
    found = set(states)
    for i in sorted(found):
        while i < len(tokens) and tokens[i] == _STAR:
            i += 1
            found.add(i)
    return frozenset(found)


def _step(tokens: str, states: frozenset[int], char: str) -> frozenset[int]:
    after = [
        i + (tokens[i] != _STAR)
        for i in states
        if i < len(tokens) and tokens[i] in (_STAR, _ONE, char)
    ]
    return _closure(tokens, after)


@functools.lru_cache(maxsize=4096)
def _all_continuations(tokens: str, start: frozenset[int]) -> frozenset[frozenset[int]] | None:
    """Every state set reachable from `start` by reading any text; None past the bound."""
    alphabet = {char for char in tokens if char not in (_STAR, _ONE)}
    alphabet.add(next(chr(c) for c in range(1, 0x110000) if chr(c) not in alphabet))
    found = {start}
    todo = [start]
    while todo:
        states = todo.pop()
        for char in alphabet:
            after = _step(tokens, states, char)
            if after not in found:
                if len(found) >= _MAX_SUBSETS:
                    return None
                found.add(after)
                todo.append(after)
    return frozenset(found)


def must_match(pattern: str, value: Value) -> bool:
    """Whether `pattern` matches `value` whatever its unknown parts turn out to be."""
    known = _known(value)
    if known is not None:
        return matches(pattern, known)
    if _too_large(pattern, value):
        return False
    tokens, ends = _automaton(pattern)
    current = {_closure(tokens, [0])}
    for part in _value_tokens(value):
        if isinstance(part, Unknown):
            reached: set[frozenset[int]] = set()
            for states in current:
                more = _all_continuations(tokens, states)
                if more is None:
                    return False
                reached |= more
            current = reached
        else:
            current = {_step(tokens, states, part) for states in current}
        if frozenset() in current:
            return False
    return all(states & ends for states in current)

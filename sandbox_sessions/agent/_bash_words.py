"""Words of a bash command as the rules see them: quoting removed where the value is static.

Pure logic, no I/O. `word_value` turns a tree-sitter literal node into a `Word`: its known
text, with `ANY` for each part whose value is only known when bash runs (an expansion, a
command substitution, a glob, a brace expansion, a leading `~`). `$'rm'`, `"r""m"` and `\\rm`
are all the static word `rm`. A word `splits` when bash may turn it into zero or several
words (an unquoted expansion, a glob, `"$@"`): argument positions after it are unknown.

`Spec` and `scan` read the options of a command that takes some before its operands
(`env`, `xargs`, `read`...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tree_sitter import Node

from ._patterns import ANY, Unknown, Value

__all__ = ["Spec", "Word", "join_words", "scan", "static_word", "word_value"]


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word: its parts (known strings and `ANY`), and whether it may split."""

    parts: Value
    splits: bool = False

    @property
    def text(self) -> str | None:
        """The word's value when it is fully known, else None."""
        if any(isinstance(part, Unknown) for part in self.parts):
            return None
        return "".join(part for part in self.parts if isinstance(part, str))


def static_word(text: str) -> Word:
    """A word whose value is `text`."""
    return Word((text,))


_DYNAMIC = Word((ANY,), splits=True)
_QUOTED_DYNAMIC = Word((ANY,))
_GLOB = frozenset("*?")
# Brace and bracket characters the parser keeps as words of their own: brace expansion or a
# glob, as far as the rules can tell.
_GLOB_WORDS = frozenset({"{", "}", "[", "]"})
# `${x:=v}`-style assignments, `"$@"`-style expansions that make several words.
_MANY_WORDS = re.compile(r"\$@|\$\{[^}]*(?:\[[@*]\]|@)")
_ANSI_SIMPLE = {
    "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r",
    "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?",
}
_ANSI_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{1,4})|U([0-9A-Fa-f]{1,8})|(c)|(.))",
    re.DOTALL,
)


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "surrogateescape")


def _merge(parts: Iterable[str | Unknown]) -> Value:
    merged: list[str | Unknown] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif isinstance(part, Unknown) and merged and isinstance(merged[-1], Unknown):
            continue
        elif part != "":
            merged.append(part)
    return tuple(merged) or ("",)


def _unescape_word(text: str) -> Word:
    """Quote removal in a bare word: `\\x` is `x`; an unescaped glob character or a leading
    `~` makes the word dynamic, as does a trailing lone backslash."""
    if text.startswith("~"):
        return _DYNAMIC
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return _DYNAMIC
            out.append(escaped)
        elif char in _GLOB:
            return _DYNAMIC
        else:
            out.append(char)
    return static_word("".join(out))


def _ansi_c(text: str) -> Word:
    """The value of `$'...'`, as bash decodes it; a NUL ends the string there."""
    body = text[2:-1]
    try:
        decoded = _ANSI_ESCAPE.sub(_ansi_escape, body)
    except ValueError:  # `\c`, or a code point that is not a character
        return _QUOTED_DYNAMIC
    return static_word(decoded.split("\x00", 1)[0])


def _ansi_escape(match: re.Match[str]) -> str:
    octal, hex2, hex4, hex8, control, other = match.groups()
    if control:
        raise ValueError("control escape")
    number = octal or hex2 or hex4 or hex8
    if number:
        value = int(number, 8 if octal else 16)
        if octal:
            value &= 0xFF
        if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
            raise ValueError("not a character")
        return chr(value)
    return _ANSI_SIMPLE.get(other, "\\" + other)


def _double_quoted_content(text: str) -> str:
    # Inside double quotes a backslash only escapes `$`, backquote, `"`, `\` and a new line.
    return re.sub(r"\\([$`\"\\\n])", lambda m: "" if m.group(1) == "\n" else m.group(1), text)


def _string(node: Node) -> Word:
    parts: list[str | Unknown] = []
    splits = False
    for child in node.children:
        if child.type == "string_content":
            parts.append(_double_quoted_content(_text(child)))
        elif child.type == '"':
            continue
        elif not child.is_named:  # a lone `$`
            parts.append(_text(child))
        else:
            parts.append(ANY)
            splits = splits or bool(_MANY_WORDS.search(_text(child)))
    return Word(_merge(parts), splits)


def word_value(node: Node) -> Word:
    """The value of the literal `node` (a word, string, expansion, concatenation...)."""
    kind = node.type
    if kind == "word":
        return _unescape_word(_text(node))
    if kind in ("raw_string", "ansi_c_string", "string", "number", "concatenation"):
        return _QUOTED_VALUES[kind](node)
    if not node.is_named:  # `$`, `==` and `=~` as command arguments
        return static_word(_text(node))
    if kind == "translated_string":
        return _QUOTED_DYNAMIC
    return _DYNAMIC


def _number(node: Node) -> Word:
    return _DYNAMIC if node.named_child_count else static_word(_text(node))


def _concatenation(node: Node) -> Word:
    # Braces expand only around a `,` or `..`: `{}` (find's placeholder) is a plain word.
    braces = "," in _text(node) or ".." in _text(node)
    values = [
        _DYNAMIC if child.type == "word" and _text(child) in _GLOB_WORDS and (
            braces or _text(child) in "[]") else word_value(child)
        for child in node.children
        if child.type != "``"  # an empty backquote pair adds nothing
    ]
    if any(child.type == "``" for child in node.children):
        values.append(_QUOTED_DYNAMIC)
    parts = [part for value in values for part in value.parts]
    return Word(_merge(parts), any(value.splits for value in values))


_QUOTED_VALUES = {
    "raw_string": lambda node: static_word(_text(node)[1:-1]),
    "ansi_c_string": lambda node: _ansi_c(_text(node)),
    "string": _string,
    "number": _number,
    "concatenation": _concatenation,
}


def join_words(words: Sequence[Word]) -> Value:
    """The command text rules are matched against: the words joined by single spaces."""
    parts: list[str | Unknown] = []
    for index, word in enumerate(words):
        if index:
            parts.append(" ")
        parts.extend(word.parts)
    return _merge(parts)


@dataclass(frozen=True)
class Spec:
    """How a command reads its options before its operands (or the command it runs).

    Only the options listed are known: an unknown one may take an argument, so where the
    operands start cannot be told (`scan` says None).
    """

    flags: str = ""
    takes: str = ""  # short options followed by an argument
    attached: str = ""  # short options whose argument, if any, is attached (`xargs -i{}`)
    long_flags: frozenset[str] = field(default_factory=frozenset)
    long_takes: frozenset[str] = field(default_factory=frozenset)
    operands: int = 0  # operands before the command it runs (`timeout DURATION`)
    assignments: bool = False  # NAME=VALUE words before the command it runs (`env`)
    none: str = ""  # options after which it runs nothing (`command -v`)
    stdin_if_bare: bool = False  # with no command, it runs a shell reading its input
    dash: bool = False  # a lone `-` is an option (`env -` is `env -i`)


def _long(spec: Spec, words: Sequence[Word], i: int, seen: dict[str, str]) -> int | None:
    name, eq, value = (words[i].text or "").partition("=")
    if name in spec.long_takes and not eq:
        argument = words[i + 1].text if i + 1 < len(words) else None
        seen[name] = argument or ""
        return None if argument is None else i + 2
    if name in spec.long_takes or name in spec.long_flags:
        seen[name] = value
        return i + 1
    return None


def _short(spec: Spec, words: Sequence[Word], i: int, seen: dict[str, str]) -> int | None:
    text = words[i].text or ""
    for j, char in enumerate(text[1:], 2):
        if char in spec.attached:
            seen[char] = text[j:]
            return i + 1
        if char in spec.takes:
            if text[j:]:
                seen[char] = text[j:]
                return i + 1
            argument = words[i + 1].text if i + 1 < len(words) else None
            seen[char] = argument or ""
            return None if argument is None else i + 2
        if char not in spec.flags and char not in spec.none:
            return None
        seen[char] = ""
    return i + 1


def scan(spec: Spec, words: Sequence[Word]) -> tuple[int, dict[str, str]] | None:
    """Where the command's operands start in `words` (after `spec.operands` of them when it
    runs a command), and the options seen with their arguments; None when it can't be told
    (an unknown option, or a word only known when it runs)."""
    seen: dict[str, str] = {}
    i: int | None = 1
    while i is not None and i < len(words):
        text = words[i].text
        if text is None:
            return None
        if text == "--":
            i += 1
            break
        if text == "-" and spec.dash:
            i += 1
        elif text.startswith("--"):
            i = _long(spec, words, i, seen)
        elif text.startswith("-") and len(text) > 1:
            i = _short(spec, words, i, seen)
        else:
            break
    if i is None or i + spec.operands > len(words):
        return None
    if any(word.text is None for word in words[i:i + spec.operands]):
        return None
    return i + spec.operands, seen

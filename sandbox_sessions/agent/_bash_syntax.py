"""Parsing a bash line with tree-sitter, and checking that the tree reads it as bash does.

Pure logic, no I/O. tree-sitter-bash is a grammar made for editors: it recovers from errors
and skips as blank what it does not expect. So `parse` returns the tree together with every
place where it and bash may disagree, each a reason to judge the line blind:

- a syntax error or a missing token anywhere;
- text the parser skipped as blank that bash does not (`\\r`, `\\v`, `\\f`, non-ASCII
  spaces...), and a line continuation inside a word;
- a `#` the parser reads as a comment where bash sees part of a word;
- a reserved word glued to other text (`{ls;}`), which bash reads as part of a word;
- a NUL byte, text that is not valid Unicode, a line over `MAX_LINE_BYTES` or with more
  than `MAX_NODES` parts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

__all__ = ["MAX_LINE_BYTES", "MAX_NODES", "Parsed", "parse"]

MAX_LINE_BYTES = 1 << 20
"""Lines longer than this (in UTF-8) are not parsed: they are blind."""

MAX_NODES = 50_000
"""Lines whose syntax tree has more nodes than this are not walked: they are blind. It bounds
the time a line takes to judge (about half a second here), whatever its length."""

_LANGUAGE = Language(tree_sitter_bash.language())
_PARSERS = threading.local()  # a tree-sitter Parser is not safe to share between threads
# Bytes that end a word for bash: blanks and the metacharacters.
_DELIMITERS = frozenset(b" \t\n;&|()<>")
# Bytes after which a `#` starts a comment (after `)` it may close `$(...)` inside a word).
_BEFORE_COMMENT = frozenset(b" \t\n;&|(")
_RESERVED = frozenset({
    "!", "[[", "]]", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for",
    "function", "if", "in", "select", "then", "until", "while",
})
# Where tree-sitter puts a reserved word; elsewhere (`${!x}`, `{1..3}`) `{` and `!` are not.
_STATEMENTS = frozenset({
    "case_statement", "compound_statement", "do_group", "elif_clause", "else_clause",
    "for_statement", "function_definition", "if_statement", "negated_command",
    "test_command", "while_statement", "c_style_for_statement",
})


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed line: its tree (None when it was not parsed), its bytes, and why it may be
    misread."""

    root: Node | None
    source: bytes
    blind: tuple[str, ...]


def parse(text: str) -> Parsed:
    """Parse `text` as a bash line and check the tree against how bash reads it."""
    if "\x00" in text:
        return Parsed(None, b"", ("a NUL byte",))
    try:
        source = text.encode("utf-8")
    except UnicodeEncodeError:
        return Parsed(None, b"", ("text that is not valid Unicode",))
    if len(source) > MAX_LINE_BYTES:
        return Parsed(None, b"", ("a line too long to parse",))
    root = _parser().parse(source).root_node
    if root.descendant_count > MAX_NODES:
        return Parsed(None, b"", ("a line with too many parts to judge",))
    blind = ["syntax the parser could not read"] if root.has_error else []
    blind.extend(_misread(root, source))
    return Parsed(root, source, tuple(blind))


def _parser() -> Parser:
    parser: Parser | None = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = Parser(_LANGUAGE)
    return parser


def _leaves(root: Node) -> list[Node]:
    leaves: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.child_count == 0 or node.type == "heredoc_body":
            leaves.append(node)
        else:
            stack.extend(node.children)
    return sorted(leaves, key=lambda node: node.start_byte)


def _misread(root: Node, source: bytes) -> list[str]:
    """Every place where bash reads the bytes differently from the tree's leaves."""
    reasons: list[str] = []
    end = 0
    for leaf in _leaves(root):
        if leaf.start_byte > end:
            reasons.extend(_gap(source[end:leaf.start_byte]))
        if leaf.type == "comment" and not _starts_comment(source, leaf.start_byte):
            reasons.append("a # that bash reads as part of a word")
        if _glued_reserved_word(leaf, source):
            reasons.append("a reserved word bash reads as part of a word")
        end = max(end, leaf.end_byte)
    reasons.extend(_gap(source[end:]))
    return reasons


def _gap(gap: bytes) -> list[str]:
    joined = gap.replace(b"\\\n", b"")
    if joined.strip(b" \t\n"):
        return ["text the parser skipped as blank"]
    if gap and not joined:
        return ["a line continuation inside a word"]
    return []


def _starts_comment(source: bytes, start: int) -> bool:
    """Whether a `#` at `start` begins a comment for bash: it starts a word."""
    if start == 0:
        return True
    if source[start - 1] not in _BEFORE_COMMENT:
        return False
    before = source[:start - 1]
    return (len(before) - len(before.rstrip(b"\\"))) % 2 == 0


def _glued_reserved_word(leaf: Node, source: bytes) -> bool:
    parent = leaf.parent
    if leaf.is_named or parent is None or parent.type not in _STATEMENTS:
        return False
    if (leaf.text or b"").decode("ascii", "replace") not in _RESERVED:
        return False
    before = source[leaf.start_byte - 1] if leaf.start_byte else None
    after = source[leaf.end_byte] if leaf.end_byte < len(source) else None
    return any(byte is not None and byte not in _DELIMITERS for byte in (before, after))

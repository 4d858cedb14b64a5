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

`heredoc_problems` does the same for a here-document, whose end and expansions the parser
finds by rules of its own.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

__all__ = ["MAX_LINE_BYTES", "MAX_NODES", "Parsed", "heredoc_expands", "heredoc_problems", "parse"]

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


def _delimiter(redirect: Node) -> tuple[str, str]:
    """The here-document's delimiter as written and as bash compares it (quotes removed)."""
    start = next((child for child in redirect.children if child.type == "heredoc_start"), None)
    raw = (start.text or b"").decode("utf-8", "surrogateescape") if start else ""
    return raw, re.sub(r"\\(.)", r"\1", raw).replace("'", "").replace('"', "")


def heredoc_expands(redirect: Node) -> bool:
    """Whether bash expands `$...` and backquotes in the body: its delimiter is unquoted."""
    raw, delimiter = _delimiter(redirect)
    return raw == delimiter


def heredoc_problems(redirect: Node, source: bytes) -> list[str]:
    """Where bash may read the here-document of `redirect` otherwise than the tree: its end
    on another line, or an expansion in its body that the parser did not read."""
    raw, delimiter = _delimiter(redirect)
    strip = any(child.type == "<<-" for child in redirect.children)
    body = next((child for child in redirect.children if child.type == "heredoc_body"), None)
    end = next((child for child in redirect.children if child.type == "heredoc_end"), None)
    problems = []
    if not delimiter or "$" in raw:
        problems.append("a here-document delimiter not modelled here")
    lines = (body.text or b"").decode("utf-8", "surrogateescape").split("\n") if body else []
    misplaced = end is not None and not end.is_missing and (
        _line_of(source, end, strip) != delimiter)
    if misplaced or any((line.lstrip("\t") if strip else line) == delimiter for line in lines):
        problems.append("a here-document whose end bash finds elsewhere")
    if body is not None and raw == delimiter and _unread_expansion(body):
        problems.append("an expansion in a here-document the parser did not read")
    return problems


def _line_of(source: bytes, node: Node, strip: bool) -> str:
    """The whole line `node` stands on: bash ends a here-document only at a line that is
    exactly its delimiter (after leading tabs, for `<<-`)."""
    start = source.rfind(b"\n", 0, node.start_byte) + 1
    end = source.find(b"\n", node.end_byte)
    line = source[start:end if end >= 0 else len(source)]
    return (line.lstrip(b"\t") if strip else line).decode("utf-8", "surrogateescape")


def _unread_expansion(body: Node) -> bool:
    """A `$` or backquote left in the body once the parsed expansions are blanked out, or a
    line continuation (bash joins the lines before looking for the end)."""
    literal = bytearray(body.text or b"")
    for child in body.named_children:
        if child.type != "heredoc_content":
            start, stop = child.start_byte - body.start_byte, child.end_byte - body.start_byte
            literal[start:stop] = b" " * (stop - start)
    rest = re.sub(rb"\\.", b"", bytes(literal), flags=re.DOTALL)
    unread = b"`" in rest or re.search(rb"\$(?![ \t\n]|$)", rest) is not None
    return unread or b"\\\n" in (body.text or b"")

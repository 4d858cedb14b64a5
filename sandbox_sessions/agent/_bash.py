"""Every command a bash line can run, found with a real bash parser (tree-sitter-bash).

Pure logic, no I/O. `analyze(line)` parses the line and walks the whole syntax tree: lists,
pipelines, subshells, groups, `if`/`for`/`while`/`case` bodies, function bodies, command
and process substitutions wherever they stand (arguments, redirections, assignments,
here-documents, `[[ ]]`, arithmetic, subscripts). Each simple command becomes one value
for the rules: its words joined by spaces, quoting removed where the value is static and
`ANY` where it is only known when bash runs (see `_bash_words`). Commands that run other
commands (`env`, `sudo`, `xargs`, `find -exec`, `bash -c`, `eval`, `trap`...) are judged
inside too (see `_bash_runners`).

**Fail closed.** `Analysis.blind` lists what the walk cannot see through; a caller must then
judge the line as if it could run anything (`_permissions`). That is:

- where tree-sitter and bash may read the line differently (`_bash_syntax`): a syntax
  error, text skipped as blank, a glued reserved word, a NUL byte, a line too long...;
- here-documents bash would read otherwise (`_bash_syntax.heredoc_problems`), backslashes
  inside backquotes (another quoting layer), a redirection target that swallows arguments
  (`git >/dev/null push`), two words the parser split where bash sees one, an expansion
  inside a regex or extglob pattern (one token to the parser);
- a command name only known when it runs (`$cmd`, `$(echo rm)`, `r*`), node types this
  module does not model, nesting past a bound;
- what `_bash_runners` and `_bash_variables` report (runners whose command can't be found,
  code hidden in arithmetic or in variables bash evaluates).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tree_sitter import Node

from ._bash_runners import judge
from ._bash_syntax import heredoc_expands, heredoc_problems, parse
from ._bash_variables import Findings, assign_to
from ._bash_words import Word, join_words, static_word, word_value
from ._patterns import Value

__all__ = ["Analysis", "analyze"]

# Syntax-tree depth walked, nested lines (`eval`, `bash -c`) included: deeper is blind. It
# keeps the walk's recursion well inside Python's limit.
_MAX_NESTING = 100
_MAX_LINES = 8
# Lines up to this length are cached: an agent often asks about the same line twice.
_CACHED_LENGTH = 4096
_ARITHMETIC_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-v"})
_INTEGER = re.compile(r"[+-]?[0-9]+")
_LITERALS = frozenset({
    "word", "string", "raw_string", "ansi_c_string", "translated_string", "number",
    "concatenation", "simple_expansion", "expansion", "command_substitution",
    "process_substitution", "arithmetic_expansion", "brace_expression",
})


@dataclass(frozen=True, slots=True)
class Analysis:
    """What a bash line can run.

    `commands` holds every simple command found, in the order of the walk, as its words;
    `values` the same commands as the text rules are matched against. `blind` says why the
    line cannot be fully accounted for; when it is not empty the line may run commands
    `commands` does not show.
    """

    commands: tuple[tuple[Word, ...], ...]
    values: tuple[Value, ...]
    blind: tuple[str, ...]


def analyze(line: str) -> Analysis:
    """Parse `line` as bash and list every command it can run (see the module docstring)."""
    return _analyze_cached(line) if len(line) <= _CACHED_LENGTH else _analyze(line)


@functools.lru_cache(maxsize=1024)
def _analyze_cached(line: str) -> Analysis:
    return _analyze(line)


def _analyze(line: str) -> Analysis:
    findings = Findings()
    try:
        _Walker(findings, depth=0).parse(line)
    except _TooDeep:
        findings.blind.append("nesting too deep")
    findings.settle()
    commands = tuple(dict.fromkeys(findings.commands))
    values = tuple(dict.fromkeys(join_words(command) for command in commands))
    return Analysis(commands, values, tuple(dict.fromkeys(findings.blind)))


class _TooDeep(Exception):
    """The walk went past `_MAX_NESTING`: the whole line is blind."""


def _text(node: Node | None) -> str:
    return ((node.text or b"") if node is not None else b"").decode("utf-8", "surrogateescape")


class _Walker:
    """One line's walk; nested lines get a walker of their own sharing the findings and
    the nesting count."""

    def __init__(self, findings: Findings, *, depth: int, nesting: int = 0) -> None:
        self.findings = findings
        self._depth = depth
        self._nesting = nesting
        self._source = b""

    def line(self, text: str) -> None:
        """Judge `text`, a line some command runs (`eval`, `bash -c`, `trap`...)."""
        if self._depth >= _MAX_LINES:
            self._blind("shell lines nested too deep")
            return
        _Walker(self.findings, depth=self._depth + 1, nesting=self._nesting).parse(text)

    def parse(self, text: str) -> None:
        """Parse `text` and walk its tree."""
        parsed = parse(text)
        self._source = parsed.source
        self.findings.blind.extend(parsed.blind)
        if parsed.root is not None:
            self._visit(parsed.root)

    def _blind(self, reason: str) -> None:
        self.findings.blind.append(reason)

    @contextlib.contextmanager
    def _level(self) -> Iterator[None]:
        if self._nesting >= _MAX_NESTING:
            raise _TooDeep
        self._nesting += 1
        try:
            yield
        finally:
            self._nesting -= 1

    def _visit(self, node: Node, arith: bool = False) -> None:
        handler = _HANDLERS.get(node.type)
        if handler is None:
            if node.is_named and node.type != "ERROR":  # an ERROR made the line blind
                self._blind(f"a construct not modelled here ({node.type})")
            return
        with self._level():
            handler(self, node, arith)

    def _children(self, node: Node, arith: bool = False) -> None:
        for child in node.named_children:
            self._visit(child, arith)

    def _list(self, node: Node, arith: bool) -> None:
        # `a && b && c` nests to the left, one level per command: walk the spine in a loop.
        items: list[Node] = []
        while node.type == "list":
            first, *rest = node.named_children
            items.extend(reversed(rest))
            node = first
        items.append(node)
        for item in reversed(items):
            self._visit(item)

    def _words(self, nodes: Iterable[Node]) -> list[Word]:
        words: list[Word] = []
        end = -1
        for node in nodes:
            if node.start_byte == end:
                self._blind("one word the parser split in two")
            end = node.end_byte
            self._visit(node)
            words.append(word_value(node))
        return words

    def _command(self, node: Node, arith: bool) -> None:
        literals: list[Node] = []
        for index, child in enumerate(node.children):
            field = node.field_name_for_child(index)
            if child.type == "variable_assignment":
                self._assignment(child, False)
            elif field == "name":
                literals.extend(child.named_children)
            elif field == "argument":
                literals.append(child)
            elif field == "redirect":
                self._visit(child)
            else:
                self._blind("a command shape not modelled here")
                self._visit(child)
        judge(self._words(literals), self)

    def _declaration(self, node: Node, arith: bool) -> None:
        words = [static_word(_text(node.children[0]))]
        for child in node.children[1:]:
            if child.type == "variable_assignment":
                self._assignment(child, False)
                value = child.child_by_field_name("value")
                head = _text(child)[:value.start_byte - child.start_byte] if value else _text(
                    child)
                words.append(Word((head, *(word_value(value).parts if value else ()))))
            elif child.type == "variable_name":
                words.append(static_word(_text(child)))
            else:
                words.extend(self._words([child]))
        judge(words, self)

    def _assignment(self, node: Node, arith: bool) -> None:
        target = node.child_by_field_name("name")
        value = node.child_by_field_name("value")
        if target is not None and target.type == "subscript":
            self._visit(target.child_by_field_name("index") or target, True)
            target = target.child_by_field_name("name")
        if value is not None:
            self._visit(value, arith)
        if arith:
            self.findings.assign(_text(target), safe=True)
        else:
            word = word_value(value) if value is not None and value.type != "array" else None
            assign_to(_text(target), word, self.findings)

    def _array(self, node: Node, arith: bool) -> None:
        for child in node.named_children:
            key, is_keyed, _ = _text(child).partition("]=")
            if key.startswith("[") and is_keyed:
                self.findings.arithmetic(key[1:])  # `([i]=v)`: an indexed array's key
            self._visit(child)

    def _test_command(self, node: Node, arith: bool) -> None:
        if node.children[0].type == "[[":
            for child in node.named_children:
                self._test_expression(child, False)
            return
        inner = [word for child in node.children[1:-1] for word in self._flatten(child)]
        judge([static_word("["), *inner, static_word("]")], self)

    def _flatten(self, node: Node) -> list[Word]:
        """The words of a `[ ... ]` expression, which the test builtin receives as arguments."""
        if node.type in _LITERALS:
            return self._words([node])
        if node.type == "redirected_statement":
            self._blind("a redirection inside a test expression")
            return []
        if node.child_count == 0:  # an operator, `-f`, a pattern
            return [static_word(_text(node))]
        with self._level():
            return [word for child in node.children for word in self._flatten(child)]

    def _test_expression(self, node: Node, arith: bool) -> None:
        if node.type not in ("binary_expression", "unary_expression",
                             "parenthesized_expression"):
            self._visit(node, arith)
            return
        operator = node.child_by_field_name("operator")
        numeric = arith or _text(operator) in _ARITHMETIC_TESTS
        with self._level():
            for child in node.named_children:
                if operator is None or child != operator:
                    self._test_expression(child, numeric)

    def _compound(self, node: Node, arith: bool) -> None:
        self._children(node, node.children[0].type == "((")

    def _c_for(self, node: Node, arith: bool) -> None:
        for index, child in enumerate(node.children):
            if child.is_named:
                self._visit(child, node.field_name_for_child(index) != "body")

    def _for(self, node: Node, arith: bool) -> None:
        variable = node.child_by_field_name("variable")
        values = self._words(node.children_by_field_name("value"))
        numbers = bool(values) and all(_INTEGER.fullmatch(w.text or "x") for w in values)
        assign_to(_text(variable), static_word("0") if numbers else None, self.findings)
        if node.children[0].type == "select":
            assign_to("REPLY", None, self.findings)  # what the user typed
        self._visit(node.child_by_field_name("body") or node)

    def _redirect(self, node: Node, arith: bool) -> None:
        if len(node.children_by_field_name("destination")) > 1:
            self._blind("a redirection followed by words bash reads as arguments")
        self._children(node)

    def _heredoc(self, node: Node, arith: bool) -> None:
        self.findings.blind.extend(heredoc_problems(node, self._source))
        for index, child in enumerate(node.children):
            if node.field_name_for_child(index) == "argument":
                self._blind("arguments after a here-document operator")
            elif child.type == "heredoc_body" and heredoc_expands(node):
                self._children(child)
            elif child.is_named and child.type not in ("heredoc_start", "heredoc_body",
                                                        "heredoc_end"):
                self._visit(child)

    def _substitution(self, node: Node, arith: bool) -> None:
        if arith:
            self._blind("arithmetic on a command's output")
        if node.children[0].type in ("`", "$`") and "\\" in _text(node)[1:-1]:
            self._blind("a backslash inside backquotes")
        self._children(node)

    def _expansion(self, node: Node, arith: bool) -> None:
        subject = next((c for c in node.named_children if c.type == "variable_name"), None)
        if _text(node).startswith("${!") and subject is not None:
            self.findings.refs.add(_text(subject))  # `${!x}` reads the variable x names
        offsets = False
        previous = ""
        for index, child in enumerate(node.children):
            is_operator = node.field_name_for_child(index) == "operator"
            if is_operator and _text(child) in ("=", ":="):
                self.findings.assign(_text(subject))
            if is_operator and previous == "@" and _text(child) == "P":
                self._blind("a value expanded as a prompt string (${x@P}), which runs code")
            offsets = offsets or (is_operator and _text(child) == ":")
            previous = _text(child) if is_operator else ""
            if child.is_named:
                self._visit(child, arith or offsets)

    def _subscript(self, node: Node, arith: bool) -> None:
        name, index = node.child_by_field_name("name"), node.child_by_field_name("index")
        if arith and name is not None:
            self.findings.refs.add(_text(name))
        if index is not None:
            self._visit(index, True)

    def _simple_expansion(self, node: Node, arith: bool) -> None:
        if arith:
            self.findings.refs.add(_text(node)[1:])

    def _name(self, node: Node, arith: bool) -> None:
        if arith:
            self.findings.arithmetic(_text(node))

    def _pattern(self, node: Node, arith: bool) -> None:
        # A regex or extglob is one token to the parser: an expansion in it was not parsed.
        if any(opening in _text(node) for opening in ("`", "$(", "${", "$[")):
            self._blind("an expansion inside a pattern the parser did not read")

    def _nothing(self, node: Node, arith: bool) -> None:
        return


_Handler = Callable[[_Walker, Node, bool], None]
_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys([
        "program", "pipeline", "negated_command", "subshell", "do_group",
        "if_statement", "elif_clause", "else_clause", "while_statement", "redirected_statement",
        "variable_assignments", "case_statement", "case_item", "function_definition",
        "herestring_redirect", "concatenation", "string", "translated_string",
        "binary_expression", "unary_expression", "ternary_expression", "postfix_expression",
        "parenthesized_expression", "process_substitution", "brace_expression", "number",
        "heredoc_body",
    ], _Walker._children),
    **dict.fromkeys([
        "comment", "special_variable_name", "file_descriptor", "heredoc_start", "heredoc_end",
        "heredoc_content", "test_operator",
    ], _Walker._nothing),
    **dict.fromkeys(["regex", "extglob_pattern"], _Walker._pattern),
    **dict.fromkeys(["word", "variable_name", "raw_string", "ansi_c_string", "string_content"],
                    _Walker._name),
    "list": _Walker._list,
    "array": _Walker._array,
    "command": _Walker._command,
    "declaration_command": _Walker._declaration,
    "unset_command": _Walker._declaration,
    "variable_assignment": _Walker._assignment,
    "test_command": _Walker._test_command,
    "compound_statement": _Walker._compound,
    "c_style_for_statement": _Walker._c_for,
    "for_statement": _Walker._for,
    "file_redirect": _Walker._redirect,
    "heredoc_redirect": _Walker._heredoc,
    "command_substitution": _Walker._substitution,
    "arithmetic_expansion": lambda walker, node, arith: walker._children(node, True),
    "expansion": _Walker._expansion,
    "subscript": _Walker._subscript,
    "simple_expansion": _Walker._simple_expansion,
}

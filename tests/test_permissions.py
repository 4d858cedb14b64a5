"""Permission rules: matching, last-match-wins, `always` patterns and validation (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_sessions._exceptions import InvalidArgument
from sandbox_sessions._types import PermissionRules
from sandbox_sessions.agent._permissions import (
    Rules,
    always_patterns,
    evaluate,
    matches,
    merge_always,
    validate_rules,
)

BASH_RULES: Rules = {"bash": {"*": "ask", "git status*": "allow", "rm -rf *": "deny"}}


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "", True),
        ("*", "anything at all / with slashes", True),
        ("git status*", "git status", True),
        ("git status*", "git status --short", True),
        ("git status*", "git stash", False),
        ("git status *", "git status", True),  # a trailing " *" is optional
        ("git status *", "git status -s", True),
        ("git status *", "git statusx", False),
        ("/workspace/*", "/workspace/a/b/c.py", True),
        ("/workspace/*", "/workspaces/a", False),
        ("*.py", "/src/a.py", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[ab]", "a", False),  # brackets are literal: commands are full of them
        ("[ab]", "[ab]", True),
        ("ls", "ls -la", False),  # the whole value must match
        ("echo *", "echo a\nrm -rf /", True),  # `*` spans lines too
    ],
)
def test_matches(pattern: str, value: str, expected: bool) -> None:
    assert matches(pattern, value) is expected


def test_nothing_matching_allows() -> None:
    assert evaluate({}, "bash", "rm -rf /") == "allow"
    assert evaluate({"read": "deny"}, "bash", "ls") == "allow"
    assert evaluate({"bash": {"git *": "deny"}}, "bash", "ls") == "allow"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("git status", "allow"),
        ("git status --porcelain", "allow"),
        ("rm -rf build", "deny"),
        ("rm build", "ask"),
        ("ls", "ask"),
    ],
)
def test_bash_command_globs(command: str, expected: str) -> None:
    assert evaluate(BASH_RULES, "bash", command) == expected


def test_the_last_matching_rule_wins() -> None:
    rules: Rules = {"bash": {"rm *": "deny", "*": "allow"}}
    assert evaluate(rules, "bash", "rm -rf /") == "allow"
    reordered: Rules = {"bash": {"*": "allow", "rm *": "deny"}}
    assert evaluate(reordered, "bash", "rm -rf /") == "deny"


def test_the_star_tool_comes_before_the_tool_own_entry() -> None:
    rules: Rules = {"read": "allow", "*": "ask"}  # the outer order does not matter
    assert evaluate(rules, "read", "/etc/passwd") == "allow"
    assert evaluate(rules, "write", "/etc/passwd") == "ask"
    patterned: Rules = {"*": {"/etc/*": "deny"}, "read": {"/workspace/*": "allow"}}
    assert evaluate(patterned, "read", "/etc/passwd") == "deny"
    assert evaluate(patterned, "write", "/etc/passwd") == "deny"
    assert evaluate(patterned, "read", "/workspace/a") == "allow"
    assert evaluate({"*": "deny", "read": {"/etc/*": "allow"}}, "read", "/etc/x") == "allow"


def test_file_path_globs() -> None:
    rules: Rules = {"edit": {"*": "ask", "/workspace/*": "allow", "/workspace/.git/*": "deny",
                             "*.env": "deny"}}
    assert evaluate(rules, "edit", "/workspace/src/app.py") == "allow"
    assert evaluate(rules, "edit", "/workspace/.git/config") == "deny"
    assert evaluate(rules, "edit", "/workspace/prod.env") == "deny"
    assert evaluate(rules, "edit", "/home/user/.bashrc") == "ask"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("git status --short", ["git status *"]),
        ("git status", ["git status *"]),
        ("git -C repo log", ["git *"]),  # an option before the subcommand: the tool only
        ("ls -la src", ["ls *"]),
        ("npm run build", ["npm run *"]),
        ("python3 -m pytest 'tests/a b.py'", ["python3 *"]),
        ("pytest", ["pytest *"]),
        ("cd x && make -j4", ["cd *", "make *"]),  # every command of the line
        ("[ -f x ] && ls", ["[ -f x ]", "ls *", "[ -f x ] && ls"]),  # and the line if need be
        # Lines the parser cannot see through: no pattern could allow them (was: the line).
        ("'my tool' --flag", []),
        ("$(whoami)", []),
        ("echo 'unclosed", []),
        ("rm *.o", ["rm *"]),
        ("(cd x && rm *)", []),  # the line holds wildcards: nothing beyond this call
    ],
)
def test_always_patterns_for_bash(command: str, expected: list[str]) -> None:
    patterns = always_patterns("bash", command)
    assert patterns == expected
    if patterns:  # once granted, the same line runs without asking
        assert evaluate(merge_always({"bash": "ask"}, "bash", patterns), "bash", command) == "allow"


def test_always_patterns_for_other_tools_are_exact() -> None:
    assert always_patterns("read", "/workspace/a.py") == ["/workspace/a.py"]
    assert always_patterns("edit", "/workspace/*.py") == []  # would match more than itself
    assert always_patterns("todowrite", "*") == ["*"]


def test_merge_always_adds_winning_allow_rules_without_changing_the_input() -> None:
    rules: Rules = {"*": "ask", "bash": {"*": "ask", "git *": "deny"}}
    merged = merge_always(rules, "bash", ["git status *"])
    assert merged == {"*": "ask", "bash": {"*": "ask", "git *": "deny", "git status *": "allow"}}
    assert list(merged["bash"]) == ["*", "git *", "git status *"]
    assert evaluate(merged, "bash", "git status -s") == "allow"
    assert evaluate(merged, "bash", "git push") == "deny"
    assert rules == {"*": "ask", "bash": {"*": "ask", "git *": "deny"}}


def test_merge_always_moves_an_existing_pattern_last_and_wraps_a_bare_action() -> None:
    rules: Rules = {"read": {"/a": "deny", "*": "deny"}, "edit": "ask"}
    moved = merge_always(rules, "read", ["/a"])
    assert list(moved["read"]) == ["*", "/a"]
    assert evaluate(moved, "read", "/a") == "allow"
    wrapped = merge_always(rules, "edit", ["/w/x.py"])
    assert wrapped["edit"] == {"*": "ask", "/w/x.py": "allow"}
    assert evaluate(wrapped, "edit", "/w/y.py") == "ask"
    fresh = merge_always({}, "write", ["/w/x.py"])
    assert fresh == {"write": {"/w/x.py": "allow"}}
    assert merge_always(rules, "edit", []) == rules


def test_validate_rules_returns_a_plain_copy() -> None:
    source: Rules = {"*": "ask", "bash": {"git *": "allow"}}
    checked = validate_rules(source)
    assert checked == {"*": "ask", "bash": {"git *": "allow"}}
    assert checked["bash"] is not source["bash"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["allow"], "must be a mapping, not list"),
        ({"bash": "yes"}, "'yes' is not allow, ask or deny"),
        ({"bash": {"git *": "maybe"}}, r"'bash' 'git \*': 'maybe' is not allow"),
        ({"bash": {"git *": None}}, "None is not allow"),
        ({"bash": {1: "allow"}}, "1 is not a pattern"),
        ({"": "allow"}, "'' is not a tool name"),
        ({3: "allow"}, "3 is not a tool name"),
        ({"bash": ["allow"]}, r"\['allow'\] is not allow"),
    ],
)
def test_validate_rules_refuses_bad_rules(rules: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_rules(rules)


COMPOUND_RULES: PermissionRules = {
    "bash": {"*": "ask", "git status*": "allow", "echo *": "allow", "rm -rf *": "deny"}
}


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("git status --short", "allow"),
        ("git status; rm -rf x", "deny"),
        ("git status && curl example", "ask"),
        ("git status || curl example", "ask"),
        ("echo hi | rm -rf /tmp", "deny"),
        ("git status\ncurl example", "ask"),
        ("git status & curl example", "ask"),
        ("echo 'a; rm -rf x'", "allow"),  # quoted: one command
        ("echo $(curl example)", "ask"),
        ("echo `curl example`", "ask"),
    ],
)
def test_a_bash_line_is_judged_command_by_command(command: str, expected: str) -> None:
    assert evaluate(COMPOUND_RULES, "bash", command) == expected


def test_a_substituted_command_is_judged_like_any_other() -> None:
    assert evaluate({"bash": "allow"}, "bash", "echo $(date)") == "allow"
    assert evaluate({}, "bash", "echo $(date)") == "allow"  # nothing asked: the default
    assert evaluate({"bash": {"*": "ask", "echo *": "allow"}}, "bash", "echo $(date)") == "ask"
    allowed: Rules = {"bash": {"*": "ask", "echo *": "allow", "date *": "allow"}}
    assert evaluate(allowed, "bash", "echo $(date +%s)") == "allow"

"""The bash rule matcher against a table of command lines (tests/bash_corpus.py).

Each line gets the decision written next to it under four rule sets; adversarial lines try
to run `touch` (denied) past rules that allow `ls`, `echo` and friends.
"""

from __future__ import annotations

import random
import time

import pytest
from bash_corpus import FORBIDDEN_PAYLOADS, RULE_SETS, TABLE, Row, variations

from sandbox_sessions.agent._permissions import Rules, always_patterns, evaluate, matches


def _label_line(line: str) -> str:
    text = repr(line)
    return text if len(text) <= 60 else f"{text[:40]}...({len(line)} chars)"


def _label(row: Row) -> str:
    return _label_line(row.line)


@pytest.mark.parametrize("row", TABLE, ids=_label)
def test_each_line_gets_its_decision_under_every_rule_set(row: Row) -> None:
    expected = dict(zip(RULE_SETS, row[1:], strict=True))
    got = {name: evaluate(rules, "bash", row.line) for name, rules in RULE_SETS.items()}
    assert got == expected


@pytest.mark.parametrize("line", variations(FORBIDDEN_PAYLOADS), ids=_label_line)
def test_no_way_of_running_a_forbidden_command_is_allowed(line: str) -> None:
    for name in ("ask", "deny", "open"):
        assert evaluate(RULE_SETS[name], "bash", line) != "allow", name


def test_a_blind_line_is_never_better_than_ask() -> None:
    permissive: list[Rules] = [
        {"bash": "allow"}, {"*": "allow"}, {"bash": {"*": "allow", "ls *": "allow"}}]
    for rules in permissive:
        assert evaluate(rules, "bash", "ls; $cmd") == "ask"
        assert evaluate(rules, "bash", "ls; echo 'open") == "ask"


def test_a_blind_line_gets_any_deny_rule_that_could_apply() -> None:
    # Nothing in `eval $x` names curl, but $x might: every deny rule could apply.
    rules: Rules = {"bash": {"*": "allow", "curl *": "deny"}}
    assert evaluate(rules, "bash", "eval $x") == "deny"
    across_tools: Rules = {"*": "allow", "bash": {"curl *": "deny"}}
    assert evaluate(across_tools, "bash", "eval $x") == "deny"
    # A later rule that matches whatever $x holds hides the earlier ones, as for any line.
    hidden: Rules = {"bash": {"curl *": "deny", "*": "allow"}}
    assert evaluate(hidden, "bash", "eval $x") == "ask"


def test_unknown_parts_count_for_every_rule_they_could_match() -> None:
    rules: Rules = {"bash": {"*": "allow", "git push *": "ask", "git push --force*": "deny"}}
    assert evaluate(rules, "bash", "git push $remote") == "deny"  # $remote may be --force
    assert evaluate(rules, "bash", "git push origin $branch") == "ask"
    assert evaluate(rules, "bash", "git $cmd") == "deny"
    assert evaluate(rules, "bash", "git status $x") == "allow"


def test_a_rule_that_must_match_ends_the_search() -> None:
    rules: Rules = {"bash": {"*": "allow", "echo *secret*": "deny"}}
    assert evaluate(rules, "bash", "echo $HOME") == "deny"  # $HOME could hold "secret"
    later: Rules = {"bash": {"*": "allow", "echo *secret*": "deny", "echo *": "ask"}}
    assert evaluate(later, "bash", "echo $HOME") == "ask"  # `echo *` wins whatever it holds


def test_nothing_before_a_new_line_hides_the_command_after_it() -> None:
    # Fragments glued at random (a fixed seed), then a new line and a denied command: the
    # prefix may make no sense, but it never hides the command (bash runs it, or the line is
    # blind). Backslashes and here-documents are left out: they can make it plain text.
    fragments = ["ls", " ", ";", "&&", "|", "(", ")", "{", "}", "$(", "`", "'", '"',
                 "\n", "#", "$", "x", "=", "[[", "]]", "((", "))", "eval", "!", "$'",
                 "touch", "\r", "\x00", "\u00a0", "*", "if", "then", "fi", "a[", "]", "\udc80"]
    generator = random.Random(6)
    verdicts = set()
    for _ in range(3000):
        line = "".join(generator.choice(fragments) for _ in range(generator.randint(1, 12)))
        verdicts.add(evaluate(RULE_SETS["ask"], "bash", line))
        always_patterns("bash", line)  # never raises either
        assert evaluate(RULE_SETS["ask"], "bash", line + "\ntouch x") == "deny", line
    assert verdicts == {"allow", "ask", "deny"}


def test_matching_a_long_value_does_not_backtrack() -> None:
    # As a regex (`a.*b.*c.*d.*e`) this took over a minute for a 4 kB value.
    value = "a" + "xbcd" * 50_000
    started = time.monotonic()
    assert not matches("a*b*c*d*e", value)
    assert matches("a*b*c*d*", value)
    rules: Rules = {"bash": {"*": "allow", "a*b*c*d*e": "deny"}}
    assert evaluate(rules, "bash", "echo " + value) == "allow"
    assert time.monotonic() - started < 20  # does not hang


def test_a_pathological_line_is_judged_in_bounded_time() -> None:
    lines = ["echo " + "$x " * 100_000, "[ " + "( " * 5_000 + "x" + " )" * 5_000 + " ]",
             "echo $((" + "+".join(["1"] * 5_000) + "))", "a=(" + " [1]=x" * 20_000 + ")"]
    for line in lines:
        started = time.monotonic()
        assert evaluate(RULE_SETS["ask"], "bash", line) in ("ask", "deny")
        assert time.monotonic() - started < 20  # does not hang

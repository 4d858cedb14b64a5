"""The bash rule matcher against real bash: whatever bash runs must have been judged allowed.

Every line of the corpus (tests/bash_corpus.py: the table and generated variations) that the
matcher allows under a rule set is run with `bash -c` in a session's container, the way the
agent's bash tool runs it. Three witnesses record what it ran:

- bash's own trace of every simple command it ran (`set -x` to a file descriptor of its own,
  set up through `BASH_ENV`, so child bashes started by `bash -c` are traced too);
- wrappers first on `PATH` for the forbidden commands (`touch`, `id`, `curl`), which log
  each run, for commands started by another program (`env`, `xargs`, `find -exec`);
- the file the generated lines' `touch pwned` would leave, for a forbidden command run by
  its path.

Each command a witness saw must be allowed by the rule set on its own (the last matching
rule, as the rules read; a command run by its path also as its base name, as the rules
promise). The harness proves itself on lines run without asking the matcher.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
from bash_corpus import (
    BENIGN_PAYLOADS,
    FORBIDDEN_PAYLOADS,
    RULE_SETS,
    TABLE,
    variations,
)

from sandbox_sessions import AsyncSandboxClient
from sandbox_sessions._types import PermissionAction, PermissionRules
from sandbox_sessions.agent._permissions import evaluate, matches

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

ROOT = "/tmp/bash-differential"
SETUP = "\n".join([
    'exec 19>>"$SANDBOX_TRACE"',
    "BASH_XTRACEFD=19",
    "PS4=$'\\001 '",  # its first character repeats once per level of nesting
    "set -x",
    "",
])
WRAPPER = "\n".join([
    "#!/bin/sh",
    "printf '%s %s\\0' \"${0##*/}\" \"$*\" >> \"$SANDBOX_EXECS\"",
    "",
])
DRIVER = '''
import json, os, signal, subprocess, sys

root = sys.argv[1]
with open(os.path.join(root, "lines.json"), encoding="utf-8") as source:
    lines = json.load(source)


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


results = []
for index, line in enumerate(lines):
    work = os.path.join(root, "run", str(index))
    os.makedirs(work)
    trace, execs = (os.path.join(root, "%s-%d" % (kind, index)) for kind in ("trace", "execs"))
    env = dict(os.environ, BASH_ENV=os.path.join(root, "setup.sh"), SANDBOX_TRACE=trace,
               SANDBOX_EXECS=execs, HOME=work,
               PATH=os.path.join(root, "bin") + ":" + os.environ["PATH"])
    process = subprocess.Popen(["bash", "-c", line], cwd=work, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=10)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the line's own group, background jobs too
    except ProcessLookupError:
        pass
    process.wait()
    results.append({"trace": read(trace), "execs": read(execs), "timed_out": timed_out,
                    "files": sorted(os.listdir(work))})
with open(os.path.join(root, "results.json"), "w", encoding="utf-8") as out:
    json.dump(results, out)
'''
FORBIDDEN_COMMANDS = ("touch", "id", "curl")
EVIDENCE = "pwned"  # a name only the payloads use: redirections may create others
# Lines run without asking the matcher: the harness must see what each runs.
CANARIES = {
    "touch pwned": "bash ran touch pwned",
    "env touch pwned": "exec touch pwned",
    "/usr/bin/touch pwned": "file pwned",
    "bash -c 'id'": "bash ran id",
    "echo $(touch y)": "bash ran touch y",
    "f() { id; }; f": "bash ran id",
}
_NOT_COMMANDS = re.compile(r"(for|select|case|\[\[|\(\() ")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")


def decision(rules: PermissionRules, text: str) -> PermissionAction:
    """The last bash rule matching `text` as a plain command (no parsing involved), and
    `/usr/bin/touch x` as `touch x` too: the stricter."""
    entry = rules["bash"]
    name, blank, rest = text.partition(" ")
    verdicts: list[PermissionAction] = []
    for value in dict.fromkeys([text, name.rsplit("/", 1)[-1] + blank + rest]):
        verdict: PermissionAction = "allow"
        for glob, action in [("*", entry)] if isinstance(entry, str) else entry.items():
            if matches(glob, value):
                verdict = action
        verdicts.append(verdict)
    return max(verdicts, key=["allow", "ask", "deny"].index)


def traced_commands(trace: str) -> list[str]:
    """The simple commands in a bash trace, each as its words joined by spaces (bash quotes
    them as the shell reads them). Loop heads, tests and assignments are not commands."""
    commands = []
    for entry in re.split(r"(?:^|\n)\x01+ ", trace)[1:]:
        entry = entry.removesuffix("\n")
        assignment = _ASSIGNMENT.match(entry)
        words = shlex.split(entry)
        if _NOT_COMMANDS.match(entry) or (assignment and (
                len(words) == 1 or entry[assignment.end():].startswith("("))):
            continue
        commands.append(" ".join(words))
    return commands


def violations(rules: PermissionRules, outcome: dict[str, Any]) -> list[str]:
    """What a run did that `rules` do not allow."""
    found = [f"bash ran {command}" for command in traced_commands(outcome["trace"])
             if decision(rules, command) != "allow"]
    found += [f"exec {record}" for record in outcome["execs"].split("\0")
              if record and decision(rules, record) != "allow"]
    found += [f"file {EVIDENCE}"] if EVIDENCE in outcome["files"] else []
    if outcome["timed_out"]:
        found.append("timed out")
    return found


def corpus() -> list[str]:
    lines = [row.line for row in TABLE]
    lines += variations(FORBIDDEN_PAYLOADS) + variations(BENIGN_PAYLOADS)
    return list(dict.fromkeys(lines))


async def run_in_container(client: AsyncSandboxClient, image: str, lines: list[str]) -> list[
        dict[str, Any]]:
    async with await client.agent("build", image=image).create_session(title="bash") as session:
        await session.put_file(f"{ROOT}/setup.sh", SETUP)
        await session.put_file(f"{ROOT}/driver.py", DRIVER)
        await session.put_file(f"{ROOT}/lines.json", json.dumps(lines))
        for name in FORBIDDEN_COMMANDS:
            await session.put_file(f"{ROOT}/bin/{name}", WRAPPER, mode=0o755)
        result = await session.shell(f"python3 {ROOT}/driver.py {ROOT}", timeout=600)
        assert result.exit_code == 0, result.stderr
        results: list[dict[str, Any]] = json.loads(await session.get_file(f"{ROOT}/results.json"))
    assert len(results) == len(lines)
    return results


async def test_every_command_bash_runs_was_judged_and_allowed(
        client: AsyncSandboxClient, image: str) -> None:
    allowed_under = {
        line: [name for name in ("ask", "deny", "open")
               if evaluate(RULE_SETS[name], "bash", line) == "allow"]
        for line in corpus()
    }
    to_run = [line for line, names in allowed_under.items() if names]
    assert len(to_run) >= 150  # the corpus exercises bash, not just the matcher
    outcomes = await run_in_container(client, image, [*CANARIES, *to_run])

    for (canary, expected), outcome in zip(CANARIES.items(), outcomes, strict=False):
        assert expected in violations(RULE_SETS["ask"], outcome), canary  # the harness sees
    failures = [
        (name, line, problem)
        for line, outcome in zip(to_run, outcomes[len(CANARIES):], strict=True)
        for name in allowed_under[line]
        for problem in violations(RULE_SETS[name], outcome)
    ]
    assert failures == []
    traced = sum(bool(traced_commands(outcome["trace"])) for outcome in outcomes)
    assert traced >= len(to_run) - 10  # nearly every line ran a command bash traced

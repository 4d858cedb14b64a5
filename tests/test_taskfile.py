"""The task file: a full file into the model, and each kind of mistake named at its line.

Real files under tmp_path, no container. Each error test checks the whole message (file, line,
key path and words), so a wrong line or a raw pydantic dump fails it.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from sandbox_sessions import InvalidArgument
from sandbox_sessions import _taskfile as taskfile
from sandbox_sessions._taskfile import (
    MAX_TASK_BYTES,
    ArtifactExpectation,
    CommandSpec,
    CommandStep,
    ExpectArtifactStep,
    ExpectFileStep,
    FileExpectation,
    PromptStep,
    ShellStep,
    TaskAgent,
    TaskFile,
    Upload,
    load_task,
    parse_duration,
)
from sandbox_sessions._yaml_source import MAX_DEPTH, MAX_NODES
from sandbox_sessions.providers._scripted import ScriptEntry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FULL = """\
agent:
  name: build
  model: scripted
  script:
    - text: writing it
      tool_calls:
        - {name: write, input: {path: a.txt, content: hi}}
    - text: done
  system: You build things.
  tools: [bash, write]
  permissions:
    "*": allow
    bash: {"rm -rf *": deny}
  image: my/image:1
  max_steps: 7
  token_budget: 1000
  timeout: 1h30m
  permission_timeout: 45
upload:
  - ./project:/workspace/
  - data/c:d.txt:/opt/in
artifacts: out
steps:
  - prompt: Write a.txt.
  - shell: make test
    timeout: 90s
    expect_exit: 2
  - name: review it
    command: {name: team/review, arguments: {file: src/a.py}}
  - expect_artifact: {glob: "dist/*.whl", min_bytes: 10, max_bytes: 20}
  - expect_file: {path: /workspace/a.txt, contains: hi}
"""

# A task that is valid, to which the error cases add one mistake (its step 0 is line 3).
VALID = "agent: {script: [{text: hi}]}\nsteps:\n  - prompt: go\n"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current folder, so messages name `task.yaml` as given."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(folder: Path, text: str | bytes, name: str = "task.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _error(text: str | bytes | None, folder: Path) -> str:
    """The message of loading `text` (None: the task.yaml already there)."""
    if text is not None:
        _write(folder, text)
    with pytest.raises(InvalidArgument) as caught:
        load_task("task.yaml")
    return str(caught.value)


# --- a valid file -----------------------------------------------------------------------------


def test_a_full_file_becomes_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ci"
    _write(folder, FULL)
    monkeypatch.chdir(tmp_path)  # paths resolve against the file's folder, not the cwd
    task = load_task("ci/task.yaml")
    assert task == TaskFile(
        agent=TaskAgent(
            name="build", model="scripted",
            script=[ScriptEntry.model_validate({"text": "writing it", "tool_calls": [
                {"name": "write", "input": {"path": "a.txt", "content": "hi"}}]}),
                ScriptEntry(text="done")],
            system="You build things.", tools=["bash", "write"],
            permissions={"*": "allow", "bash": {"rm -rf *": "deny"}}, image="my/image:1",
            max_steps=7, token_budget=1000, timeout=5400.0, permission_timeout=45.0),
        upload=[Upload(source=folder / "project", destination="/workspace"),
                Upload(source=folder / "data/c:d.txt", destination="/opt/in")],
        artifacts=folder / "out",
        steps=[
            PromptStep(name="prompt 1", prompt="Write a.txt."),
            ShellStep(name='shell "make test"', shell="make test", timeout=90.0,
                      expect_exit=2),
            CommandStep(name="review it", command=CommandSpec(
                name="team/review", arguments={"file": "src/a.py"})),
            ExpectArtifactStep(name='expect_artifact "dist/*.whl"', expect_artifact=(
                ArtifactExpectation(glob="dist/*.whl", min_bytes=10, max_bytes=20))),
            ExpectFileStep(name='expect_file "/workspace/a.txt"', expect_file=(
                FileExpectation(path="/workspace/a.txt", contains="hi"))),
        ])
    assert task.upload[0].source.is_absolute()


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    task = load_task(_write(tmp_path, VALID))
    assert task.agent.name == "task"
    assert task.agent.model == "scripted"  # given a script, the model is the scripted one
    assert (task.agent.tools, task.agent.permissions, task.agent.max_steps) == (None, {}, 50)
    assert (task.agent.timeout, task.agent.permission_timeout) == (None, None)
    assert (task.agent.harness, task.agent.image) == ("builtin", None)  # the agent's default
    assert (task.upload, task.artifacts) == ([], None)


def test_a_harness_is_one_of_the_known_clis(tmp_path: Path) -> None:
    task = load_task(_write(tmp_path, "agent: {harness: codex, model: openai/gpt-5}\n"
                                      "steps: [{prompt: go}]\n"))
    assert (task.agent.harness, task.agent.model) == ("codex", "openai/gpt-5")
    with pytest.raises(InvalidArgument, match="harness"):
        load_task(_write(tmp_path, "agent: {harness: aider, model: openai/gpt-5}\n"
                                   "steps: [{prompt: go}]\n"))


def test_a_script_file_is_relative_to_the_task_file(tmp_path: Path) -> None:
    _write(tmp_path / "ci", "- text: from the file\n", "model.yaml")
    path = _write(tmp_path / "ci", "agent: {script: model.yaml}\nsteps: [{prompt: go}]\n")
    task = load_task(path)
    assert task.agent.script == tmp_path / "ci" / "model.yaml"
    assert task.agent.model == "scripted"


@pytest.mark.parametrize(("script", "problem"), [
    ("- text: hi\n- text: 1\n", "2: [1].text: must be a string, not an integer"),
    ("- text: hi\n- tool_calls: [{name: ''}]\n", "2: [1].tool_calls[0].name: must not be empty"),
    ("- &a {text: hi}\n- *a\n", "2: aliases (*a) are not allowed in this file: write the "
                                 "value out"),
    ("text: hi\n", "1: a script must be a list of entries"),
    ('[{"text": "json"}, {"delay": -1}]', '1: [1].delay: must be a number >= 0'),
])
def test_a_bad_script_file_is_named_with_its_line(in_tmp: Path, script: str,
                                                   problem: str) -> None:
    _write(in_tmp / "ci", script, "model.yaml")
    _write(in_tmp, "agent:\n  name: x\n  script: ci/model.yaml\nsteps: [{prompt: go}]\n")
    assert _error(None, in_tmp) == (
        f"task.yaml:3: agent.script: {in_tmp / 'ci' / 'model.yaml'}:{problem}")


def test_a_missing_script_file(in_tmp: Path) -> None:
    assert _error("agent: {script: nope.yaml}\nsteps: [{prompt: go}]\n", in_tmp) == (
        f"task.yaml:1: agent.script: no script file at {in_tmp / 'nope.yaml'} (a path is "
        "relative to the task file's folder)")


def test_long_commands_are_cut_in_default_names(tmp_path: Path) -> None:
    command = "python3 -m unittest discover -v -s tests -p 'test_*.py'"
    task = load_task(_write(tmp_path, VALID + f"  - shell: \"{command}\\nmore\"\n"))
    assert task.steps[1].name == f'shell "{command[:39]}…"'


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("20m", 1200.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1h0m5s", 3605.0),
    ("90m", 5400.0), (45, 45.0), (0.5, 0.5), ("168h", 604800.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "20 min", "1.5h", "30m1h", "", "0s", "20M", "1d", "90", " 90s", "h", -1, 0, True,
    float("inf"), float("nan"), "169h", None, [],
])
def test_what_is_not_a_duration(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|more than 0"):
        parse_duration(text)


def test_the_example_task_is_valid() -> None:
    task = load_task(EXAMPLES / "task.yaml")
    assert [type(step) for step in task.steps] == [PromptStep, ShellStep, ExpectArtifactStep,
                                                   ExpectFileStep]
    assert task.upload == [Upload(source=EXAMPLES / "task_project", destination="/workspace")]
    assert (task.upload[0].source / "greet.py").is_file()
    assert task.agent.model == "scripted"
    assert isinstance(task.agent.script, list)


def test_the_example_in_the_docstring_is_valid(tmp_path: Path) -> None:
    doc = taskfile.__doc__ or ""
    block = doc.split("A file in full", 1)[1].split("\n\n")[1]
    _write(tmp_path, "- text: done\n", "model.yaml")
    task = load_task(_write(tmp_path, textwrap.dedent(block)))
    assert [step.name for step in task.steps] == [
        "prompt 1", "tests", "command review", 'expect_artifact "*.whl"',
        'expect_file "/workspace/REPORT.md"']
    assert task.agent.timeout == 1200.0


def test_the_model_can_be_built_without_a_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    task = TaskFile.model_validate({"agent": {"model": "openai/gpt-4.1"},
                                    "upload": ["src:/w"], "steps": [{"shell": "ls"}]})
    assert task.upload[0].source == tmp_path / "src"  # relative to the current folder
    assert task.steps[0].name == 'shell "ls"'


# --- mistakes in the task, each at its line and key ----------------------------------------

ERRORS = {
    "wrong type deep in a step": (
        VALID + "  - expect_artifact:\n      glob: a\n      min_bytes: lots\n",
        "task.yaml:6: steps[1].expect_artifact.min_bytes: must be an integer >= 0, "
        "not a string"),
    "out of range deep in a step": (
        VALID + "  - expect_artifact:\n      glob: a\n      min_bytes: -1\n",
        "task.yaml:6: steps[1].expect_artifact.min_bytes: must be an integer >= 0"),
    "min above max": (
        VALID + "  - expect_artifact: {glob: a, min_bytes: 5, max_bytes: 2}\n",
        "task.yaml:4: steps[1].expect_artifact.max_bytes: must be at least min_bytes (5)"),
    "a step with two kinds": (
        VALID + "  - prompt: x\n    shell: make\n",
        "task.yaml:5: steps[1].shell: a step does one thing, but this one has both 'prompt' "
        "and 'shell': make two steps"),
    "a step with no kind": (
        VALID + "  - name: nothing\n",
        "task.yaml:4: steps[1]: a step needs one of: prompt, shell, command, expect_artifact, "
        "expect_file (it has 'name')"),
    "a step that is text": (
        VALID + "  - make test\n",
        "task.yaml:4: steps[1]: a step must be a mapping with one of: prompt, shell, command, "
        "expect_artifact, expect_file"),
    "unknown top-level key": (
        VALID + "stpes: []\n",
        "task.yaml:4: stpes: unknown key 'stpes' (expected one of: agent, upload, artifacts, "
        "steps)"),
    "misspelt top-level key": (
        "agent: {script: [{text: hi}]}\nstpes:\n  - prompt: go\n",
        "task.yaml:2: stpes: unknown key 'stpes' (expected one of: agent, upload, artifacts, "
        "steps)"),
    "unknown step key": (
        VALID + "  - shell: make\n    timout: 3\n",
        "task.yaml:5: steps[1].timout: unknown key 'timout' (expected one of: name, shell, "
        "timeout, expect_exit)"),
    "unknown key inside a step": (
        VALID + "  - expect_file:\n      path: a\n      contain: b\n",
        "task.yaml:6: steps[1].expect_file.contain: unknown key 'contain' (expected one of: "
        "path, contains)"),
    "missing key inside a step": (
        VALID + "  - expect_file:\n      contains: b\n",
        "task.yaml:4: steps[1].expect_file: missing key 'path'"),
    "bad duration of a step": (
        VALID + "  - shell: make\n    timeout: 20 min\n",
        "task.yaml:5: steps[1].timeout: '20 min' is not a duration: write seconds (90) or "
        "hours, minutes and seconds (90s, 20m, 1h30m)"),
    "bad duration of the agent": (
        "agent:\n  script: [{text: hi}]\n  timeout: 0s\nsteps: [{prompt: go}]\n",
        "task.yaml:3: agent.timeout: must be more than 0 and at most a week (604800 s)"),
    "upload with ..": (
        VALID + "upload:\n  - ./a:/workspace/../etc\n",
        "task.yaml:5: upload[0].destination: the destination '/workspace/../etc' must not "
        "contain '..'"),
    "upload to a relative path": (
        VALID + "upload: ['./a:workspace']\n",
        "task.yaml:4: upload[0]: './a:workspace' must be SRC:DST, a host path and an absolute "
        "container path (./project:/workspace)"),
    "upload without a colon": (
        VALID + "upload: [./a]\n",
        "task.yaml:4: upload[0]: './a' must be SRC:DST, a host path and an absolute container "
        "path (./project:/workspace)"),
    "upload without a source": (
        VALID + "upload: [':/w']\n",
        "task.yaml:4: upload[0]: ':/w' has no host path before the ':'"),
    "upload that is not a list": (
        VALID + "upload: ./a:/w\n",
        "task.yaml:4: upload: must be a list, not a string"),
    "bad permission action": (
        "agent:\n  script: [{text: hi}]\n  permissions:\n    bash:\n      'git *': allow\n"
        "      'rm *': nuke\nsteps: [{prompt: go}]\n",
        "task.yaml:6: agent.permissions.bash[\"rm *\"]: permission rule 'bash' 'rm *': 'nuke' "
        "is not allow, ask or deny"),
    "permission key that is a pattern": (
        "agent:\n  script: [{text: hi}]\n  permissions:\n    'git *': allow\n"
        "steps: [{prompt: go}]\n",
        "task.yaml:4: agent.permissions[\"git *\"]: permission rules: 'git *' is not a tool "
        "name (use \"*\", a built-in tool or one of the agent's tools: artifact, bash, edit, "
        "glob, grep, list, question, read, task, todowrite, write); to match a command line, "
        "nest it: {\"bash\": {'git *': ...}}"),
    "unknown tool": (
        "agent:\n  script: [{text: hi}]\n  tools:\n    - bash\n    - bogus\n"
        "steps: [{prompt: go}]\n",
        "task.yaml:5: agent.tools[1]: unknown tool 'bogus' (the built-in tools are: artifact, "
        "bash, edit, glob, grep, list, question, read, task, todowrite, write)"),
    "inline script entry": (
        "agent:\n  script:\n    - text: hi\n    - tool_calls:\n        - name: write\n"
        "          inptu: {}\nsteps: [{prompt: go}]\n",
        "task.yaml:6: agent.script[1].tool_calls[0].inptu: unknown key 'inptu' (expected one "
        "of: name, input, id)"),
    "no model": (
        "agent: {name: x}\nsteps: [{prompt: go}]\n",
        "task.yaml:1: agent: missing key 'model'"),
    "scripted without a script": (
        "agent:\n  model: scripted\nsteps: [{prompt: go}]\n",
        "task.yaml:2: agent.model: the model 'scripted' needs a script"),
    "a script for another model": (
        "agent:\n  model: openai/gpt-4.1\n  script: [{text: hi}]\nsteps: [{prompt: go}]\n",
        "task.yaml:3: agent.script: a script is played by the model 'scripted' only, not "
        "'openai/gpt-4.1'"),
    "a command name with ..": (
        VALID + "  - command: {name: ../x}\n",
        "task.yaml:4: steps[1].command.name: command name '../x' must be words of letters, "
        "digits, '.', '_' or '-' joined by '/'"),
    "a command argument that is not text": (
        VALID + "  - command:\n      name: review\n      arguments:\n        - a\n        - 3\n",
        "task.yaml:8: steps[1].command.arguments[1]: must be a string"),
    "an exit code out of range": (
        VALID + "  - shell: make\n    expect_exit: 300\n",
        "task.yaml:5: steps[1].expect_exit: must be an integer >= 0 and <= 255"),
    "a bool for a number": (
        VALID + "  - shell: make\n    expect_exit: true\n",
        "task.yaml:5: steps[1].expect_exit: must be an integer >= 0 and <= 255, not true or "
        "false"),
    "a list for text": (
        VALID + "  - prompt: [a]\n",
        "task.yaml:4: steps[1].prompt: must be a string, not a list"),
    "an empty prompt": (
        VALID + "  - prompt: ''\n",
        "task.yaml:4: steps[1].prompt: must not be empty"),
    "no steps": (
        "agent: {script: [{text: hi}]}\nsteps: []\n",
        "task.yaml:2: steps: must not be empty"),
    "the earliest line is reported": (
        "agent:\n  script: [{text: hi}]\n  max_steps: 0\nsteps:\n  - shell: 1\n",
        "task.yaml:3: agent.max_steps: must be an integer > 0"),
    "a top level that is a list": (
        "- agent\n- steps\n",
        "task.yaml:1: the task file must be a mapping of agent, upload, artifacts and steps"),
    "an agent that is a list": (
        "agent: [1]\nsteps: [{prompt: go}]\n",
        "task.yaml:1: agent: must be a mapping, not a list"),
}


@pytest.mark.parametrize(("text", "expected"), list(ERRORS.values()), ids=list(ERRORS))
def test_each_mistake_is_named_at_its_line(in_tmp: Path, text: str, expected: str) -> None:
    assert _error(text, in_tmp) == expected


# --- YAML that is refused ---------------------------------------------------------------------

YAML_ERRORS = {
    "syntax error": (
        "agent: {script: [{text: hi}]\nsteps: [{prompt: go}]\n",
        "task.yaml:2: not valid YAML: while parsing a flow mapping, expected ',' or '}', but "
        "got '<scalar>'"),
    "duplicate key": (
        VALID + "  - shell: a\n    shell: b\n",
        "task.yaml:5: steps[1]: the key 'shell' is given twice, at lines 4 and 5"),
    "duplicate top-level key": (
        VALID + "steps: []\n",
        "task.yaml:4: the key 'steps' is given twice, at lines 2 and 4"),
    "alias": (
        "x: &a [go]\n" + VALID + "  - prompt: *a\n",
        "task.yaml:5: aliases (*a) are not allowed in this file: write the value out"),
    "merge key": (
        "agent:\n  <<: {model: scripted}\nsteps: []\n",
        "task.yaml:2: agent: merge keys (<<) are not allowed"),
    "number as key": (
        VALID + "1: x\n",
        "task.yaml:4: the key '1' is read as a number, not a string: quote it"),
    "on as key": (
        "agent:\n  script: [{text: hi}]\n  on: x\nsteps: [{prompt: go}]\n",
        "task.yaml:3: agent: the key 'on' is read as true or false, not a string: quote it"),
    "list as key": (
        VALID + "? [a]\n: x\n",
        "task.yaml:4: a key must be a string, not a list"),
    "python tag": (
        VALID + "  - prompt: !!python/object/apply:os.system [ls]\n",
        "task.yaml:4: steps[1].prompt: the tag !!python/object/apply:os.system is not allowed"),
    "custom tag": (
        VALID + "  - prompt: !env HOME\n",
        "task.yaml:4: steps[1].prompt: the tag !env is not allowed"),
    "set tag": (
        VALID + "upload: !!set {a}\n",
        "task.yaml:4: upload: the tag !!set is not allowed"),
    "NUL in text": (
        VALID + "  - shell: \"a\\0b\"\n",
        "task.yaml:4: steps[1].shell: text must not contain a NUL character"),
    "control character": (
        VALID + "  - prompt: a\x01b\n",
        "task.yaml:4: not valid YAML: the character U+0001 is not allowed"),
    "two documents": (
        VALID + "---\nx: 1\n",
        "task.yaml:4: not valid YAML: expected a single document in the stream, but found "
        "another document"),
    "nesting too deep": (
        "agent: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n",
        f"task.yaml:1: nested deeper than {MAX_DEPTH} levels"),
    "too many values": (
        "x: [" + "1," * MAX_NODES + "1]\n",
        f"task.yaml:1: more than {MAX_NODES} values"),
    "empty file": ("", "task.yaml: the task file is empty"),
    "only comments": ("# nothing yet\n\n", "task.yaml: the task file is empty"),
    "not UTF-8": (
        VALID + "  - prompt: caf\xe9\n", "task.yaml:4: not UTF-8 text (byte 0xe9)"),
}


@pytest.mark.parametrize(("text", "expected"), list(YAML_ERRORS.values()), ids=list(YAML_ERRORS))
def test_hostile_or_broken_yaml_is_refused_at_its_line(in_tmp: Path, text: str,
                                                       expected: str) -> None:
    data = text.encode("latin-1") if "\xe9" in text else text.encode()
    assert _error(data, in_tmp) == expected


def test_an_alias_bomb_is_refused_at_once(in_tmp: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]"
              for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    started = time.monotonic()
    assert _error("\n".join(lines) + "\n", in_tmp) == (
        "task.yaml:2: aliases (*a) are not allowed in this file: write the value out")
    assert time.monotonic() - started < 1


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert load_task(_write(tmp_path, b"\xef\xbb\xbf" + VALID.encode())).steps[0].name == (
        "prompt 1")


# --- the file itself --------------------------------------------------------------------------


def test_a_missing_file(in_tmp: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^nope\.yaml: no such task file$"):
        load_task("nope.yaml")


def test_a_file_too_big(in_tmp: Path) -> None:
    _write(in_tmp, VALID + "#" * MAX_TASK_BYTES)
    with pytest.raises(InvalidArgument,
                       match=rf"^task\.yaml: the task file is over {MAX_TASK_BYTES} bytes$"):
        load_task("task.yaml")


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    padding = "#" * (MAX_TASK_BYTES - len(VALID) - 1)
    assert load_task(_write(tmp_path, VALID + padding + "\n")).steps


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting(in_tmp: Path) -> None:
    os.mkfifo(in_tmp / "task.yaml")
    with pytest.raises(InvalidArgument, match=r"^task\.yaml: the task file is not a regular"):
        load_task("task.yaml")


def test_a_folder_is_refused(in_tmp: Path) -> None:
    (in_tmp / "task.yaml").mkdir()
    with pytest.raises(InvalidArgument, match=r"^task\.yaml: the task file is not a regular"):
        load_task("task.yaml")

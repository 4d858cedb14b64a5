"""The task file: a CI job's agent task in YAML, parsed and validated before anything runs.

`sandbox-sessions run --task task.yaml` runs one: a session with the
file's agent, its uploads copied in, then each step in order; the first step that fails stops
the run with a message naming it. This module only reads and checks the file (`load_task`);
the runner is the CLI's. A file in full (`agent`, with a `model` or a `script`, and `steps`
are required):

    agent:
      name: build                    # default "task"
      harness: builtin               # or claude-code, codex, opencode (a CLI in the box)
      model: scripted                # provider/model; "scripted" when a script is given
      script: model.yaml             # or the entries inline; only for "scripted"
      system: You build Python packages.
      tools: [bash, read, write, edit, list, glob, grep, artifact]
      permissions: {"*": allow, bash: {"rm -rf *": deny}}
      image: sandbox-sessions/sandbox:latest   # default; a harness: sandbox-sessions/agents
      max_steps: 20                  # model calls per turn
      token_budget: 200000           # tokens for the whole session
      timeout: 20m                   # the whole run: seconds, or 90s, 20m, 1h30m
      permission_timeout: 30s        # an unanswered permission request is rejected then
    upload:
      - ./project:/workspace         # SRC:DST, SRC relative to this file's folder
    artifacts: ./out                 # where /artifacts is downloaded, relative to this file
    steps:
      - prompt: Write the package and its tests.
      - shell: make test
        name: tests                  # for messages; by default: shell "make test"
        timeout: 5m
        expect_exit: 0
      - command: {name: review, arguments: [src/]}
      - expect_artifact: {glob: "*.whl", min_bytes: 1000, max_bytes: 10000000}
      - expect_file: {path: /workspace/REPORT.md, contains: passed}

Paths on the host (`script`, an upload's SRC, `artifacts`) are relative to the task file's
folder, so a task runs the same from any working folder; they are made absolute here. A
script file is read and checked here too, as strictly as the task file. Nothing else
touches the disk: whether an upload's SRC exists is the runner's to find out.

Every problem is an `InvalidArgument` that names the file, the line and the key path, in
plain words: `task.yaml:14: steps[2].expect_artifact.min_bytes: must be an integer >= 0`.
The YAML itself is read by `_yaml_source` (no aliases, no duplicate keys, no odd tags).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ._exceptions import InvalidArgument
from ._taskfile_steps import (
    STEP_KINDS,
    ArtifactExpectation,
    CommandSpec,
    CommandStep,
    Duration,
    ExpectArtifactStep,
    ExpectFileStep,
    FileExpectation,
    PromptStep,
    ShellStep,
    Step,
    StepBase,
    Strict,
    Text,
    check_kind,
    parse_duration,
)
from ._types import HarnessName, PermissionRules
from ._yaml_source import ProblemAt, compose, describe_error, explain, read_text_file
from .agent._permissions import validate_rules
from .agent._tools import BUILTIN_TOOLS, check_rule_keys
from .providers._scripted import ScriptEntry

__all__ = [
    "MAX_TASK_BYTES",
    "STEP_KINDS",
    "ArtifactExpectation",
    "CommandSpec",
    "CommandStep",
    "ExpectArtifactStep",
    "ExpectFileStep",
    "FileExpectation",
    "PromptStep",
    "ShellStep",
    "Step",
    "TaskAgent",
    "TaskFile",
    "Upload",
    "check_script_file",
    "load_permissions",
    "load_task",
    "parse_duration",
]

MAX_TASK_BYTES = 1024 * 1024
"""Largest task file read (1 MiB): a bigger one is a mistake, not a task."""


def _base(info: ValidationInfo) -> Path:
    """The folder that host paths are relative to: the task file's, or else the current one."""
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base")
    return base if isinstance(base, Path) else Path.cwd()


def _host_path(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, str | Path) or not str(value) or "\x00" in str(value):
        raise ValueError("must be a path (a non-empty string)")
    return _base(info) / value


# --- the agent --------------------------------------------------------------------------------


class TaskAgent(Strict):
    """The task's agent: what `client.agent(...)` is called with, and the run's limits."""

    name: Text = "task"
    harness: HarnessName = "builtin"
    """What runs the turns: our loop, or an agent CLI in the sandbox (`claude-code`,
    `codex`, `opencode`)."""
    model: Text
    """`provider/model`, or `scripted` (the default when a `script` is given)."""
    script: list[ScriptEntry] | Path | None = None
    """The scripted model's entries, or the (absolute) path of a file holding them."""
    system: str | None = None
    tools: list[str] | None = None
    """Built-in tool names; None: the default tools."""
    permissions: PermissionRules = Field(default_factory=dict)
    image: Text | None = None
    """None: the sandbox image, or for a harness the agents image (`AGENTS_IMAGE`)."""
    max_steps: int = Field(default=50, gt=0)
    token_budget: int | None = Field(default=None, gt=0)
    timeout: Duration | None = None
    """Seconds the whole run may take (session, uploads, steps, download); None: no limit."""
    permission_timeout: Duration | None = None
    """Seconds a permission request waits for an answer before it is rejected."""

    @model_validator(mode="before")
    @classmethod
    def _scripted_by_default(cls, data: object) -> object:
        if isinstance(data, dict) and "model" not in data and data.get("script") is not None:
            return {**data, "model": "scripted"}
        return data

    @field_validator("script", mode="before")
    @classmethod
    def _script(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str | Path):
            path = _host_path(value, info)
            _check_script_file(path)  # a bad entry fails now, not once a container is up
            return path
        if isinstance(value, list):
            return [_script_entry(index, entry) for index, entry in enumerate(value)]
        if value is None:
            return None
        raise ValueError("must be a list of script entries or the path of a file of them")

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        for index, name in enumerate(value):
            if isinstance(name, str) and name not in BUILTIN_TOOLS:
                raise ProblemAt((index,), f"unknown tool {name!r} (the built-in tools are: "
                                          f"{', '.join(sorted(BUILTIN_TOOLS))})")
            if name in value[:index]:
                raise ProblemAt((index,), f"the tool {name!r} is named twice")
        return value

    @field_validator("permissions", mode="before")
    @classmethod
    def _permissions(cls, value: object) -> object:
        if not isinstance(value, dict):
            return validate_rules(value)  # names the wrong type
        for tool, entry in value.items():
            _check_rule(tool, entry)
        return validate_rules(value)

    @model_validator(mode="after")
    def _script_goes_with_scripted(self) -> TaskAgent:
        scripted = self.model == "scripted" or self.model.startswith("scripted/")
        if scripted and self.script is None:
            raise ProblemAt(("model",), f"the model {self.model!r} needs a script")
        if not scripted and self.script is not None:
            raise ProblemAt(("script",), f"a script is played by the model 'scripted' only, "
                                         f"not {self.model!r}")
        return self


def _script_entry(index: int, entry: object) -> ScriptEntry:
    try:
        return ScriptEntry.model_validate(entry)
    except ValidationError as exc:
        where, message = describe_error(exc.errors(include_url=False)[0], ScriptEntry)
        raise ProblemAt((index, *where), message) from None


def _check_script_file(path: Path) -> None:
    """A script file read as the task file is (lines, no aliases) and its entries checked."""
    if not path.exists():
        raise ValueError(f"no script file at {path} (a path is relative to the task file's "
                         "folder)")
    check_script_file(path)


def check_script_file(path: Path) -> None:
    """Check the scripted model's file at `path`; `InvalidArgument` naming the line."""
    located = compose(read_text_file(path, what="script file", max_bytes=MAX_TASK_BYTES),
                      source=str(path))
    if not isinstance(located.data, list):
        raise located.error((), "a script must be a list of entries")
    for index, entry in enumerate(located.data):
        try:
            _script_entry(index, entry)
        except ProblemAt as exc:
            raise located.error(exc.where, exc.message) from None


def _check_rule(tool: object, entry: object) -> None:
    """One tool's rules, with the problem at its own key."""
    try:
        validate_rules({tool: entry})
        check_rule_keys({str(tool): entry}, ())
    except InvalidArgument as exc:
        where: tuple[str | int, ...] = (str(tool),)
        if isinstance(entry, dict):
            bad = [glob for glob, action in entry.items() if action not in ("allow", "ask",
                                                                            "deny")]
            where = (*where, *(str(glob) for glob in bad[:1]))
        raise ProblemAt(where, exc.message) from None


# --- uploads ----------------------------------------------------------------------------------


class Upload(Strict):
    """A host path copied into the container before the first step; written `SRC:DST`."""

    source: Path
    """On the host: absolute, made so against the task file's folder."""
    destination: str
    """In the container: absolute and normalized, without `..`."""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object, info: ValidationInfo) -> object:
        if not isinstance(data, str):
            return data
        source, colon, destination = data.rpartition(":")
        if not colon or not destination.startswith("/"):
            raise ValueError(f"{data!r} must be SRC:DST, a host path and an absolute "
                             "container path (./project:/workspace)")
        if not source:
            raise ValueError(f"{data!r} has no host path before the ':'")
        return {"source": _host_path(source, info), "destination": destination}

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: object, info: ValidationInfo) -> Path:
        return _host_path(value, info)

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError(f"the destination {value!r} must be an absolute container path")
        if ".." in value.split("/"):
            raise ValueError(f"the destination {value!r} must not contain '..'")
        return "/" + posixpath.normpath(value).lstrip("/")


class TaskFile(Strict):
    """A whole task file (see the module's docstring); `load_task` reads one."""

    agent: TaskAgent
    upload: list[Upload] = Field(default_factory=list)
    artifacts: Path | None = None
    """The host folder `/artifacts` is downloaded to (absolute); None: nothing downloaded."""
    steps: list[Step] = Field(min_length=1)
    """In order; after validation every step has a `name`."""

    @field_validator("artifacts", mode="before")
    @classmethod
    def _artifacts(cls, value: object, info: ValidationInfo) -> object:
        return None if value is None else _host_path(value, info)

    @field_validator("steps", mode="before")
    @classmethod
    def _one_kind_each(cls, value: object) -> object:
        if isinstance(value, list):
            for index, step in enumerate(value):
                check_kind(index, step)
        return value

    @field_validator("steps")
    @classmethod
    def _named(cls, steps: list[StepBase]) -> list[StepBase]:
        return [step if step.name is not None
                else step.model_copy(update={"name": step.describe(position)})
                for position, step in enumerate(steps, 1)]


def load_task(path: str | os.PathLike[str]) -> TaskFile:
    """The task file at `path`, read and checked; `InvalidArgument` naming the file, and for
    a problem inside it the line and the key path, otherwise (a missing file too)."""
    source = os.fspath(path)
    located = compose(read_text_file(source, what="task file", max_bytes=MAX_TASK_BYTES),
                      source=source)
    if located.data is None:
        raise InvalidArgument(f"{source}: the task file is empty")
    if not isinstance(located.data, dict):
        raise located.error((), "the task file must be a mapping of agent, upload, "
                                "artifacts and steps")
    base = Path(os.path.abspath(source)).parent
    try:
        return TaskFile.model_validate(located.data, context={"base": base})
    except ValidationError as exc:
        raise explain(exc, TaskFile, located) from None



def load_permissions(path: str | os.PathLike[str]) -> PermissionRules:
    """The permission rules in the YAML file at `path` (the mapping `agent(permissions=...)`
    takes); `InvalidArgument` naming the file, the line and the key."""
    source = os.fspath(path)
    located = compose(read_text_file(source, what="permissions file", max_bytes=MAX_TASK_BYTES),
                      source=source)
    if not isinstance(located.data, dict):
        raise located.error((), "the permissions file must be a mapping of tool names (or "
                                "'*') to an action or to a mapping of patterns to actions")
    for tool, entry in located.data.items():
        try:
            _check_rule(tool, entry)
        except ProblemAt as exc:
            raise located.error(exc.where, exc.message) from None
    return validate_rules(located.data)

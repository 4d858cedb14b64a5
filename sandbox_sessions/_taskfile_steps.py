"""The steps of a task file, and the strict base and duration type its models share.

A step is one of `STEP_KINDS`, told by its one key among them; `_taskfile` holds the rest of
the file's model and its docstring the format. Pure models, no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ._types import CommandArguments
from ._yaml_source import ProblemAt
from .client._commands import check_name

__all__ = [
    "MAX_DURATION",
    "STEP_KINDS",
    "ArtifactExpectation",
    "CommandSpec",
    "CommandStep",
    "Duration",
    "ExpectArtifactStep",
    "ExpectFileStep",
    "FileExpectation",
    "PromptStep",
    "ShellStep",
    "Step",
    "StepBase",
    "Strict",
    "Text",
    "check_kind",
    "parse_duration",
]

MAX_DURATION = 7 * 24 * 3600
"""Longest duration accepted (a week), in seconds."""

_DURATION = re.compile(r"(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?")
STEP_KINDS = ("prompt", "shell", "command", "expect_artifact", "expect_file")


def parse_duration(value: object) -> float:
    """Seconds, from a number of seconds or a text such as `90s`, `20m`, `1h30m` (hours,
    minutes, seconds in that order, whole numbers, no spaces); more than 0, at most a week."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not value or match is None:
            raise ValueError(f"{value!r} is not a duration: write seconds (90) or hours, "
                             "minutes and seconds (90s, 20m, 1h30m)")
        hours, minutes, seconds = (int(group or 0) for group in match.groups())
        value = hours * 3600 + minutes * 60 + seconds
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be seconds (90) or a duration such as 90s, 20m or 1h30m")
    if not (math.isfinite(value) and 0 < value <= MAX_DURATION):
        raise ValueError(f"must be more than 0 and at most a week ({MAX_DURATION} s)")
    return float(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as a number or as `90s`, `20m`, `1h30m` (see `parse_duration`)."""
Text = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    """Frozen, refusing unknown keys, and taking no value of another type (`"5"` is not 5)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid", strict=True)


class StepBase(Strict):
    """What every step has: a name for messages, and a default one."""

    name: Text | None = None
    """Used in messages; when absent, a short description (`TaskFile` fills it in)."""

    def describe(self, position: int) -> str:
        """The name a step without one gets; `position` counts from 1."""
        raise NotImplementedError


def _quoted(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return '"' + (line if len(line) <= 40 else line[:39] + "…") + '"'


class PromptStep(StepBase):
    """Send a prompt; fails unless the turn ends `completed`."""

    prompt: Text

    def describe(self, position: int) -> str:
        return f"prompt {position}"


class ShellStep(StepBase):
    """Run a command in the container; fails unless it exits with `expect_exit` in time."""

    shell: Text
    timeout: Duration | None = None
    """Seconds the command may run; None: the client's default."""
    expect_exit: int = Field(default=0, ge=0, le=255)

    def describe(self, position: int) -> str:
        return f"shell {_quoted(self.shell)}"


class CommandSpec(Strict):
    """A command template to run, and its arguments (as `run_command` takes them)."""

    name: Text
    arguments: CommandArguments = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments(cls, value: object) -> object:
        items = (enumerate(value) if isinstance(value, list)
                 else value.items() if isinstance(value, dict) else ())
        for key, item in items:
            if not isinstance(item, str):
                raise ProblemAt((key,), "must be a string")
        if value is not None and not isinstance(value, str | list | dict):
            raise ValueError("must be a string, a list of strings or a mapping of strings")
        return value


class CommandStep(StepBase):
    """Run a command template; fails unless its turn ends `completed`."""

    command: CommandSpec

    def describe(self, position: int) -> str:
        return f"command {self.command.name}"


class ArtifactExpectation(Strict):
    """At least one artifact whose key matches `glob`, each match within the byte bounds."""

    glob: Text
    """Matched against each artifact's key (its path under `/artifacts`)."""
    min_bytes: int | None = Field(default=None, ge=0)
    max_bytes: int | None = Field(default=None, ge=0)

    @field_validator("glob")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/") or "\x00" in value:
            raise ValueError(f"{value!r} must be relative to /artifacts, without '..'")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ArtifactExpectation:
        if (self.min_bytes is not None and self.max_bytes is not None
                and self.min_bytes > self.max_bytes):
            raise ProblemAt(("max_bytes",), f"must be at least min_bytes ({self.min_bytes})")
        return self


class ExpectArtifactStep(StepBase):
    """Check the session's artifacts (see `ArtifactExpectation`)."""

    expect_artifact: ArtifactExpectation

    def describe(self, position: int) -> str:
        return f"expect_artifact {_quoted(self.expect_artifact.glob)}"


class FileExpectation(Strict):
    """A file in the container that must exist and, with `contains`, hold that text."""

    path: Text
    """Absolute, or relative to the session's working folder."""
    contains: str | None = None


class ExpectFileStep(StepBase):
    """Check a file in the container (see `FileExpectation`)."""

    expect_file: FileExpectation

    def describe(self, position: int) -> str:
        return f"expect_file {_quoted(self.expect_file.path)}"


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [kind for kind in STEP_KINDS if kind in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((kind for kind in STEP_KINDS if isinstance(value, _KIND_CLASSES[kind])), None)


Step = Annotated[
    Annotated[PromptStep, Tag("prompt")] | Annotated[ShellStep, Tag("shell")]
    | Annotated[CommandStep, Tag("command")]
    | Annotated[ExpectArtifactStep, Tag("expect_artifact")]
    | Annotated[ExpectFileStep, Tag("expect_file")],
    Discriminator(_step_kind)]
"""One step: which kind is told by its one key among `STEP_KINDS`."""

_KIND_CLASSES: dict[str, type[StepBase]] = {
    "prompt": PromptStep, "shell": ShellStep, "command": CommandStep,
    "expect_artifact": ExpectArtifactStep, "expect_file": ExpectFileStep}


def check_kind(index: int, step: object) -> None:
    """Exactly one kind key in a step, said in plain words (the union alone cannot)."""
    expected = ", ".join(STEP_KINDS)
    if isinstance(step, StepBase):
        return
    if not isinstance(step, dict):
        raise ProblemAt((index,), f"a step must be a mapping with one of: {expected}")
    kinds = [kind for kind in STEP_KINDS if kind in step]
    if not kinds:
        keys = ", ".join(repr(key) for key in step) or "nothing"
        raise ProblemAt((index,), f"a step needs one of: {expected} (it has {keys})")
    if len(kinds) > 1:
        raise ProblemAt((index, kinds[1]), f"a step does one thing, but this one has both "
                                           f"{kinds[0]!r} and {kinds[1]!r}: make two steps")

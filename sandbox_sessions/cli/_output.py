"""Where a command's output goes: JSON lines, rich on a terminal, or plain lines.

stdout carries results only: with `--json` one JSON object per line and nothing else; on a
terminal, rich text; otherwise plain lines a script can read. Progress and logs go to stderr
(a bar on a terminal, a line per step otherwise). Text written here may come from the model
or the container: every control character in it but newline and tab is made visible
(`clean`), so none reaches the terminal.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ._app import settings

__all__ = ["Output", "clean", "count", "output", "to_json"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` with control and bidi-override characters made visible (`\\x1b`)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def count(number: int, noun: str) -> str:
    """`1 file`, `2 files`."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def to_json(value: Any) -> Any:
    """A result as JSON data: models dumped, lists of them too."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


class Output:
    """A command's stdout and stderr."""

    def __init__(self, *, json_lines: bool) -> None:
        self.json = json_lines
        self.rich = not json_lines and sys.stdout.isatty()
        """Whether stdout is a terminal we draw on (colours, live text)."""
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit(self, data: Any) -> None:
        """One JSON line on stdout (only with `--json`)."""
        if self.json:
            sys.stdout.write(json.dumps(to_json(data), ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def result(self, value: Any, text: str | Callable[[], str]) -> None:
        """A command's result: a JSON line, or its text."""
        if self.json:
            self.emit(value)
            return
        line = text() if callable(text) else text
        if line:
            self.line(line)

    def line(self, text: str, *, style: str | None = None) -> None:
        """A line of text on stdout (styled on a terminal, control characters made visible);
        nothing with `--json`."""
        if self.json:
            return
        text = clean(text)
        if self.rich:
            self.out.print(text, style=style, markup=False)
        else:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def write(self, text: str, *, style: str | None = None) -> None:
        """Text as it streams (no newline added); nothing with `--json`."""
        if self.json or not text:
            return
        text = clean(text)
        if self.rich:
            self.out.print(text, style=style, markup=False, end="")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def log(self, text: str) -> None:
        """A line for the person watching: stderr (control characters made visible)."""
        self.err.print(f"sandbox-sessions: {clean(text)}", markup=False, highlight=False)

    @contextmanager
    def progress(self, what: str, *, total: float | None = None, unit: str = "items"
                 ) -> Iterator[Callable[[float, float | None], None]]:
        """A bar (on a terminal) or start and end lines on stderr; yields `update(done,
        total)`."""
        if not self.err.is_terminal:
            self.log(f"{what}…")
            last: list[float] = [0.0]

            def plain(done: float, new_total: float | None = None) -> None:
                last[0] = done

            yield plain
            self.log(f"{what}: done ({_amount(last[0], unit)})")
            return
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        columns.append(DownloadColumn() if unit == "bytes"
                       else TextColumn("{task.completed:.0f}/{task.total:.0f}"))
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(what, total=total)

            def update(done: float, new_total: float | None = None) -> None:
                bar.update(task, completed=done,
                           total=new_total if new_total is not None else bar.tasks[0].total)

            yield update

    @contextmanager
    def status(self, what: str) -> Iterator[None]:
        """A spinner on a terminal's stderr while work without a measure runs."""
        if not self.err.is_terminal:
            self.log(f"{what}…")
            yield
            return
        with self.err.status(what):
            yield


def _amount(done: float, unit: str) -> str:
    if unit == "bytes":
        return f"{int(done):,} bytes"
    return f"{int(done)} {unit}"


def output() -> Output:
    """The output for the current command's options."""
    return Output(json_lines=settings().json)

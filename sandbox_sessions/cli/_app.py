"""The command line's frame: the root group, the options every command takes, the exit codes,
and the one place where errors become a line on stderr and a code.

Every command takes `--json`, `--url`, `--store` and `-v` (before or after its name): the
values given after the name win. A command opens its client with `open_client()`: embedded
(local Docker and the SQLite store) by default, over HTTP with `--url` or
`$SANDBOX_SESSIONS_URL` (the token from `$SANDBOX_SESSIONS_TOKEN` or the server's token file).
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from .._exceptions import (
    BridgeUnavailable,
    CommandNotFound,
    ImageNotFound,
    InvalidArgument,
    MessageNotFound,
    PermissionNotFound,
    QuestionNotFound,
    SandboxFileNotFound,
    SandboxSessionsError,
    SandboxUnavailable,
    SessionEnded,
    SessionNotFound,
)
from ..client import SandboxClient

__all__ = ["ExitCode", "Settings", "cli", "common", "fail", "open_client", "settings"]

log: logging.Logger = logging.getLogger("sandbox_sessions.cli")
F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(enum.IntEnum):
    """What `sandbox-sessions` exits with (`shell` exits with the command's own code)."""

    OK = 0
    """The command did what it was asked; for `run`, the turn (every step) completed."""
    ERROR = 1
    """The agent's turn ended with an error, or anything else went wrong."""
    USAGE = 2
    """Bad usage: an unknown option, a bad value, a malformed task or permissions file."""
    NOT_FOUND = 3
    """A session (or one that has ended), a file, an image, a command template, a message or
    a permission request that does not exist."""
    UNAVAILABLE = 4
    """The Docker engine (or the server at `--url`) does not answer."""
    REJECTED = 5
    """A permission was rejected (by the user, `--ask`, or a timeout): the turn ended
    `rejected`, or `--ask fail` met a request."""
    LIMIT = 6
    """The agent reached a limit: `max_steps` or the token budget (turn-end `limit`)."""
    TIMEOUT = 7
    """`--timeout` (or the task's `timeout`) passed: the turn was aborted."""
    CHECK_FAILED = 8
    """A task step's check failed: a `shell` step's exit code, an `expect_artifact` or an
    `expect_file`."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT): the turn was aborted, as a shell's 128 + 2."""


@dataclass
class Settings:
    """The options every command takes."""

    json: bool = False
    url: str | None = None
    store: str | None = None
    verbose: bool = False


def settings() -> Settings:
    """The current command's settings (root options, overridden by the command's own)."""
    ctx = click.get_current_context()
    found = ctx.find_object(Settings)
    if found is None:  # pragma: no cover - the root group always makes one
        found = ctx.ensure_object(Settings)
    return found


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return  # not given here: the root's value (or the default) stands
        target = ctx.find_object(Settings) or ctx.ensure_object(Settings)
        setattr(target, name, value)
        if name == "verbose":
            configure_logging(True)
    return store


def common(function: F) -> F:
    """Add the options every command takes."""
    options = [
        click.option("--json", "json_", is_flag=True, default=False, expose_value=False,
                     is_eager=True, callback=_setter("json"),
                     help="Print JSON: one object per line, nothing else on stdout."),
        click.option("--url", default=None, expose_value=False, callback=_setter("url"),
                     metavar="URL", help="A `sandbox-sessions serve` to talk to "
                     "(default: $SANDBOX_SESSIONS_URL; none: embedded)."),
        click.option("--store", default=None, expose_value=False, callback=_setter("store"),
                     metavar="FILE", help="The session store, embedded "
                     "(default: $SANDBOX_SESSIONS_DB)."),
        click.option("-v", "--verbose", is_flag=True, default=False, expose_value=False,
                     callback=_setter("verbose"), help="Log details to stderr."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


ORDER = ("run", "sessions", "shell", "cp", "artifacts", "command", "reply", "answer", "end",
         "images", "gc", "doctor", "serve")
"""How `--help` lists the commands: the CI job's first, the server's last."""


class _Group(click.Group):
    """Commands listed in `ORDER`, then any other in the order they were added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in ORDER if name in self.commands]
        return known + [name for name in self.commands if name not in ORDER]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@common
@click.version_option(package_name="sandbox-sessions", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Pair every agent conversation with its own Docker container.

    Results go to stdout (`--json`: one JSON object per line); progress and logs go to
    stderr. Exit codes: 0 done; 1 agent or other error; 2 bad usage; 3 not found; 4 engine
    or server down; 5 rejected; 6 limit; 7 timeout; 8 a task's check failed; 130 Ctrl-C.
    `shell` exits with the command's own code.
    """
    ctx.ensure_object(Settings)


@contextmanager
def open_client(*, reap_orphans: bool = False) -> Iterator[SandboxClient]:
    """The client the command's options ask for, closed on exit."""
    opts = settings()
    with SandboxClient(base_url=opts.url, store=opts.store,
                       reap_orphans=reap_orphans) as client:
        yield client


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Stop the command with a one-line error."""
    raise CliError(message, code)


class CliError(Exception):
    """A command's own refusal: its message and exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code(error: SandboxSessionsError) -> ExitCode:
    """The exit code an error of ours means."""
    if isinstance(error, SessionNotFound | SessionEnded | SandboxFileNotFound | ImageNotFound
                  | CommandNotFound | PermissionNotFound | QuestionNotFound | MessageNotFound):
        return ExitCode.NOT_FOUND
    if isinstance(error, SandboxUnavailable | BridgeUnavailable):
        return ExitCode.UNAVAILABLE
    if isinstance(error, InvalidArgument):
        return ExitCode.USAGE
    return ExitCode.ERROR


def report_error(opts: Settings, message: str, code: ExitCode,
                 error: SandboxSessionsError | None = None) -> int:
    """Print an error (stderr; also a JSON line on stdout with `--json`); its exit code."""
    if opts.json:
        body: dict[str, Any] = {"message": message, "exit_code": int(code)}
        if error is not None:
            body.update(code=error.code, retryable=error.retryable)
        print(json.dumps({"type": "error", "error": body}), flush=True)
    print(f"sandbox-sessions: error: {message}", file=sys.stderr, flush=True)
    return int(code)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="sandbox-sessions: %(message)s", stream=sys.stderr,
                        force=True)

"""Running the root group: every command registered, every error one line and a code."""

from __future__ import annotations

import logging
import sys
from types import ModuleType

from .._exceptions import SandboxSessionsError

# each registers its commands on the root group
from . import _basic, _doctor, _inspect, _run, _transfer  # noqa: F401
from ._app import CliError, ExitCode, Settings, cli, configure_logging, exit_code, report_error

log: logging.Logger = logging.getLogger("sandbox_sessions.cli")


def run(args: list[str], click: ModuleType) -> int:
    """Parse `args`, run the command, and return its exit code."""
    ctx_settings = Settings()
    try:
        with cli.make_context("sandbox-sessions", args, obj=ctx_settings) as ctx:
            configure_logging(ctx_settings.verbose)
            result = cli.invoke(ctx)
    except click.exceptions.Exit as done:  # --help, --version
        return int(done.exit_code)
    except click.exceptions.Abort:
        print("sandbox-sessions: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except click.ClickException as error:
        return report_error(ctx_settings, _usage_line(error), ExitCode.USAGE)
    except CliError as error:
        return report_error(ctx_settings, error.message, error.code)
    except SandboxSessionsError as error:
        return report_error(ctx_settings, str(error), exit_code(error), error)
    except KeyboardInterrupt:
        print("sandbox-sessions: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as error:  # a bug of ours: still one line, the traceback only with -v
        log.debug("traceback of the internal error", exc_info=True)
        verbose = ctx_settings.verbose
        return report_error(ctx_settings, f"internal error: {type(error).__name__}: {error}"
                            f"{'' if verbose else ' (run with -v for details)'}",
                            ExitCode.ERROR)
    return int(result) if isinstance(result, int) else 0


def _usage_line(error: object) -> str:
    """A click usage error as one line, with where to read more."""
    message = str(getattr(error, "format_message", lambda: error)())
    ctx = getattr(error, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return " ".join(message.split()) + where

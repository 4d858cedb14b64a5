"""`sandbox-sessions`: the command line (click, with rich on a terminal).

Needs the `cli` extra (`pip install 'sandbox-sessions[cli]'`). Each command lives in its own
module and registers itself on the root group of `_app`; `main()` runs it and turns every
error into one line on stderr and the exit code `ExitCode` documents.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        import click
        import rich  # noqa: F401
    except ImportError as exc:
        print(f"sandbox-sessions: error: the command line needs the cli extra ({exc.name} is "
              "missing): pip install 'sandbox-sessions[cli]'", file=sys.stderr)
        return 2
    from ._main import run

    args = list(sys.argv[1:] if argv is None else argv)
    return run(args, click)


if __name__ == "__main__":
    sys.exit(main())

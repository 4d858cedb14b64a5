"""`sandbox-sessions`: the command line.

Results go to stdout (`--json` for machines); progress and logs go to stderr.
Exit codes: 0 success; 1 other error; 2 bad usage or arguments; 3 session or file not found,
or session ended; 4 the Docker engine does not answer; `shell` exits with the command's own
exit code (124 on its timeout). `serve` runs until SIGTERM or SIGINT and then exits 0; it
exits 1 when it cannot listen, 2 on a bad argument or token file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from ._exceptions import (
    InvalidArgument,
    SandboxFileNotFound,
    SandboxSessionsError,
    SandboxUnavailable,
    SessionEnded,
    SessionNotFound,
)
from ._tokens import default_token_path, load_token
from ._types import DEFAULT_IMAGE
from .client import SandboxClient

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 1, 2, 3, 4
log: logging.Logger = logging.getLogger("sandbox_sessions.cli")


def _emit(args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        if isinstance(data, list):
            data = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in data]
        print(json.dumps(data, indent=2))
    elif text:
        print(text)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_images_build(args: argparse.Namespace) -> int:
    from .sandbox._engine import Engine
    from .sandbox._images import build_image

    build = build_image(Engine(), tag=args.tag, force=args.force, progress=_progress)
    state = "built" if build.built else "up to date"
    _emit(args, build, f"{build.tag} {state} ({build.image_id[:19]}, {build.seconds:.1f} s)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with SandboxClient(store=args.store, reap_orphans=False) as client:
        removed = client.gc()
    _emit(args, removed, "\n".join(cid[:12] for cid in removed) or "no orphans")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    with SandboxClient(store=args.store, reap_orphans=False) as client:
        sessions = client.list_sessions(include_ended=args.all)
    lines = [f"{s.id}  {s.status:6}  {s.time_created:%Y-%m-%d %H:%M}  {s.title}" for s in sessions]
    _emit(args, sessions, "\n".join(lines))
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    with SandboxClient(store=args.store, reap_orphans=False) as client:
        result = client.session(args.session).shell(
            args.command, timeout=args.timeout,
            on_stdout=None if args.json else lambda text: print(text, end="", flush=True),
            on_stderr=None if args.json else lambda text: print(text, end="", file=sys.stderr),
        )
    if args.json:
        _emit(args, result, "")
    if result.timed_out:
        _progress(f"sandbox-sessions: command timed out after {args.timeout} s")
    return result.exit_code


def cmd_artifacts(args: argparse.Namespace) -> int:
    def report(key: str, done: int, total: int) -> None:
        _progress(f"[{done}/{total}] {key}")

    with SandboxClient(store=args.store, reap_orphans=False) as client:
        download = client.session(args.session).download_artifacts(args.dest, progress=report)
    for skip in download.skipped:
        _progress(f"skipped {skip.key}: {skip.reason}")
    _emit(args, download, f"{len(download.files)} files, {download.bytes} bytes in {args.dest}")
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    with SandboxClient(store=args.store, reap_orphans=False) as client:
        info = client.session(args.session).end()
    _emit(args, info, f"{info.id} ended")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # the `server` extra: only this command needs it
        from .server import DEFAULT_PORT, ServerConfig, serve
        from .server._serve import is_loopback, listen
    except ImportError as exc:
        raise InvalidArgument(f"`serve` needs the server extra ({exc.name} is missing): "
                              "pip install 'sandbox-sessions[server]'") from None
    import anyio

    origins = frozenset(_origin(value) for value in args.allow_origin)
    token_path = Path(args.token_file).expanduser() if args.token_file else default_token_path()
    token = load_token(token_path, create=True)
    sock = listen(args.host, DEFAULT_PORT if args.port is None else args.port)
    port: int = sock.getsockname()[1]
    config = ServerConfig(host=args.host, port=port, token=token, allowed_origins=origins)
    if not is_loopback(args.host):
        log.warning("listening on %s, not loopback: anyone who can reach it and has the "
                    "token drives containers on this machine", args.host)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host

    def ready(_: object) -> None:  # "serving" last: a script waiting on it has seen it all
        _progress(f"sandbox-sessions: token file {token_path}")
        _progress(f"sandbox-sessions: serving http://{host}:{port}")

    with sock:
        anyio.run(partial(serve, config, store=args.store, on_ready=ready, sock=sock),
                  backend_options={"use_uvloop": _has_uvloop()})
    return 0


def _has_uvloop() -> bool:
    """Whether uvloop (in the `server` extra) can run the server's event loop: it takes a
    few tenths of a millisecond off each request on loopback."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _origin(value: str) -> str:
    """An `--allow-origin` value, as browsers send it: `scheme://host[:port]`, nothing more."""
    parts = urlsplit(value)
    if (parts.scheme not in ("http", "https") or not parts.netloc or parts.path
            or parts.query or parts.fragment or "@" in parts.netloc):
        raise InvalidArgument(f"--allow-origin {value!r} is not an origin such as "
                              "https://app.example:8443 (no wildcard, path or slash)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-sessions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--store", help="session store file (default: $SANDBOX_SESSIONS_DB)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    images = commands.add_parser("images", help="manage sandbox images")
    image_commands = images.add_subparsers(dest="images_command", required=True)
    build = image_commands.add_parser("build", help="build the sandbox image (offline)")
    build.add_argument("--tag", default=DEFAULT_IMAGE)
    build.add_argument("--force", action="store_true", help="build even when up to date")
    build.set_defaults(run=cmd_images_build)

    commands.add_parser("gc", help="remove orphaned containers").set_defaults(run=cmd_gc)
    sessions = commands.add_parser("sessions", help="list sessions")
    sessions.add_argument("--all", action="store_true", help="include ended sessions")
    sessions.set_defaults(run=cmd_sessions)

    shell = commands.add_parser("shell", help="run a command in a session's container")
    shell.add_argument("session")
    shell.add_argument("command")
    shell.add_argument("--timeout", type=float, default=None)
    shell.set_defaults(run=cmd_shell)

    artifacts = commands.add_parser("artifacts", help="download a session's artifacts")
    artifacts.add_argument("session")
    artifacts.add_argument("dest")
    artifacts.set_defaults(run=cmd_artifacts)

    end = commands.add_parser("end", help="end a session and remove its container")
    end.add_argument("session")
    end.set_defaults(run=cmd_end)
    _serve_parser(commands)
    return parser


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve the session API over HTTP (REST + SSE), locked down",
        description="Serve the session API over HTTP, on the same store and engine as the "
                    "embedded client. Every request needs the bearer token kept in the token "
                    "file. Stops on SIGTERM or SIGINT: running turns end `aborted`.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1; others are reachable from "
                            "other machines)")
    serve.add_argument("--port", type=int, default=None,
                       help="port to bind (default: 4096; 0: any free port)")
    serve.add_argument("--token-file", help="the bearer token's file, made (mode 0600) when "
                                            "missing (default: $SANDBOX_SESSIONS_TOKEN_FILE, "
                                            "else the state folder)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="a browser origin allowed to call the API (repeatable); any "
                            "other Origin is refused")
    serve.set_defaults(run=cmd_serve)


def _exit_code(error: SandboxSessionsError) -> int:
    if isinstance(error, SessionNotFound | SessionEnded | SandboxFileNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, SandboxUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, InvalidArgument):
        return EXIT_USAGE
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="sandbox-sessions: %(message)s", stream=sys.stderr)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except SandboxSessionsError as error:
        if args.json:
            body = {"code": error.code, "message": error.message, "retryable": error.retryable}
            print(json.dumps({"error": body}))
        print(f"sandbox-sessions: error: {error}", file=sys.stderr)
        return _exit_code(error)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug of ours: still one line, the traceback only with -v
        log.debug("traceback of the internal error", exc_info=True)
        print(f"sandbox-sessions: internal error: {type(error).__name__}: {error}"
              f"{'' if args.verbose else ' (run with -v for details)'}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""The commands on sessions and images: `images`, `gc`, `sessions list`, `shell`, `artifacts`,
`end` and `serve`."""

from __future__ import annotations

import logging
import shlex
import sys
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import click

from .._exceptions import InvalidArgument
from .._tokens import default_token_path, load_token
from .._types import AGENTS_IMAGE, DEFAULT_IMAGE, SessionInfo
from ._app import ExitCode, cli, common, fail, open_client, settings
from ._output import clean, count, output

log: logging.Logger = logging.getLogger("sandbox_sessions.cli")


@cli.group(cls=click.Group)
def images() -> None:
    """Build and list sandbox images."""


@images.command("build")
@common
@click.option("--tag", default=DEFAULT_IMAGE, show_default=True, help="The image's tag.")
@click.option("--force", is_flag=True, help="Build even when up to date.")
@click.option("--with", "with_agents", default=None, metavar="AGENT,...",
              help="Then build the agents image: the sandbox image plus these agent CLIs "
                   "(claude-code, codex, opencode), installed with npm on this machine.")
@click.option("--agents-tag", default=AGENTS_IMAGE, show_default=True,
              help="The agents image's tag (with --with).")
def images_build(tag: str, force: bool, with_agents: str | None, agents_tag: str) -> None:
    """Build the sandbox image, offline (a Debian base bootstrapped the first time).

    With `--with`, then build the agents image from it: each agent CLI is installed from npm
    on this machine (cached), and its native program copied into the image, built offline.
    """
    from ..sandbox._agent_images import build_agent_image, parse_agents
    from ..sandbox._engine import Engine
    from ..sandbox._images import build_image

    agents = parse_agents(with_agents) if with_agents is not None else []
    out = output()
    engine = Engine()
    with out.status(f"building {tag}"):
        build = build_image(engine, tag=tag, force=force, progress=out.log)
    if not agents:
        out.result(build, f"{build.tag} {_state(build.built)} ({build.image_id[:19]}, "
                          f"{build.seconds:.1f} s)")
        return
    out.line(f"{build.tag} {_state(build.built)} ({build.image_id[:19]})")
    with out.status(f"building {agents_tag}"):
        derived = build_agent_image(engine, agents=agents, tag=agents_tag, base=tag,
                                    force=force, progress=out.log)
    names = ", ".join(f"{agent.command} {agent.version}" for agent in derived.agents)
    out.result(derived, f"{derived.tag} {_state(derived.built)} ({derived.image_id[:19]}, "
                        f"{derived.seconds:.1f} s): {names}")


def _state(built: bool) -> str:
    return "built" if built else "up to date"


@cli.command()
@common
def gc() -> None:
    """Remove the containers of sessions that ended or whose store is gone."""
    out = output()
    with open_client() as client:
        removed = client.gc()
    out.result(removed, "\n".join(cid[:12] for cid in removed) or "no orphans")


@cli.group(cls=click.Group, invoke_without_command=True)
@click.pass_context
def sessions(ctx: click.Context) -> None:
    """List and inspect sessions (alone: `sessions list`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(sessions_list, include_all=False, agent=None)


def session_line(info: SessionInfo) -> str:
    """A session as one line: id, status, created, agent, title."""
    return (f"{info.id}  {info.status:10}  {info.time_created:%Y-%m-%d %H:%M}  "
            f"{info.agent:12}  {info.title}")


@sessions.command("list")
@common
@click.option("--all", "include_all", is_flag=True, help="Include ended and archived sessions.")
@click.option("--agent", default=None, help="Only this agent's sessions.")
def sessions_list(include_all: bool, agent: str | None) -> None:
    """The sessions, newest first: id, status, created, agent, title."""
    out = output()
    with open_client() as client:
        found = client.list_sessions(include_ended=include_all,
                                     archived=None if include_all else False, agent=agent)
    if out.json:
        for info in found:
            out.emit(info)
        return
    out.result(found, "\n".join(session_line(info) for info in found))


@cli.command(context_settings={"ignore_unknown_options": True})
@common
@click.argument("session_id", metavar="SESSION")
@click.argument("words", nargs=-1, required=True, metavar="-- COMMAND...")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds before the command is killed (exit 124).")
def shell(session_id: str, words: tuple[str, ...], timeout: float | None) -> int:
    """Run a command in a session's container; exit with its code.

    One word is a shell line (`shell ID 'make test | tail'`); several are a command and its
    arguments, each quoted (`shell ID -- grep -r "a b" src`).
    """
    out = output()
    command = words[0] if len(words) == 1 else shlex.join(words)
    with open_client() as client:
        result = client.session(session_id).shell(
            command, timeout=timeout,
            on_stdout=None if out.json else partial(_write, sys.stdout),
            on_stderr=None if out.json else partial(_write, sys.stderr))
    out.emit(result)
    if result.timed_out:
        out.log(f"command timed out after {timeout} s")
    return result.exit_code


def _write(stream: object, text: str) -> None:
    stream.write(text)  # type: ignore[attr-defined]
    stream.flush()  # type: ignore[attr-defined]


@cli.command()
@common
@click.argument("session_id", metavar="SESSION")
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
def artifacts(session_id: str, destination: Path) -> None:
    """Download a session's artifacts (/artifacts) into a host folder, safely."""
    out = output()
    with open_client() as client:
        handle = client.session(session_id)
        with out.progress("downloading artifacts", unit="files") as update:
            download = handle.download_artifacts(
                destination, progress=lambda _key, done, total: update(done, total))
    for skip in download.skipped:
        out.log(f"skipped {clean(skip.key)}: {clean(skip.reason)}")
    out.result(download, f"{count(len(download.files), 'file')}, {count(download.bytes, 'byte')} "
                         f"in {destination}")


@cli.command()
@common
@click.argument("session_id", metavar="SESSION")
def end(session_id: str) -> None:
    """End a session and remove its container."""
    out = output()
    with open_client() as client:
        info = client.session(session_id).end()
    out.result(info, f"{info.id} ended")


@cli.command()
@common
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; others than loopback are reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to bind (default: 4096; 0: any free port).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The bearer token's file, made (mode 0600) when missing "
                   "(default: $SANDBOX_SESSIONS_TOKEN_FILE, else the state folder).")
@click.option("--allow-origin", "allow_origin", multiple=True, metavar="ORIGIN",
              help="A browser origin allowed to call the API (repeatable).")
def serve(host: str, port: int | None, token_file: Path | None,
          allow_origin: tuple[str, ...]) -> None:
    """Serve the session API over HTTP (REST + SSE) and the session viewer, locked down.

    Every request needs the bearer token kept in the token file (the viewer logs in with it
    once, through a form). Stops on SIGTERM or SIGINT: running turns end `aborted`.
    """
    try:  # the `server` extra: only this command needs it
        from ..server import DEFAULT_PORT, ServerConfig
        from ..server import serve as serve_forever
        from ..server._serve import is_loopback, listen
    except ImportError as exc:
        fail(f"`serve` needs the server extra ({exc.name} is missing): "
             "pip install 'sandbox-sessions[server]'")
    import anyio

    if settings().url:
        fail("`serve` runs a server: --url does not apply to it")
    out = output()
    origins = frozenset(_origin(value) for value in allow_origin)
    token_path = token_file.expanduser() if token_file else default_token_path()
    token = load_token(token_path, create=True)
    sock = listen(host, DEFAULT_PORT if port is None else port)
    bound: int = sock.getsockname()[1]
    config = ServerConfig(host=host, port=bound, token=token, allowed_origins=origins)
    if not is_loopback(host):
        log.warning("listening on %s, not loopback: anyone who can reach it and has the "
                    "token drives containers on this machine", host)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host

    def ready(_: object) -> None:  # "serving" last: a script waiting on it has seen it all
        out.log(f"token file {token_path}")
        out.log(f"viewer http://{shown}:{bound}/ (log in with the token in its file)")
        out.log(f"serving http://{shown}:{bound}")

    with sock:
        anyio.run(partial(serve_forever, config, store=settings().store, on_ready=ready,
                          sock=sock),
                  backend_options={"use_uvloop": _has_uvloop()})


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


__all__ = ["ExitCode", "session_line"]

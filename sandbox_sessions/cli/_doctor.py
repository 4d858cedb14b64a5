"""`doctor` (what is wrong with this machine's setup, and the fix) and `images list`.

`doctor` runs its checks in order: the Docker engine, the sandbox image, the store (embedded
only), the extras, and with `--url` (or `$SANDBOX_SESSIONS_URL`) the server and its token.
Each prints ok, fail or skip, and for a failure the one line that fixes it. It exits 0 when
none failed, else with the code of the first failure: 4 for an engine or server that does not
answer, 3 for a missing image, 1 for the rest.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import click

from .._exceptions import SandboxSessionsError, SandboxUnavailable
from .._tokens import default_token_path
from .._types import AGENTS_IMAGE, DEFAULT_IMAGE
from ..client import SandboxClient
from ._app import ExitCode, cli, common, settings
from ._basic import images
from ._output import Output, output

__all__ = ["Check", "image_rows"]

OUR_PREFIX = "sandbox-sessions/"
"""Images named so are sandbox images, whoever built them."""
SERVER_TIMEOUT = 5.0
"""Seconds `doctor` waits for the server's first answer."""


@dataclass(frozen=True)
class Check:
    """One check's outcome: `status` ok, fail or skip; for a failure, the fix and the exit
    code it means."""

    check: str
    status: str
    detail: str
    fix: str | None = None
    exit_code: int = 0


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _failed(name: str, detail: str, fix: str, code: ExitCode = ExitCode.ERROR) -> Check:
    return Check(name, "fail", detail, fix, int(code))


def _skipped(name: str, why: str) -> Check:
    return Check(name, "skip", why)


# --- the checks ------------------------------------------------------------------------------


def check_engine() -> tuple[Check, Any]:
    """The engine answers: the check, and the engine (None when it does not)."""
    from ..sandbox._engine import Engine

    engine = Engine(timeout=10)
    try:
        version = engine.version()
    except SandboxUnavailable as exc:
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        return _failed("engine", f"the Docker engine at {where} does not answer: {exc}",
                       "bash scripts/ensure-docker.sh (or start dockerd; check DOCKER_HOST)",
                       ExitCode.UNAVAILABLE), None
    return _ok("engine", f"Docker {version}"), engine


def check_image(engine: Any, image: str) -> Check:
    """The sandbox image exists locally."""
    if engine is None:
        return _skipped("image", "the engine does not answer")
    try:
        image_id = engine.image_id(image)
    except SandboxSessionsError as exc:
        return _failed("image", f"cannot look up {image}: {exc}",
                       "bash scripts/ensure-docker.sh", ExitCode.UNAVAILABLE)
    if image_id is None:
        tag = "" if image == DEFAULT_IMAGE else f" --tag {image}"
        return _failed("image", f"no image {image}", f"sandbox-sessions images build{tag}",
                       ExitCode.NOT_FOUND)
    return _ok("image", f"{image} ({image_id[:19]})")


def check_agents(engine: Any, image: str = AGENTS_IMAGE) -> Check:
    """The agents image (for harness agents) and the CLIs in it. Optional: a missing one is
    a skip with its fix, not a failure."""
    from ..sandbox._agent_images import AGENTS_LABEL

    if engine is None:
        return _skipped("agents", "the engine does not answer")
    try:
        labels = engine.image_labels(image)
    except SandboxSessionsError as exc:
        return _failed("agents", f"cannot look up {image}: {exc}",
                       "check the engine (`docker info`)")
    if labels is None:
        return Check("agents", "skip", f"no image {image} (harness agents need it)",
                     "sandbox-sessions images build --with claude-code,codex,opencode")
    try:
        agents = json.loads(labels.get(AGENTS_LABEL, "[]"))
        listed = ", ".join(f"{agent['command']} {agent['version']}" for agent in agents)
    except (ValueError, TypeError, KeyError):
        listed = "its agents label is unreadable"
    return _ok("agents", f"{image}: {listed or 'no agent CLI'}")


def check_store(path: Path) -> Check:
    """The store file opens (made if missing) and can be written."""
    from ..store._sqlite import SQLiteStore

    try:
        store = SQLiteStore(path)
        anyio.run(store.aclose)
    except SandboxSessionsError as exc:
        return _failed("store", str(exc), f"make {path.parent} writable, or pass --store FILE "
                       "(or set SANDBOX_SESSIONS_DB)")
    for where in (path, path.parent):
        if not os.access(where, os.W_OK):
            return _failed("store", f"{where} is not writable",
                           f"chmod u+w {where}, or pass --store FILE (or SANDBOX_SESSIONS_DB)")
    return _ok("store", str(path))


def check_extras() -> list[Check]:
    """The `cli` and `server` extras are importable."""
    checks = []
    for extra, modules in (("cli", ("click", "rich")), ("server", ("fastapi", "uvicorn"))):
        missing = [name for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            checks.append(_failed(f"extra {extra}", f"missing: {', '.join(missing)}",
                                  f"pip install 'sandbox-sessions[{extra}]'"))
        else:
            checks.append(_ok(f"extra {extra}", ", ".join(modules)))
    return checks


def _token_source() -> str:
    if os.environ.get("SANDBOX_SESSIONS_TOKEN"):
        return "$SANDBOX_SESSIONS_TOKEN"
    return str(default_token_path())


def check_server(url: str) -> list[Check]:
    """The server answers, and takes the token."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/openapi.json", timeout=SERVER_TIMEOUT)
    except httpx.HTTPError as exc:
        return [_failed("server", f"{url} does not answer: {exc}",
                        f"start it: sandbox-sessions serve (or fix --url {url})",
                        ExitCode.UNAVAILABLE), _skipped("token", "the server does not answer")]
    server = _ok("server", f"{url} answers")
    source = _token_source()
    try:
        with SandboxClient(base_url=url) as client:
            client.list_sessions()
    except SandboxSessionsError as exc:
        return [server, _failed("token", f"the token of {source} is refused: {exc}",
                                "set SANDBOX_SESSIONS_TOKEN to the token in the server's "
                                f"token file (read from: {source})")]
    return [server, _ok("token", f"accepted (from {source})")]


def _checks(image: str) -> list[Check]:
    opts = settings()
    url = opts.url or os.environ.get("SANDBOX_SESSIONS_URL") or None
    engine_check, engine = check_engine()
    checks = [engine_check, check_image(engine, image), check_agents(engine)]
    if url is None:
        from ..store._sqlite import default_store_path

        checks.append(check_store(Path(opts.store) if opts.store else default_store_path()))
    else:
        checks.append(_skipped("store", "the server keeps the sessions (--url)"))
    checks.extend(check_extras())
    if url is not None:
        checks.extend(check_server(url))
    if engine is not None:
        engine.close()
    return checks


def _show(out: Output, check: Check) -> None:
    if out.json:
        out.emit(asdict(check))
        return
    style = {"ok": "green", "fail": "red"}.get(check.status, "yellow")
    out.line(f"{check.status:<4}  {check.check:<12}  {check.detail}", style=style)
    if check.fix:
        out.line(f"      {'':<12}  fix: {check.fix}")


@cli.command()
@common
@click.option("--image", default=DEFAULT_IMAGE, show_default=True,
              help="The sandbox image to look for.")
def doctor(image: str) -> int:
    """Check the engine, the image, the agents image, the store, the extras and the server;
    say the fix.

    Exits 0 when every check passes, else with the first failure's code: 4 engine or server
    down, 3 image missing, 1 anything else.
    """
    out = output()
    checks = _checks(image)
    for check in checks:
        _show(out, check)
    failed = [check for check in checks if check.status == "fail"]
    return failed[0].exit_code if failed else 0


# --- images list -----------------------------------------------------------------------------


def _ours(image: dict[str, Any]) -> bool:
    from ..sandbox._images import IMAGE_LABEL

    tags = image.get("RepoTags") or []
    return IMAGE_LABEL in (image.get("Labels") or {}) or any(
        tag.startswith(OUR_PREFIX) for tag in tags)


def image_rows(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sandbox images among those the engine lists: one row per tag, newest first."""
    rows = []
    for image in sorted(listed, key=lambda found: -int(found.get("Created") or 0)):
        if not _ours(image):
            continue
        created = datetime.fromtimestamp(int(image.get("Created") or 0), UTC)
        for tag in [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"] or ["-"]:
            rows.append({"tag": tag, "id": str(image["Id"]), "size": int(image["Size"]),
                         "created": created.isoformat()})
    return rows


def _row_line(row: dict[str, Any]) -> str:
    size = f"{row['size'] / 1e6:.0f} MB"
    return f"{row['tag']:<40}  {row['id'][7:19]}  {size:>8}  {row['created'][:16]}"


@images.command("list")
@common
def images_list() -> None:
    """The sandbox images on this machine: tag, id, size, created."""
    from ..sandbox._engine import Engine

    out = output()
    engine = Engine()
    try:
        rows = image_rows(engine.list_images())
    finally:
        engine.close()
    show: Callable[[dict[str, Any]], None] = out.emit if out.json else (
        lambda row: out.line(_row_line(row)))
    for row in rows:
        show(row)

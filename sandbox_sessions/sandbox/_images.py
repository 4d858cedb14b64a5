"""Building the sandbox image, offline: what `sandbox-sessions images build` runs.

The sandbox image is built from `images/sandbox/Dockerfile` on a base image, with no network.
Where the base image does not exist locally (no registry being reachable to pull one),
`images/bootstrap-base.sh` makes it first: debootstrap, then `docker import`.

A build is skipped when the image already carries the content hash of the `images/` folder
(and was built on the base image that exists now), so calling `build_image` again is cheap.
Everything here blocks; call it from a worker thread in async code.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from sandbox_sessions._exceptions import ImageBuildError
from sandbox_sessions._types import DEFAULT_IMAGE
from sandbox_sessions.sandbox._engine import Engine

__all__ = [
    "BASE_ID_LABEL",
    "CONTENT_HASH_LABEL",
    "DEFAULT_BASE_IMAGE",
    "IMAGE_LABEL",
    "ImageBuild",
    "build_image",
    "content_hash",
    "images_dir",
]

DEFAULT_BASE_IMAGE = "sandbox-sessions/base:bookworm"
"""The base image that `images/bootstrap-base.sh` bootstraps when it is missing."""
CONTENT_HASH_LABEL = "sandbox-sessions.content-hash"
"""Label holding the sha256 of the `images/` folder the image was built from."""
IMAGE_LABEL = "sandbox-sessions.image"
"""Label naming which of our images this is (`sandbox`)."""
BASE_ID_LABEL = "sandbox-sessions.base-id"
"""Label holding the id of the base image the image was built on."""

_CHUNK = 1 << 20
"""Bytes `content_hash` reads at a time."""
_TAIL_LINES = 30
"""Lines of a failed bootstrap's output that its `ImageBuildError` carries."""
_STOP_GRACE = 30.0
"""Seconds an interrupted bootstrap gets to unmount and remove its root filesystem."""


class ImageBuild(BaseModel):
    """The outcome of `build_image`."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

    tag: str
    """The image that was built, or found up to date."""
    image_id: str
    """Its id, `sha256:...`."""
    content_hash: str
    """The sha256 of the `images/` folder, also the image's `sandbox-sessions.content-hash`."""
    built: bool
    """False when the image was already up to date and nothing was built."""
    seconds: float
    """Wall time of the call, the base image's bootstrap included."""


def images_dir() -> Path:
    """The folder holding the Dockerfiles and the bootstrap script.

    That is the package data folder `sandbox_sessions/_images` of an installed wheel, else the
    repository's `images/` next to the package (a source checkout or an editable install).
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_images", package.parent / "images"):
        if (candidate / "sandbox" / "Dockerfile").is_file():
            return candidate
    raise ImageBuildError(
        f"cannot find the images folder (looked in {package / '_images'} "
        f"and {package.parent / 'images'})"
    )


def content_hash(folder: Path) -> str:
    """The sha256, in hex, of every file under `folder`: sorted relative paths and bytes.

    Each file adds its relative POSIX path, its size and its bytes, so a rename or a move
    changes the hash as much as an edit does.
    """
    digest = hashlib.sha256()
    files = sorted(
        (path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if path.is_file()
    )
    for relative, path in files:
        with path.open("rb") as file:  # in chunks: an agent's program weighs 400 MB
            digest.update(f"{relative}\0{os.fstat(file.fileno()).st_size}\0".encode())
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def build_image(
    engine: Engine,
    *,
    tag: str = DEFAULT_IMAGE,
    base: str = DEFAULT_BASE_IMAGE,
    force: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> ImageBuild:
    """Build the sandbox image `tag` on `base`, offline, unless it is already up to date.

    The image is up to date when it carries this `images/` folder's content hash and was
    built on the `base` that exists now (or `base` no longer exists). `force` builds anyway.
    When `base` is missing it is bootstrapped first with `images/bootstrap-base.sh`, which
    needs root and a reachable Debian mirror and takes about a minute.

    `progress` receives the bootstrap's and the builder's output, one line per call, in order.
    Raises `ImageBuildError` when the bootstrap or the build fails, with the builder's words,
    and `SandboxUnavailable` when the engine does not answer.
    """
    started = time.monotonic()
    folder = images_dir()
    digest = content_hash(folder)
    if not force:
        current = _up_to_date(engine, tag, digest, base)
        if current is not None:
            progress(f"{tag} is up to date ({digest[:12]})")
            return _result(tag, current, digest, built=False, started=started)
    base_id = _ensure_base(engine, base, folder / "bootstrap-base.sh", progress)
    labels = {CONTENT_HASH_LABEL: digest, IMAGE_LABEL: "sandbox", BASE_ID_LABEL: base_id}
    progress(f"building {tag} on {base}")
    messages = engine.build(
        str(folder / "sandbox"), tag=tag, labels=labels, buildargs={"BASE": base}
    )
    _forward(messages, progress)
    image_id = engine.image_id(tag)
    if image_id is None:
        raise ImageBuildError(f"the build ended but {tag} does not exist")
    return _result(tag, image_id, digest, built=True, started=started)


def _result(tag: str, image_id: str, digest: str, *, built: bool, started: float) -> ImageBuild:
    seconds = time.monotonic() - started
    return ImageBuild(tag=tag, image_id=image_id, content_hash=digest, built=built, seconds=seconds)


def _up_to_date(engine: Engine, tag: str, digest: str, base: str) -> str | None:
    """The id of `tag` when it is up to date, else None."""
    labels = engine.image_labels(tag)
    if labels is None or labels.get(CONTENT_HASH_LABEL) != digest:
        return None
    base_id = engine.image_id(base)
    if base_id is not None and labels.get(BASE_ID_LABEL) != base_id:
        return None
    return engine.image_id(tag)


def _ensure_base(engine: Engine, base: str, script: Path, progress: Callable[[str], None]) -> str:
    """The id of `base`, bootstrapping it first when it does not exist."""
    base_id = engine.image_id(base)
    if base_id is not None:
        return base_id
    progress(f"{base} does not exist; bootstrapping it with {script.name}")
    _run_bootstrap(script, base, progress)
    base_id = engine.image_id(base)
    if base_id is None:
        raise ImageBuildError(f"{script.name} succeeded but {base} does not exist")
    return base_id


def _run_bootstrap(script: Path, base: str, progress: Callable[[str], None]) -> None:
    """Run the bootstrap script, streaming its merged output to `progress` line by line."""
    run_streamed(["bash", str(script), "--tag", base], progress, what=script.name)


def run_streamed(argv: list[str], progress: Callable[[str], None], *, what: str) -> None:
    """Run `argv` in a process group of its own, passing its merged output to `progress`
    line by line; `ImageBuildError` naming `what`, with the last lines, when it fails. If
    `progress` raises or we are interrupted, the whole group is stopped (TERM, then KILL)."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, so `_stop` reaches its children
        )
    except OSError as exc:
        raise ImageBuildError(f"cannot run {what}: {exc}") from exc
    with process:
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                tail.append(line)
                progress(line)
        except BaseException:
            _stop(process)
            raise
        code = process.wait()
    if code != 0:
        last = "\n".join(tail)
        raise ImageBuildError(f"{what} failed with exit code {code}:\n{last}")


def _stop(process: subprocess.Popen[str]) -> None:
    """End the process group: TERM, so a script cleans up, then KILL."""
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _forward(messages: Iterable[Mapping[str, Any]], progress: Callable[[str], None]) -> None:
    """Pass the builder's `stream` and `status` text on to `progress`, one line per call."""
    for message in messages:
        if "stream" in message:
            text = str(message["stream"])
        elif "status" in message:
            ident = message.get("id")
            text = f"{ident}: {message['status']}" if ident else str(message["status"])
        else:
            continue
        for line in text.splitlines():
            if line.strip():
                progress(line.rstrip())

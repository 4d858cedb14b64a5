"""Uploading a host file or folder into a session's sandbox.

The host side decides everything: it walks the source (never following a link below it),
leaves out what `.gitignore` files ignore and every `.git`, checks the caps before anything
is sent, and builds a tar of exactly what it walked. Links are never uploaded, nor FIFOs,
sockets or devices: each is skipped and reported. Member names are the walked names, relative
and free of `..`, kept byte for byte (not-UTF-8 ones too); modes are 0644, or 0755 when the
owner may execute the file (never setuid or setgid); folders are 0755.

The tar is spooled to a temporary host file, sent with `put_file` to a temporary path in the
sandbox and unpacked there by `tar` (as the sandbox user, who owns what it makes), then
removed whatever happens. Only `put_file` and `shell` are used, so an upload works the same
in-process and over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shlex
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

import anyio
import anyio.to_thread

from .._exceptions import InvalidArgument, SandboxError, SandboxSessionsError
from .._types import ShellCommand, SkippedPath, UploadResult
from ..sandbox._archive import printable
from ._download import TransferProgress
from ._ignore import IgnoreRules
from ._transport import Transport

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_FILES", "upload"]

MAX_UPLOAD_BYTES = 256 * 1024 * 1024
"""Bytes of files one upload sends by default (256 MiB)."""
MAX_UPLOAD_FILES = 20_000
"""Files and folders one upload sends by default."""
CHUNK = 1024 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True, slots=True)
class _Item:
    name: str
    """Relative to the source folder, `/`-separated (not-UTF-8 bytes as surrogates)."""
    path: Path
    kind: Literal["file", "dir"]
    size: int
    executable: bool
    mtime: int
    identity: tuple[int, int]
    """(st_dev, st_ino) as walked: a file swapped meanwhile is not read."""


@dataclass
class _Plan:
    """What an upload sends: the entries walked, in order (folders before what they hold)."""

    items: list[_Item] = field(default_factory=list)
    skipped: list[SkippedPath] = field(default_factory=list)
    ignored: int = 0
    bytes: int = 0


class _Caps:
    def __init__(self, source: Path, max_bytes: int, max_files: int) -> None:
        self.source, self.max_bytes, self.max_files = source, max_bytes, max_files

    def check(self, plan: _Plan) -> None:
        """Refuse the upload as soon as the walk goes past a cap (nothing was sent yet)."""
        if len(plan.items) > self.max_files:
            raise InvalidArgument(f"upload of {self.source}: more than {self.max_files} files "
                                  "and folders (max_files); nothing was sent")
        if plan.bytes > self.max_bytes:
            raise InvalidArgument(f"upload of {self.source}: more than {self.max_bytes} bytes "
                                  "(max_bytes); nothing was sent")


def _item(name: str, path: Path, st: os.stat_result) -> _Item:
    folder = stat.S_ISDIR(st.st_mode)
    return _Item(name=name, path=path, kind="dir" if folder else "file",
                 size=0 if folder else st.st_size, executable=bool(st.st_mode & stat.S_IXUSR),
                 mtime=int(st.st_mtime), identity=(st.st_dev, st.st_ino))


def plan_upload(source: Path, *, gitignore: bool, max_bytes: int, max_files: int) -> _Plan:
    """Walk `source` (a file, or a folder's contents) into a plan; `InvalidArgument` when it
    is missing, not a file or folder, or over a cap."""
    try:
        st = os.stat(source)  # the source the caller named is followed; links below it are not
    except OSError as exc:
        raise InvalidArgument(f"upload source {source} cannot be read: "
                              f"{exc.strerror or exc}") from None
    plan, caps = _Plan(), _Caps(source, max_bytes, max_files)
    if stat.S_ISREG(st.st_mode):
        name = Path(os.path.abspath(source)).name  # the name it was given, not its target's
        _add(plan, caps, _item(name, Path(os.path.realpath(source)), st))
    elif stat.S_ISDIR(st.st_mode):
        _walk(plan, caps, source, IgnoreRules() if gitignore else None)
    else:
        raise InvalidArgument(f"upload source {source} is not a regular file or folder")
    return plan


def _add(plan: _Plan, caps: _Caps, item: _Item) -> None:
    plan.items.append(item)
    plan.bytes += item.size
    caps.check(plan)


def _walk(plan: _Plan, caps: _Caps, root: Path, rules: IgnoreRules | None) -> None:
    """Depth first, names sorted, without recursion (a deep tree cannot overflow the stack)."""
    stack: list[tuple[Path, str, IgnoreRules | None]] = [(root, "", rules)]
    while stack:
        folder, prefix, rules = stack.pop()
        try:
            found = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            plan.skipped.append(SkippedPath(path=printable(prefix or "."),
                                            reason=f"cannot be listed: {exc.strerror or exc}"))
            continue
        inner = rules.entering(folder, prefix) if rules is not None else None
        below: list[tuple[Path, str, IgnoreRules | None]] = []
        for entry in found:
            name = f"{prefix}/{entry.name}" if prefix else entry.name
            child = _visit(plan, caps, entry, name, inner)
            if child is not None:
                below.append((Path(entry.path), name, inner))
        stack.extend(reversed(below))


def _visit(plan: _Plan, caps: _Caps, entry: os.DirEntry[str], name: str,
           rules: IgnoreRules | None) -> _Item | None:
    """Plan one entry; the item when it is a folder to walk into."""
    if entry.name == ".git":
        plan.ignored += 1
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        plan.skipped.append(SkippedPath(path=printable(name),
                                        reason=f"cannot be read: {exc.strerror or exc}"))
        return None
    reason = _refusal(st.st_mode)
    if reason is not None:
        plan.skipped.append(SkippedPath(path=printable(name), reason=reason))
        return None
    folder = stat.S_ISDIR(st.st_mode)
    if rules is not None and rules.ignores(name, folder=folder):
        plan.ignored += 1
        return None
    item = _item(name, Path(entry.path), st)
    _add(plan, caps, item)
    return item if folder else None


def _refusal(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "a symbolic link; links are not uploaded"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "not a regular file or folder (a FIFO, socket or device)"
    return None


# --- the tar -----------------------------------------------------------------------------------


class _Changed(Exception):
    """The file is not as walked; it is left out of the tar."""


def write_tar(plan: _Plan, out: BinaryIO) -> tuple[list[str], int]:
    """Write the plan's tar to `out` (seekable); the files written and their bytes. A file
    that cannot be read whole as walked is cut back out of the tar and added to
    `plan.skipped`."""
    files: list[str] = []
    size = 0
    for item in plan.items:
        _check_name(item.name)
        start = out.tell()
        out.write(_header(item))
        if item.kind == "dir":
            continue
        try:
            _copy_exact(item, out)
        except _Changed as exc:
            out.seek(start)
            out.truncate()
            plan.skipped.append(SkippedPath(path=printable(item.name), reason=str(exc)))
            continue
        out.write(b"\0" * (-item.size % _BLOCK))
        files.append(printable(item.name))
        size += item.size
    out.write(b"\0" * (2 * _BLOCK))
    return files, size


def _check_name(name: str) -> None:
    """A walked name is relative and climbs nowhere; this says so before it is written."""
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise AssertionError(f"unsafe member name {printable(name)!r}")  # pragma: no cover


def _header(item: _Item) -> bytes:
    info = tarfile.TarInfo(item.name)
    info.type = tarfile.DIRTYPE if item.kind == "dir" else tarfile.REGTYPE
    info.mode = 0o755 if item.kind == "dir" or item.executable else 0o644
    info.size, info.mtime = item.size, item.mtime
    # GNU headers carry names as their bytes (long ones too), so not-UTF-8 names stay exact.
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _copy_exact(item: _Item, out: BinaryIO) -> None:
    """Copy exactly `item.size` bytes of the file as walked; `_Changed` otherwise."""
    try:
        fd = os.open(item.path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError as exc:
        raise _Changed(f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != item.identity:
            raise _Changed("replaced while the upload was read")
        left = item.size
        while left:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                raise _Changed("shrank while the upload was read")
            out.write(data)
            left -= len(data)
        if os.read(fd, 1):
            raise _Changed("grew while the upload was read")
    except OSError as exc:
        raise _Changed(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


# --- sending -----------------------------------------------------------------------------------


async def upload(
    transport: Transport, session_id: str, source: Path, destination: str, *,
    gitignore: bool, max_bytes: int, max_files: int, progress: TransferProgress | None,
) -> UploadResult:
    """Copy `source` into the sandbox folder `destination`; see `AsyncSessionHandle.upload`."""
    info = await transport.get_session(session_id)  # an unknown or ended session: say so first
    target = posixpath.normpath(posixpath.join(info.sandbox.workdir, destination))
    plan = await anyio.to_thread.run_sync(partial(
        plan_upload, source, gitignore=gitignore, max_bytes=max_bytes, max_files=max_files))
    with tempfile.TemporaryFile() as spool:
        files, size = await anyio.to_thread.run_sync(write_tar, plan, spool)
        await _send(transport, session_id, spool, target, progress)
    return UploadResult(destination=target, files=files, bytes=size, skipped=plan.skipped,
                        ignored=plan.ignored)


async def _send(transport: Transport, session_id: str, spool: BinaryIO, target: str,
                progress: TransferProgress | None) -> None:
    """Send the spooled tar and unpack it in `target` (made if missing); the temporary tar
    in the sandbox is removed whatever happens."""
    remote = f"/tmp/.sandbox-sessions-upload-{secrets.token_hex(8)}.tar"
    folder = shlex.quote(target)
    try:
        await transport.put_file(session_id, remote, _chunks(spool, progress))
        done = await transport.shell(session_id, ShellCommand(
            command=f"mkdir -p -- {folder} && tar -xf {remote} -C {folder} --no-same-owner "
                    "--no-same-permissions", timeout=600.0, cwd="/"))
        if done.exit_code != 0:
            raise SandboxError(f"the upload could not be unpacked in {target}: "
                               f"{(done.stderr or done.stdout)[-500:]}")
    finally:
        # A failure to clean up (the container gone) must not hide the error that led here.
        with anyio.CancelScope(shield=True), contextlib.suppress(SandboxSessionsError):
            await transport.shell(session_id, ShellCommand(command=f"rm -f {remote}",
                                                           timeout=60.0, cwd="/"))


async def _chunks(spool: BinaryIO, progress: TransferProgress | None) -> AsyncIterator[bytes]:
    total = spool.seek(0, os.SEEK_END)
    spool.seek(0)
    sent = 0
    while data := await anyio.to_thread.run_sync(spool.read, CHUNK):
        sent += len(data)
        yield data
        if progress is not None:
            progress(sent, total)

"""Artifacts as the sandbox reports them: the listing, and the entries a download works from
(of `/artifacts`, or of any sandbox path: `path_entries`).

Everything the sandbox reports is untrusted: names may be unsafe or not UTF-8, and entries may
be links, FIFOs or devices. Unsafe names are refused here, on the side that reads the sandbox;
what a download may write is decided again on the host that writes (`client._download`).
"""

from __future__ import annotations

import logging
import posixpath
import shlex
from collections.abc import Sequence

from .._exceptions import OperationTimeout, SandboxFileNotFound, SandboxPermissionError
from .._types import ArtifactEntry, ArtifactInfo, PathEntries
from ..sandbox._archive import printable, unsafe_key_reason
from ..sandbox.base import FileEntry, Sandbox, ShellRequest

__all__ = ["ARTIFACTS", "entries", "listing", "path_entries"]

log: logging.Logger = logging.getLogger("sandbox_sessions")

ARTIFACTS = "/artifacts"


def listing(found: Sequence[FileEntry]) -> list[ArtifactInfo]:
    """The regular files among `found` whose keys are safe, sorted by key. Unsafe names (not
    UTF-8, climbing out, too long) are left out and logged as warnings."""
    files = []
    for entry in found:
        reason = unsafe_key_reason(entry.path)
        if reason is not None:
            log.warning("artifact %s skipped: %s", printable(entry.path), reason)
        elif entry.kind == "file":
            files.append(ArtifactInfo(key=entry.path, size=entry.size))
    return sorted(files, key=lambda artifact: artifact.key)


def entries(found: Sequence[FileEntry]) -> list[ArtifactEntry]:
    """Every entry of `found`, in walk order; an unsafe name is shown escaped and refused."""
    return [ArtifactEntry(key=printable(entry.path), kind=entry.kind, size=entry.size,
                          refused=unsafe_key_reason(entry.path)) for entry in found]


async def path_entries(sandbox: Sandbox, path: str) -> PathEntries:
    """The absolute `path` for a download: a folder with every entry below it (walked without
    following links), or a regular file as one entry named after it. `SandboxFileNotFound`
    when it is missing, a link (never followed) or a special file."""
    kind, size = await _lstat(sandbox, path)
    if kind == "dir":
        return PathEntries(path=path, kind="dir", entries=entries(await sandbox.walk(path)))
    if kind == "link":
        raise SandboxFileNotFound(path, "a symbolic link; links are not followed")
    if kind == "other":
        raise SandboxFileNotFound(path, "not a regular file or folder")
    name = posixpath.basename(path)
    return PathEntries(path=path, kind="file", entries=[ArtifactEntry(
        key=printable(name), kind="file", size=size, refused=unsafe_key_reason(name))])


_KINDS = {"directory": "dir", "regular file": "file", "regular empty file": "file",
          "symbolic link": "link"}


async def _lstat(sandbox: Sandbox, path: str) -> tuple[str, int]:
    """What `path` is (`dir`, `file`, `link` or `other`; the last part not followed) and its
    size, as `stat` in the sandbox says."""
    done = await sandbox.shell(ShellRequest(
        command=f"LC_ALL=C stat -c '%s %F' -- {shlex.quote(path)}", timeout=30.0, cwd="/",
        max_output=4096))
    if done.timed_out:
        raise OperationTimeout(f"looking at {path} in the sandbox took over 30 s")
    if done.exit_code != 0:
        # stat says why: missing, not a folder on the way, a name too long, a link loop...
        error = done.stderr.strip().rpartition(": ")[2][:200] or "cannot be looked at"
        if "Permission denied" in error:
            raise SandboxPermissionError(f"{path}: not readable by the sandbox user")
        raise SandboxFileNotFound(path, error[:1].lower() + error[1:])
    size, _, kind = done.stdout.strip().partition(" ")
    return _KINDS.get(kind, "other"), int(size) if size.isdigit() else 0

"""Artifacts as the sandbox reports them: the listing, and the entries a download works from.

Everything the sandbox reports is untrusted: names may be unsafe or not UTF-8, and entries may
be links, FIFOs or devices. Unsafe names are refused here, on the side that reads the sandbox;
what a download may write is decided again on the host that writes (`client._download`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .._types import ArtifactEntry, ArtifactInfo
from ..sandbox._archive import printable, unsafe_key_reason
from ..sandbox.base import FileEntry

__all__ = ["ARTIFACTS", "entries", "listing"]

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

"""Downloading a session's artifacts to a host folder, within caps, on the host that writes.

The service lists the entries (refusing unsafe names) and streams each file's bytes; what is
written where is decided here, by the safe writer, whichever transport carried the bytes.
Everything the sandbox reports is untrusted: names may be unsafe or not UTF-8, entries may be
links, FIFOs or devices, and files may change between the listing and the copy (grow, or be
swapped for a link or a FIFO). Each such artifact is skipped and reported with the reason;
the others are still copied. Only a problem with the destination itself, or with the sandbox
as a whole (engine down, container gone), ends a download with an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread

from .._exceptions import (
    FileTooLarge,
    SandboxFileNotFound,
    SandboxPermissionError,
    UnsafeArchive,
)
from .._types import ArtifactDownload, ArtifactEntry, SkippedArtifact
from ..sandbox._archive import Caps, SafeWriter
from ._transport import Transport

__all__ = ["DownloadProgress", "download"]

DownloadProgress = Callable[[str, int, int], object]
"""Called as `(key, files_done, files_total)` after each artifact is written."""

# Per artifact, these mean "this one cannot be copied": it is skipped, the download goes on.
_ONE_ARTIFACT = (SandboxFileNotFound, SandboxPermissionError, FileTooLarge, UnsafeArchive)


class _Skip(Exception):
    """This artifact is not copied, for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def download(
    transport: Transport, session_id: str, destination: Path, *, caps: Caps,
    progress: DownloadProgress | None,
) -> ArtifactDownload:
    """Copy every artifact of the session below `destination`; see `download_artifacts`."""
    entries = await transport.artifact_entries(session_id)
    writer = await anyio.to_thread.run_sync(SafeWriter, destination, caps)
    files: list[str] = []
    skipped: list[SkippedArtifact] = []
    total = sum(1 for entry in entries if entry.kind == "file")
    for entry in entries:
        try:
            await _copy_entry(transport, session_id, entry, writer)
        except _Skip as skip:
            skipped.append(SkippedArtifact(key=entry.key, reason=skip.reason))
            continue
        if entry.kind == "file":
            files.append(entry.key)
            if progress is not None:
                progress(entry.key, len(files), total)
    return ArtifactDownload(destination=str(writer.destination), files=files,
                            bytes=writer.bytes, skipped=skipped)


async def _copy_entry(
    transport: Transport, session_id: str, entry: ArtifactEntry, writer: SafeWriter
) -> None:
    """Write one entry (a folder, or a file within the caps left); `_Skip` when it may not."""
    reason = entry.refused or _refusal(entry)
    if reason is not None:
        raise _Skip(reason)
    try:
        if entry.kind == "dir":
            await anyio.to_thread.run_sync(writer.mkdir, entry.key)
            return
        limit = _room_for(entry, writer)
        chunks = transport.read_artifact(session_id, entry.key, max_bytes=limit)
        await _copy_file(chunks, entry.key, writer, limit)
    except _ONE_ARTIFACT as exc:
        raise _Skip(_reason_of(exc)) from None


def _refusal(entry: ArtifactEntry) -> str | None:
    if entry.kind == "link":
        return "a link; only regular files and folders are copied out"
    if entry.kind == "other":
        return "not a regular file or folder"
    return None


def _room_for(entry: ArtifactEntry, writer: SafeWriter) -> int:
    """Bytes this file may take; `_Skip` when its listed size is already over a cap."""
    caps = writer.caps
    if writer.files >= caps.max_files:
        raise _Skip(f"over the cap of {caps.max_files} files")
    if entry.size > caps.max_file_bytes:
        raise _Skip(f"{entry.size} bytes, over the cap of {caps.max_file_bytes} bytes per file")
    room = caps.max_bytes - writer.bytes
    if entry.size > room:
        raise _Skip(f"{entry.size} bytes would take the download over its cap of "
                    f"{caps.max_bytes} bytes")
    return min(caps.max_file_bytes, room)


def _reason_of(exc: Exception) -> str:
    if isinstance(exc, SandboxFileNotFound):
        # The path is ours (the key); what the sandbox found there is the reason.
        return str(exc).removeprefix(f"{exc.path}: ")
    if isinstance(exc, SandboxPermissionError):
        return "not readable by the sandbox user"
    return str(exc)


async def _copy_file(
    chunks: AsyncIterator[bytes], key: str, writer: SafeWriter, limit: int
) -> None:
    """Stream `key` into its host file; on any failure remove that file, so none is left
    empty or partial, and re-raise."""
    handle = await anyio.to_thread.run_sync(writer.open, key)
    written = 0
    try:
        async for chunk in chunks:
            written += len(chunk)
            # The sandbox may send more than it was asked for: the caps are checked here too.
            writer.account(key, written, len(chunk))
            if written > limit:
                raise FileTooLarge(f"grew past the {limit} bytes left for it")
            await anyio.to_thread.run_sync(_on_host, handle.write, chunk)
        await anyio.to_thread.run_sync(_on_host, handle.close)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk fails the flush again: ignore
            handle.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.discard, key, written)
        raise


def _on_host(write: Callable[..., object], *args: bytes) -> None:
    """Run a write to the host file; its `OSError` (a full disk) skips this artifact."""
    try:
        write(*args)
    except OSError as exc:
        raise UnsafeArchive(f"cannot write on the host: {exc.strerror or exc}") from exc

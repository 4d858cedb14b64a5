"""Downloading a session's artifacts, or any sandbox path, to a host folder, within caps, on
the host that writes.

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
import posixpath
from collections.abc import AsyncIterator, Callable, Sequence
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

__all__ = ["DownloadProgress", "TransferProgress", "download", "download_path"]

DownloadProgress = Callable[[str, int, int], object]
"""Called as `(key, files_done, files_total)` after each artifact is written."""
TransferProgress = Callable[[int, int], object]
"""Called as `(bytes_done, bytes_total)` as a transfer goes on (on the event loop: keep it
short). The total is what the listing said; a file skipped or changed meanwhile makes the
last `bytes_done` differ from it."""
_Reader = Callable[[str, int], AsyncIterator[bytes]]
"""The bytes of the entry `key`, at most `max_bytes` of them."""

PREFETCH_FILES = 16
"""Entries per window whose small files are read from the sandbox together."""
PREFETCH_BYTES = 256 * 1024
"""Largest file read ahead (so a window holds at most 4 MiB in memory)."""

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

    def read(key: str, limit: int) -> AsyncIterator[bytes]:
        return transport.read_artifact(session_id, key, max_bytes=limit)

    total = sum(1 for entry in entries if entry.kind == "file")

    def on_file(key: str, done: int) -> None:
        if progress is not None:
            progress(key, done, total)

    return await _copy_all(entries, read, destination, caps, on_file=on_file)


async def download_path(
    transport: Transport, session_id: str, path: str, destination: Path, *, caps: Caps,
    progress: TransferProgress | None,
) -> ArtifactDownload:
    """Copy the sandbox folder `path` (its contents) or file (under its name) below
    `destination`; see `AsyncSessionHandle.download`."""
    listing = await transport.path_entries(session_id, path)
    root = listing.path

    def read(key: str, limit: int) -> AsyncIterator[bytes]:
        where = root if listing.kind == "file" else posixpath.join(root, key)
        return transport.read_file(session_id, where, max_bytes=limit)

    total = sum(e.size for e in listing.entries if e.kind == "file" and e.refused is None)
    done = 0

    def on_bytes(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    return await _copy_all(listing.entries, read, destination, caps, on_bytes=on_bytes)


async def _copy_all(
    entries: Sequence[ArtifactEntry], read: _Reader, destination: Path, caps: Caps, *,
    on_file: Callable[[str, int], object] | None = None,
    on_bytes: Callable[[int], object] | None = None,
) -> ArtifactDownload:
    """Write `entries` below `destination` through one `SafeWriter`, skipping (and listing)
    each that may not be written.

    The writer takes the entries one at a time, in order. The small files of each window of
    `PREFETCH_FILES` entries are read from the sandbox first, all at once (a round trip each,
    in flight together), and each is then written in one go (at most `PREFETCH_BYTES`); a
    read that fails or finds the file grown is done again, streamed, in its turn, so what is
    written, skipped and why is exactly what it would be without reading ahead."""
    writer = await anyio.to_thread.run_sync(SafeWriter, destination, caps)
    files: list[str] = []
    skipped: list[SkippedArtifact] = []
    for start in range(0, len(entries), PREFETCH_FILES):
        window = entries[start:start + PREFETCH_FILES]
        fetched = await _prefetch(read, window, caps)
        for entry in window:
            try:
                await _copy_entry(read, entry, writer, on_bytes, fetched.get(entry.key))
            except _Skip as skip:
                skipped.append(SkippedArtifact(key=entry.key, reason=skip.reason))
                continue
            if entry.kind == "file":
                files.append(entry.key)
                if on_file is not None:
                    on_file(entry.key, len(files))
    return ArtifactDownload(destination=str(writer.destination), files=files,
                            bytes=writer.bytes, skipped=skipped)


async def _prefetch(read: _Reader, window: Sequence[ArtifactEntry], caps: Caps
                    ) -> dict[str, list[bytes]]:
    """The bytes of the window's small files that could be read whole, by key."""
    limit = min(PREFETCH_BYTES, caps.max_file_bytes)
    wanted = [entry for entry in window if entry.kind == "file" and entry.refused is None
              and entry.size <= limit]
    fetched: dict[str, list[bytes]] = {}

    async def fetch(key: str) -> None:
        with contextlib.suppress(*_ONE_ARTIFACT):  # read again, streamed, in its turn
            fetched[key] = [chunk async for chunk in read(key, limit)]

    if len(wanted) > 1:  # one alone gains nothing from being read ahead
        async with anyio.create_task_group() as group:
            for entry in wanted:
                group.start_soon(fetch, entry.key)
    return fetched




async def _copy_entry(
    read: _Reader, entry: ArtifactEntry, writer: SafeWriter,
    on_bytes: Callable[[int], object] | None, fetched: list[bytes] | None = None,
) -> None:
    """Write one entry (a folder, or a file within the caps left: its `fetched` chunks when
    it was read ahead, else streamed); `_Skip` when it may not."""
    reason = entry.refused or _refusal(entry)
    if reason is not None:
        raise _Skip(reason)
    try:
        if entry.kind == "dir":
            await anyio.to_thread.run_sync(writer.mkdir, entry.key)
            return
        limit = _room_for(entry, writer)
        if fetched is None:
            await _copy_file(read(entry.key, limit), entry.key, writer, limit, on_bytes)
            return
        written = await anyio.to_thread.run_sync(_write_whole, fetched, entry.key, writer,
                                                 limit)
        if on_bytes is not None:
            on_bytes(written)
    except _ONE_ARTIFACT as exc:
        raise _Skip(_reason_of(exc)) from None


def _write_whole(chunks: list[bytes], key: str, writer: SafeWriter, limit: int) -> int:
    """Write a file read ahead, in one go on a worker thread, with the checks `_copy_file`
    makes as it streams; its byte count."""
    handle = writer.open(key)
    written = 0
    try:
        for chunk in chunks:
            written += len(chunk)
            writer.account(key, written, len(chunk))
            if written > limit:
                raise FileTooLarge(f"grew past the {limit} bytes left for it")
            _on_host(handle.write, chunk)
        _on_host(handle.close)
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        writer.discard(key, written)
        raise
    return written


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
    chunks: AsyncIterator[bytes], key: str, writer: SafeWriter, limit: int,
    on_bytes: Callable[[int], object] | None,
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
            if on_bytes is not None:
                on_bytes(len(chunk))
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

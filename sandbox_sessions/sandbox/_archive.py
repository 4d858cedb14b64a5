"""Writing untrusted content from a container onto the host.

Everything that comes out of a container is hostile: names may try to climb out of the
destination (`../x`, `/etc/x`), entries may be links or devices, and sizes may be huge. Only
regular files and folders are written, never through an existing link, and only inside the
destination; counts and sizes are capped.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from .._exceptions import InvalidArgument, UnsafeArchive

__all__ = ["Caps", "SafeWriter", "iter_tar_files", "printable", "unsafe_key_reason"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A FIFO planted at a file's name would block a plain open() for ever; with O_NONBLOCK it
# fails (no reader) or opens and is refused as not a regular file.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class Caps:
    """Limits on what one download may write: files, bytes in all, bytes per file.

    An artifact that would go past a cap is skipped and reported; the others are written.
    """

    def __init__(
        self, *, max_files: int = 10_000, max_bytes: int = 4 << 30, max_file_bytes: int = 2 << 30
    ) -> None:
        for name, value in (("max_files", max_files), ("max_bytes", max_bytes),
                            ("max_file_bytes", max_file_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"Caps({name}=...) must be a whole number >= 0, not "
                                      f"{value!r}")
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes


def printable(key: str) -> str:
    """`key` fit to show and serialize: bytes that were not UTF-8 (carried as lone surrogates)
    are written as `\\xNN` escapes."""
    try:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return key.encode("utf-8", "backslashreplace").decode("utf-8")


def unsafe_key_reason(key: str) -> str | None:
    """Why `key` may not be written under a destination, or None when it may."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if not key or "\x00" in key:
        return "empty name or NUL byte"
    if key.startswith("/") or PurePosixPath(key).is_absolute():
        return "absolute path"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "path escapes the destination"
    if len(key) > 4096 or any(len(part.encode()) > 255 for part in parts):
        return "name too long"
    return None


class SafeWriter:
    """Writes files named by untrusted keys below one host folder, within caps."""

    def __init__(self, destination: Path, caps: Caps) -> None:
        """Make `destination` (and its parents); `InvalidArgument` when it is not a folder,
        cannot be made, or cannot be written in."""
        self.destination = destination.resolve()
        self.caps = caps
        self.files = 0
        self.bytes = 0
        try:
            self.destination.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InvalidArgument(f"download destination {destination} exists and is not a "
                                  "folder") from None
        except OSError as exc:
            raise InvalidArgument(f"download destination {destination} cannot be made: "
                                  f"{exc.strerror or exc}") from exc
        if not os.access(self.destination, os.W_OK | os.X_OK):
            raise InvalidArgument(f"download destination {destination} is not writable")

    def _folder_for(self, key: str) -> Path:
        """Create the key's parent folders, refusing any that is a link or not a folder."""
        folder = self.destination
        for part in key.split("/")[:-1]:
            folder = folder / part
            try:
                mode = os.lstat(folder).st_mode
            except FileNotFoundError:
                folder.mkdir(mode=0o755)
                continue
            if not stat.S_ISDIR(mode):
                raise UnsafeArchive(f"{key}: {part!r} exists on the host and is not a folder")
        return folder

    def open(self, key: str) -> BinaryIO:
        """Open the file for `key` for writing; never follows a link at the final name."""
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise UnsafeArchive(f"{key!r}: {reason}")
        if self.files >= self.caps.max_files:
            raise UnsafeArchive(f"more than {self.caps.max_files} files")
        target = self._folder_for(key) / key.rsplit("/", 1)[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _NONBLOCK
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as exc:
            raise UnsafeArchive(f"{key}: cannot write on the host: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeArchive(f"{key}: exists on the host and is not a regular file")
        self.files += 1
        return os.fdopen(fd, "wb")

    def account(self, key: str, written: int, size: int) -> None:
        """Count `size` more bytes of `key` (now `written` in all); raise past a cap."""
        self.bytes += size
        if written > self.caps.max_file_bytes:
            raise UnsafeArchive(f"{key}: larger than {self.caps.max_file_bytes} bytes")
        if self.bytes > self.caps.max_bytes:
            raise UnsafeArchive(f"download larger than {self.caps.max_bytes} bytes")

    def discard(self, key: str, written: int) -> None:
        """Remove the file of `key` after a failed copy and give back its `written` bytes, so
        no empty or partial file is left and the caps count only what stays."""
        target = self.destination / key
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(target).st_mode):
                os.unlink(target)
        self.files -= 1
        self.bytes -= written

    def mkdir(self, key: str) -> None:
        """Create the folder `key` (and its parents) inside the destination."""
        reason = unsafe_key_reason(key)
        if reason is not None:
            raise UnsafeArchive(f"{key!r}: {reason}")
        self._folder_for(key + "/x")


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, for streaming `tarfile`."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _MemberReader(io.RawIOBase):
    """A member's data, where a stream cut short raises `UnsafeArchive`, not `tarfile`'s error."""

    def __init__(self, data: IO[bytes]) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            chunk = self._data.read(len(buffer))
        except tarfile.TarError as exc:
            raise UnsafeArchive(f"malformed archive from the sandbox: {exc}") from exc
        buffer[: len(chunk)] = chunk
        return len(chunk)


def iter_tar_files(
    chunks: Iterator[bytes], *, strip: int = 0
) -> Iterator[tuple[str, str, tarfile.TarInfo, IO[bytes] | None]]:
    """Yield `(key, kind, member, file)` for each member of a tar stream, read once.

    `kind` is `file`, `dir`, `link` or `other`; `file` is readable only for regular files and
    only until the next item. `strip` leading path components are removed from each name.
    """
    raw = io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 18)
    try:
        with tarfile.open(fileobj=raw, mode="r|") as archive:
            for member in archive:
                key = "/".join(member.name.split("/")[strip:]).rstrip("/")
                kind = _kind(member)
                data = archive.extractfile(member) if kind == "file" else None
                handle = None if data is None else io.BufferedReader(_MemberReader(data))
                yield key, kind, member, handle
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"malformed archive from the sandbox: {exc}") from exc


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym() or member.islnk():
        return "link"
    return "other"

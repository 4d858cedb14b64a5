"""The safe archive layer on hostile input, without Docker.

Everything here is crafted on the host: names that climb out, links planted in the destination,
caps, and tar streams holding links, devices and garbage.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_sessions import InvalidArgument, UnsafeArchive
from sandbox_sessions.sandbox._archive import (
    Caps,
    SafeWriter,
    iter_tar_files,
    printable,
    unsafe_key_reason,
)

# --- unsafe_key_reason ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../x", "path escapes the destination"),
        ("a/../../x", "path escapes the destination"),
        ("a/..", "path escapes the destination"),
        ("a//b", "path escapes the destination"),
        ("a/", "path escapes the destination"),
        (".", "path escapes the destination"),
        ("./a", "path escapes the destination"),
        ("/etc/x", "absolute path"),
        ("//etc/x", "absolute path"),
        ("", "empty name or NUL byte"),
        ("a\x00b", "empty name or NUL byte"),
        ("x" * 256, "name too long"),
        ("d/" + "é" * 128, "name too long"),  # 256 bytes in UTF-8, though 128 characters
        ("/".join(["d" * 200] * 21), "name too long"),  # 4220 characters in all
    ],
)
def test_unsafe_keys_are_named_with_a_reason(key: str, reason: str) -> None:
    assert unsafe_key_reason(key) == reason


@pytest.mark.parametrize(
    "key", ["a", "a/b/c.txt", "..evil", "a/..b", "...", "x" * 255, "a b/ c", "ünïcode/ö"]
)
def test_ordinary_keys_are_safe(key: str) -> None:
    assert unsafe_key_reason(key) is None


# --- SafeWriter ----------------------------------------------------------------------------


def _write(writer: SafeWriter, key: str, data: bytes) -> None:
    with writer.open(key) as handle:
        handle.write(data)
    writer.account(key, len(data), len(data))


def _tree(root: Path) -> dict[str, str]:
    """Every entry below `root` (links not followed), by relative path: its kind."""
    found: dict[str, str] = {}
    for path in root.rglob("*"):
        mode = path.lstat().st_mode
        found[path.relative_to(root).as_posix()] = (
            "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"
        )
    return found


def test_writer_writes_files_and_folders_inside_the_destination(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "new" / "dest", Caps())
    _write(writer, "a/b/c.txt", b"abc")
    _write(writer, "..evil", b"e")
    writer.mkdir("empty/inner")

    dest = tmp_path / "new" / "dest"
    assert (dest / "a" / "b" / "c.txt").read_bytes() == b"abc"
    assert (dest / "..evil").read_bytes() == b"e"
    assert (dest / "empty" / "inner").is_dir()
    assert (writer.files, writer.bytes) == (2, 4)
    assert _tree(tmp_path) == {
        "new": "dir", "new/dest": "dir", "new/dest/a": "dir", "new/dest/a/b": "dir",
        "new/dest/a/b/c.txt": "file", "new/dest/..evil": "file", "new/dest/empty": "dir",
        "new/dest/empty/inner": "dir",
    }


@pytest.mark.parametrize("key", ["../x", "/etc/x", "a/../../x", "a//b", ".", "a\x00b"])
def test_writer_refuses_unsafe_keys_and_writes_nothing(tmp_path: Path, key: str) -> None:
    dest = tmp_path / "dest"
    writer = SafeWriter(dest, Caps())

    with pytest.raises(UnsafeArchive) as caught:
        writer.open(key)
    with pytest.raises(UnsafeArchive):
        writer.mkdir(key)

    assert caught.value.code == "unsafe_archive"
    assert isinstance(caught.value, ValueError)
    assert _tree(tmp_path) == {"dest": "dir"}
    assert writer.files == 0


def test_writer_refuses_a_symlinked_parent_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    writer = SafeWriter(dest, Caps())

    with pytest.raises(UnsafeArchive, match="not a folder"):
        writer.open("sub/planted.txt")
    with pytest.raises(UnsafeArchive, match="not a folder"):
        writer.mkdir("sub/inner")

    assert list(outside.iterdir()) == []
    assert writer.files == 0


def test_writer_refuses_a_symlink_deeper_in_the_path(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    (dest / "a" / "b").symlink_to(outside, target_is_directory=True)
    writer = SafeWriter(dest, Caps())

    with pytest.raises(UnsafeArchive):
        writer.open("a/b/c/d.txt")

    assert list(outside.iterdir()) == []


def test_writer_refuses_a_symlinked_final_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out.txt").symlink_to(victim)
    (dest / "dangling.txt").symlink_to(tmp_path / "would-be-created.txt")
    writer = SafeWriter(dest, Caps())

    with pytest.raises(UnsafeArchive, match="cannot write on the host"):
        writer.open("out.txt")
    with pytest.raises(UnsafeArchive, match="cannot write on the host"):
        writer.open("dangling.txt")

    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "would-be-created.txt").exists()
    assert writer.files == 0


def test_writer_refuses_a_folder_where_a_file_goes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "taken").mkdir(parents=True)
    (dest / "plain").write_bytes(b"p")
    writer = SafeWriter(dest, Caps())

    with pytest.raises(UnsafeArchive):
        writer.open("taken")
    with pytest.raises(UnsafeArchive, match="not a folder"):
        writer.open("plain/below.txt")

    assert (dest / "plain").read_bytes() == b"p"


def test_writer_refuses_a_fifo_where_a_file_goes_without_blocking(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    fifo = dest / "pipe"
    os.mkfifo(fifo)
    writer = SafeWriter(dest, Caps())
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            writer.open("pipe").close()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    # A generous bound: the open is refused at once; a blocking open would wait for ever.
    thread.join(30)
    if thread.is_alive():
        with open(fifo, "rb"):  # a reader releases the stuck open, so the thread can end
            thread.join(30)
        pytest.fail("opening a planted FIFO blocked")
    assert len(outcome) == 1
    assert isinstance(outcome[0], UnsafeArchive)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert writer.files == 0


def test_writer_caps_the_number_of_files(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "dest", Caps(max_files=2))
    _write(writer, "one", b"1")
    _write(writer, "two", b"2")

    with pytest.raises(UnsafeArchive, match="more than 2 files"):
        writer.open("three")

    assert not (tmp_path / "dest" / "three").exists()
    assert writer.files == 2


def test_writer_caps_the_size_of_one_file(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "dest", Caps(max_file_bytes=10))
    writer.account("small", 10, 10)

    with pytest.raises(UnsafeArchive, match="larger than 10 bytes"):
        writer.account("big", 11, 11)


def test_writer_caps_the_whole_download(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "dest", Caps(max_bytes=100, max_file_bytes=80))
    writer.account("a", 60, 60)

    with pytest.raises(UnsafeArchive, match="download larger than 100 bytes"):
        writer.account("b", 41, 41)


def test_writer_counts_chunks_of_one_file_against_its_cap(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "dest", Caps(max_file_bytes=10))
    writer.account("f", 6, 6)

    with pytest.raises(UnsafeArchive):
        writer.account("f", 12, 6)
    assert writer.bytes == 12


@pytest.mark.parametrize("key", ["\udcff", "a/\udcfe/b", "ok\udc80", "\ud800x"])
def test_keys_that_are_not_utf8_are_unsafe(key: str) -> None:
    assert unsafe_key_reason(key) == "name is not valid UTF-8"


@pytest.mark.parametrize(
    ("key", "shown"),
    [("\udcff", "\\xff"), ("d\udcfe/x", "d\\xfe/x"), ("ünï", "ünï"), ("\ud800", "\\ud800")],
)
def test_printable_keys_escape_what_is_not_utf8(key: str, shown: str) -> None:
    assert printable(key) == shown
    shown.encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    "caps",
    [{"max_files": -1}, {"max_bytes": -5}, {"max_file_bytes": 1.5}, {"max_files": "10"},
     {"max_bytes": None}, {"max_file_bytes": True}],
)
def test_caps_refuse_bad_values(caps: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="Caps"):
        Caps(**caps)  # type: ignore[arg-type]


def test_writer_refuses_a_destination_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"mine")

    with pytest.raises(InvalidArgument, match="exists and is not a folder"):
        SafeWriter(target, Caps())
    with pytest.raises(InvalidArgument, match="cannot be made"):
        SafeWriter(target / "below", Caps())

    assert target.read_bytes() == b"mine"


def test_writer_discard_removes_the_file_and_gives_back_its_bytes(tmp_path: Path) -> None:
    writer = SafeWriter(tmp_path / "dest", Caps(max_bytes=10))
    _write(writer, "kept", b"1234")
    with writer.open("partial") as handle:
        handle.write(b"56789")
    writer.account("partial", 5, 5)

    writer.discard("partial", 5)

    assert (writer.files, writer.bytes) == (1, 4)
    assert _tree(tmp_path / "dest") == {"kept": "file"}
    _write(writer, "fits-again", b"123456")  # the discarded bytes no longer count


# --- iter_tar_files ------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _hostile_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in [("root/../escape", b"up"), ("/etc/cron.d/x", b"abs")]:
            info = _member(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.addfile(_member("root/link", tarfile.SYMTYPE, "/etc/passwd"))
        archive.addfile(_member("root/hard", tarfile.LNKTYPE, "root/../escape"))
        archive.addfile(_member("root/fifo", tarfile.FIFOTYPE))
        device = _member("root/null", tarfile.CHRTYPE)
        device.devmajor, device.devminor = 1, 3
        archive.addfile(device)
        archive.addfile(_member("root/dir", tarfile.DIRTYPE))
        normal = _member("root/dir/normal.txt")
        normal.size = 5
        archive.addfile(normal, io.BytesIO(b"hello"))
    return buffer.getvalue()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunk_size", [1, 7, 512, 1 << 20])
def test_tar_members_are_reported_with_their_real_kind(chunk_size: int) -> None:
    seen = [
        (key, kind, None if handle is None else handle.read())
        for key, kind, _member_info, handle in iter_tar_files(
            _chunks(_hostile_tar(), chunk_size)
        )
    ]

    assert seen == [
        ("root/../escape", "file", b"up"),
        ("/etc/cron.d/x", "file", b"abs"),
        ("root/link", "link", None),
        ("root/hard", "link", None),
        ("root/fifo", "other", None),
        ("root/null", "other", None),
        ("root/dir", "dir", None),
        ("root/dir/normal.txt", "file", b"hello"),
    ]
    # Names are reported as sent, so that callers can refuse them.
    assert unsafe_key_reason(seen[0][0]) == "path escapes the destination"
    assert unsafe_key_reason(seen[1][0]) == "absolute path"


def test_tar_strip_removes_leading_components() -> None:
    keys = [key for key, *_rest in iter_tar_files(iter([_hostile_tar()]), strip=1)]

    # The empty component before an absolute name's `/` is the one stripped: what is left
    # stays inside the destination. The climbing name is still reported, to be refused.
    assert keys == ["../escape", "etc/cron.d/x", "link", "hard", "fifo", "null", "dir",
                    "dir/normal.txt"]
    assert unsafe_key_reason(keys[0]) is not None
    assert unsafe_key_reason(keys[1]) is None


def test_tar_link_targets_are_never_followed() -> None:
    members = {key: member for key, _kind, member, _h in iter_tar_files(iter([_hostile_tar()]))}

    assert members["root/link"].linkname == "/etc/passwd"
    assert members["root/hard"].linkname == "root/../escape"


def test_tar_files_can_be_skipped_without_reading() -> None:
    kinds = [kind for _key, kind, _member_info, _h in iter_tar_files(iter([_hostile_tar()]))]

    assert kinds.count("file") == 3


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage" * 200, b"\x00" * 100, b"\xff" * 512],
    ids=["empty", "garbage", "short-zeros", "bad-header"],
)
def test_malformed_tar_is_an_unsafe_archive(data: bytes) -> None:
    with pytest.raises(UnsafeArchive, match="malformed archive") as caught:
        list(iter_tar_files(iter([data])))

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "unsafe_archive"
    assert isinstance(caught.value.__cause__, tarfile.TarError)


def test_tar_cut_short_between_members_is_an_unsafe_archive() -> None:
    whole = _hostile_tar()

    with pytest.raises(UnsafeArchive):
        list(iter_tar_files(iter([whole[:700]])))  # into the first member's padding


def test_tar_cut_short_inside_a_file_is_an_unsafe_archive_when_read() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = _member("big")
        info.size = 5000
        archive.addfile(info, io.BytesIO(b"x" * 5000))
    cut = buffer.getvalue()[:1000]

    def read_all() -> list[bytes]:
        return [handle.read() for *_rest, handle in iter_tar_files(iter([cut])) if handle]

    with pytest.raises(UnsafeArchive, match="malformed archive") as caught:
        read_all()
    assert isinstance(caught.value.__cause__, tarfile.TarError)


def test_tar_file_handle_reads_in_pieces() -> None:
    payload = bytes(range(256)) * 1000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = _member("blob")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))

    pieces: list[bytes] = []
    for _key, _kind, _member_info, handle in iter_tar_files(_chunks(buffer.getvalue(), 4096)):
        assert handle is not None
        while piece := handle.read(10_000):
            pieces.append(piece)

    assert b"".join(pieces) == payload
    assert len(pieces) > 1

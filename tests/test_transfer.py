"""upload() and download(): a host folder into the sandbox and a sandbox path back out, safely.
Real containers, both transports (conftest.py's CONFORMANCE); the host-side tar on real files."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    InvalidArgument,
    SandboxClient,
    SandboxFileNotFound,
)
from sandbox_sessions.client._upload import plan_upload, write_tar

pytestmark = pytest.mark.anyio
docker = pytest.mark.docker
SECRET = "s3cr3t-0f-the-h0st"


@asynccontextmanager
async def opened(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    session = await client.agent("build", image=image).create_session(title="transfer")
    async with session:
        yield session


def tree(root: Path, files: dict[str, bytes]) -> Path:
    """Make `files` (relative names) below `root`; returns `root`."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


async def listing(session: AsyncSessionHandle, folder: str) -> set[str]:
    """Every entry below the sandbox `folder`, relative to it (folders end with `/`)."""
    found = await session.shell(f"cd {folder} && find . -mindepth 1 -printf '%P%y\\n'")
    assert found.exit_code == 0, found.stderr
    return {line[:-1] + ("/" if line[-1] == "d" else "") for line in found.stdout.splitlines()}


def write_bytes_named(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (maybe not UTF-8)."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as file:
        file.write(data)


def host_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


def with_outside_links(root: Path, outside: Path) -> Path:
    """A source holding links out of itself (relative, absolute, to a folder) and a FIFO."""
    (outside / "secret").write_text(SECRET)
    tree(root, {"ok.txt": b"ok\n"})
    (root / "up").symlink_to("../secret")
    (root / "abs").symlink_to(outside / "secret")
    (root / "parent").symlink_to("..")
    (root / "inside").symlink_to("ok.txt")
    os.mkfifo(root / "fifo")
    return root


# --- upload ------------------------------------------------------------------------------------


@docker
async def test_nested_gitignores_with_negations_and_folder_patterns(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {
        ".gitignore": b"*.log\n!keep.log\nbuild/\n/top.txt\n",
        "a.log": b"a", "keep.log": b"k", "top.txt": b"t", "build/out.o": b"o",
        "src/main.py": b"print()\n",
        "sub/.gitignore": b"!again.log\nsecret/\n*.tmp\n",
        "sub/again.log": b"re-included", "sub/other.log": b"o", "sub/top.txt": b"not root",
        "sub/x.tmp": b"x", "sub/secret/key": b"k", "sub/build": b"a file, not a folder",
        ".git/config": b"[core]\n", "sub/.git": b"gitdir: ../.git/modules/sub\n",
    })
    async with opened(client, image) as session:
        result = await session.upload(source, "up")
        found = await listing(session, "up")
        everything = await session.upload(source, "all", gitignore=False)
        unfiltered = await listing(session, "all")

    assert found == {".gitignore", "keep.log", "src/", "src/main.py", "sub/", "sub/.gitignore",
                     "sub/again.log", "sub/top.txt", "sub/build"}
    assert sorted(result.files) == sorted(f for f in found if not f.endswith("/"))
    assert result.destination == "/workspace/up"
    # a.log, top.txt, build/, sub/other.log, sub/x.tmp, sub/secret/, .git/, sub/.git
    assert result.ignored == 8
    assert result.skipped == []
    assert result.bytes == sum(len((source / f).read_bytes()) for f in result.files)
    assert ".git/" not in unfiltered
    assert "sub/.git" not in unfiltered
    assert {"a.log", "build/out.o", "sub/secret/key", "sub/x.tmp"} <= unfiltered
    assert everything.ignored == 2


@docker
async def test_links_out_of_the_source_and_fifos_are_not_sent(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    source = with_outside_links(outside / "src", outside)
    async with opened(client, image) as session:
        result = await session.upload(source, "/workspace/in")
        found = await listing(session, "/workspace/in")
        leaked = await session.shell(f"grep -rl {SECRET} /workspace /tmp /artifacts")

    assert found == {"ok.txt"}
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {"up", "abs", "parent", "inside", "fifo"}
    assert "link" in reasons["up"]
    assert "link" in reasons["abs"]
    assert "FIFO" in reasons["fifo"]
    assert leaked.stdout == ""
    assert result.files == ["ok.txt"]


@docker
async def test_links_waiting_in_the_destination_are_replaced_not_followed(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"sub/f": b"in sub\n", "x": b"x\n"})
    async with opened(client, image) as session:
        made = await session.shell("mkdir -p /tmp/victim d && ln -s /tmp/victim d/sub && "
                                   "ln -s /tmp/victim/x d/x")
        assert made.exit_code == 0, made.stderr
        await session.upload(source, "d")
        victim = await session.shell("ls -A /tmp/victim")
        found = await listing(session, "d")

    assert victim.stdout == ""
    assert found == {"sub/", "sub/f", "x"}


@docker
async def test_the_caps_refuse_before_anything_is_written(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"a": b"12345", "b": b"123456", "c/d": b""})
    async with opened(client, image) as session:
        with pytest.raises(InvalidArgument, match="max_files"):
            await session.upload(source, "files", max_files=3)  # a, b, c/ and c/d: four
        with pytest.raises(InvalidArgument, match="max_bytes"):
            await session.upload(source, "bytes", max_bytes=10)
        left = await session.shell("ls -d files bytes /tmp/.sandbox-sessions-upload-* 2>&1")
        fits = await session.upload(source, "fits", max_files=4, max_bytes=11)

    assert "No such file" in left.stdout
    assert "files" in left.stdout
    assert left.stdout.count("No such file") == 3
    assert fits.bytes == 11


@docker
async def test_modes_keep_the_executable_bit_and_drop_setuid(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\necho ran\n", "data": b"d",
                                     "suid": b"#!/bin/sh\n"})
    (source / "run.sh").chmod(0o750)
    (source / "data").chmod(0o600)
    (source / "suid").chmod(0o4755 | stat.S_ISGID)
    async with opened(client, image) as session:
        await session.upload(source)
        modes = await session.shell("stat -c '%n %a' run.sh data suid && ./run.sh")

    assert modes.stdout.splitlines() == ["run.sh 755", "data 644", "suid 755", "ran"]


@docker
async def test_odd_names_round_trip_with_equal_bytes(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    files = {"with space.txt": b"spaces\n", "ünï cödé/日本語.txt": b"unicode\n",
             "-dash": b"-", "deep/er/still/" + "l" * 200: bytes(range(256)) * 40,
             "empty": b"", ".hidden": b"h"}
    source = tree(tmp_path / "src", files)
    os.mkdir(tmp_path / "src" / "empty folder")
    progress: list[tuple[int, int]] = []
    async with opened(client, image) as session:
        sent = await session.upload(source, "w", progress=lambda d, t: progress.append((d, t)))
        back = await session.download("w", tmp_path / "back")

    assert host_files(tmp_path / "back") == files
    assert (tmp_path / "back" / "empty folder").is_dir()
    assert sorted(back.files) == sorted(files) == sorted(sent.files)
    assert back.skipped == []
    assert back.bytes == sent.bytes == sum(map(len, files.values()))
    assert progress
    assert progress[-1][0] == progress[-1][1]


@docker
async def test_a_name_that_is_not_utf8_arrives_exact_and_is_refused_on_the_way_back(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"fine": b"f"})
    write_bytes_named(source, b"bad\xff.txt", b"latin\n")
    async with opened(client, image) as session:
        sent = await session.upload(source, "nu")
        names = await session.shell("python3 -c \"import os; print(sorted(os.listdir(b'nu')))\"")
        back = await session.download("nu", tmp_path / "back")

    assert names.stdout.strip() == "[b'bad\\xff.txt', b'fine']"
    assert sorted(sent.files) == ["bad\\xff.txt", "fine"]
    assert back.files == ["fine"]
    assert [(s.key, s.reason) for s in back.skipped] == [("bad\\xff.txt",
                                                          "name is not valid UTF-8")]


@docker
async def test_a_single_file_lands_under_its_name(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    (tmp_path / "one.bin").write_bytes(b"\x00one\xff")
    async with opened(client, image) as session:
        result = await session.upload(tmp_path / "one.bin", "/workspace/made/here")
        data = await session.get_file_bytes("made/here/one.bin")

    assert data == b"\x00one\xff"
    assert (result.files, result.destination) == (["one.bin"], "/workspace/made/here")


@docker
async def test_a_missing_source_is_an_invalid_argument_naming_it(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "pipe")
    async with opened(client, image) as session:
        with pytest.raises(InvalidArgument, match="nowhere"):
            await session.upload(tmp_path / "nowhere")
        with pytest.raises(InvalidArgument, match="not a regular file or folder"):
            await session.upload(tmp_path / "pipe")


# --- download ----------------------------------------------------------------------------------


@docker
async def test_download_skips_links_and_fifos_in_the_sandbox(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with opened(client, image) as session:
        made = await session.shell("mkdir -p out/sub && echo a > out/a && echo b > out/sub/b && "
                                   "ln -s /etc/passwd out/pw && ln -s /etc out/sub/etc && "
                                   "mkfifo out/fifo")
        assert made.exit_code == 0, made.stderr
        result = await session.download("/workspace/out", tmp_path / "d")

    assert sorted(result.files) == ["a", "sub/b"]
    assert {s.key for s in result.skipped} == {"pw", "sub/etc", "fifo"}
    assert all("link" in s.reason for s in result.skipped if s.key != "fifo")
    assert host_files(tmp_path / "d") == {"a": b"a\n", "sub/b": b"b\n"}
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"a", "sub"}


@docker
async def test_download_of_a_missing_path_or_a_link_is_file_not_found(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with opened(client, image) as session:
        await session.shell("ln -s /etc/passwd pw")
        with pytest.raises(SandboxFileNotFound):
            await session.download("no/such/path", tmp_path / "d")
        with pytest.raises(SandboxFileNotFound, match="link"):
            await session.download("pw", tmp_path / "d")

    assert not (tmp_path / "d").exists()


@docker
async def test_download_of_a_single_file_and_its_caps(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with opened(client, image) as session:
        await session.put_file("dir/f.bin", b"x" * 1000)
        result = await session.download("dir/f.bin", tmp_path / "d")
        capped = await session.download("dir", tmp_path / "c", max_bytes=999)

    assert (tmp_path / "d" / "f.bin").read_bytes() == b"x" * 1000
    assert (result.files, result.bytes) == (["f.bin"], 1000)
    assert capped.files == []
    assert [s.key for s in capped.skipped] == ["f.bin"]
    assert not (tmp_path / "c" / "f.bin").exists()


@docker
def test_the_blocking_handle_moves_a_folder_both_ways(
    sync_client: SandboxClient, image: str, tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"a/b.txt": b"b", ".gitignore": b"*.o\n", "x.o": b"o"})
    with sync_client.agent("build", image=image).create_session() as session:
        sent = session.upload(source, "s")
        back = session.download("s", tmp_path / "back")

    assert sent.ignored == 1
    assert host_files(tmp_path / "back") == {"a/b.txt": b"b", ".gitignore": b"*.o\n"}
    assert sorted(back.files) == [".gitignore", "a/b.txt"]


# --- the tar, on the host ------------------------------------------------------------------------


def members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: (archive.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in archive}


def test_the_tar_holds_what_was_walked_and_nothing_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    source = with_outside_links(outside / "src", outside)
    plan = plan_upload(source, gitignore=True, max_bytes=1 << 20, max_files=100)
    spool = io.BytesIO()
    files, _ = write_tar(plan, spool)

    found = members(spool.getvalue())
    assert found == {"ok.txt": b"ok\n"}
    assert files == ["ok.txt"]
    assert not any(name.startswith("/") or ".." in name.split("/") for name in found)


def test_a_file_that_changes_while_read_is_left_out_and_the_tar_stays_whole(
    tmp_path: Path
) -> None:
    source = tree(tmp_path / "src", {"a": b"aaaa", "grows": b"12", "shrinks": b"1234",
                                     "swapped": b"s", "z": b"zz"})
    plan = plan_upload(source, gitignore=True, max_bytes=1 << 20, max_files=100)
    (source / "grows").write_bytes(b"123")
    (source / "shrinks").write_bytes(b"1")
    (source / "new").write_bytes(b"s")  # made before the old one goes: another inode
    (source / "new").replace(source / "swapped")
    spool = io.BytesIO()
    files, size = write_tar(plan, spool)

    assert members(spool.getvalue()) == {"a": b"aaaa", "z": b"zz"}
    assert (files, size) == (["a", "z"], 6)
    assert {s.path: s.reason for s in plan.skipped} == {
        "grows": "grew while the upload was read",
        "shrinks": "shrank while the upload was read",
        "swapped": "replaced while the upload was read"}


def test_a_source_that_is_a_link_is_followed_under_its_own_name(tmp_path: Path) -> None:
    tree(tmp_path, {"real/target.txt": b"t", "real/dir/in": b"i"})
    (tmp_path / "named.txt").symlink_to("real/target.txt")
    (tmp_path / "folder").symlink_to("real/dir")
    archives = []
    for source in (tmp_path / "named.txt", tmp_path / "folder"):
        spool = io.BytesIO()
        write_tar(plan_upload(source, gitignore=True, max_bytes=100, max_files=10), spool)
        archives.append(members(spool.getvalue()))

    assert archives == [{"named.txt": b"t"}, {"in": b"i"}]

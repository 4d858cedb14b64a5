"""Reads out of a container are bounded and never hang (issue 6, section 4), on a real engine.

Every read call (`get_file`, `get_file_bytes`, `get_artifact`, `get_artifact_bytes`,
`download_artifacts`) takes regular files only: FIFOs (with or without a writer), devices,
sockets, /proc files and links (at the end of the path or on it) are refused with a clear error
at once, also when a file is swapped for one of them while a download runs. Reads into memory
have a default cap; downloads skip and report what they may not copy, and go on.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from sandbox_sessions import (
    DEFAULT_MAX_READ,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Caps,
    FileTooLarge,
    InvalidArgument,
    SandboxFileNotFound,
)

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NO_HANG = 60  # seconds: a generous bound that only proves a call does not block for ever

# Planted in /artifacts: every kind of entry a read must refuse, and one regular file. The
# `held` FIFO has a writer that never writes (it holds the FIFO open read-write).
PLANT = r"""set -e; cd /artifacts
echo plain > real.txt
mkfifo fifo; mkfifo held; (exec sleep 100000 <> held >/dev/null 2>&1) &
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
ln -s real.txt link-to-file; ln -s /etc/passwd link-to-passwd; ln -s /dev/zero link-to-zero
ln -s /etc etc
"""
REFUSED_ARTIFACTS = {
    "fifo": "FIFO",
    "held": "FIFO",
    "sock": "socket",
    "link-to-file": "symbolic link",
    "link-to-passwd": "symbolic link",
    "link-to-zero": "symbolic link",
    "etc/passwd": "folder on its path is a symbolic link",
}
REFUSED_PATHS = {
    "/dev/zero": "device",
    "/dev/null": "device",
    "/proc/1/environ": "kernel interface",
    "/proc/cpuinfo": "kernel interface",
    "/proc/self/environ": "symbolic link",  # /proc/self is a link
    "/sys/kernel/uevent_seqnum": "kernel interface",
}


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("bounded-reads", image=image).create_session() as handle:
        yield handle


@pytest.fixture
async def planted(session: AsyncSessionHandle) -> AsyncSessionHandle:
    made = await session.shell(PLANT)
    assert made.exit_code == 0, made.stderr
    return session


async def assert_still_works(session: AsyncSessionHandle) -> None:
    result = await session.shell("echo still here")
    assert (result.exit_code, result.stdout) == (0, "still here\n")


async def refused(call: Callable[[], Awaitable[object]], words: str) -> SandboxFileNotFound:
    """Run `call` within NO_HANG seconds; it must raise `SandboxFileNotFound` naming `words`."""
    with anyio.fail_after(NO_HANG), pytest.raises(SandboxFileNotFound) as caught:
        await call()
    assert words in str(caught.value)
    assert caught.value.code == "file_not_found"
    assert isinstance(caught.value, FileNotFoundError)
    return caught.value


# --- special files and links -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "words"), REFUSED_ARTIFACTS.items(), ids=REFUSED_ARTIFACTS)
async def test_every_read_call_refuses_special_artifacts(
    planted: AsyncSessionHandle, key: str, words: str, tmp_path: Path
) -> None:
    path = f"/artifacts/{key}"
    await refused(lambda: planted.get_file(path), words)
    await refused(lambda: planted.get_file_bytes(path), words)
    await refused(lambda: planted.get_artifact(key), words)
    error = await refused(lambda: planted.get_artifact_bytes(key), words)
    with anyio.fail_after(NO_HANG):
        download = await planted.download_artifacts(tmp_path / "out")

    assert "root:" not in str(error)
    assert download.files == ["real.txt"]
    skipped = {item.key: item.reason for item in download.skipped}
    assert set(skipped) == {"fifo", "held", "sock", "link-to-file", "link-to-passwd",
                            "link-to-zero", "etc"}
    assert "link" in skipped[key.split("/")[0]] or "not a regular file" in skipped[key]
    assert host_files(tmp_path / "out") == {"real.txt": b"plain\n"}
    assert await planted.get_artifact("real.txt") == "plain\n"
    await assert_still_works(planted)


@pytest.mark.parametrize(("path", "words"), REFUSED_PATHS.items(), ids=REFUSED_PATHS)
async def test_devices_and_kernel_files_are_refused(
    session: AsyncSessionHandle, path: str, words: str
) -> None:
    await refused(lambda: session.get_file(path), words)
    await refused(lambda: session.get_file_bytes(path, max_bytes=1 << 30), words)
    await assert_still_works(session)


async def test_a_link_to_a_folder_on_the_path_is_refused_but_its_target_reads(
    session: AsyncSessionHandle,
) -> None:
    made = await session.shell("mkdir -p real/inner && echo deep > real/inner/f && ln -s real ln")
    assert made.exit_code == 0, made.stderr

    await refused(lambda: session.get_file("ln/inner/f"), "folder on its path")
    assert await session.get_file("real/inner/f") == "deep\n"


# Rotates /artifacts/victim, atomically (rename from the workdir, the same filesystem), through
# a link to /etc/passwd, a FIFO, a 2 MiB file and a small one, as fast as it can, while the
# host reads and downloads it.
SWAPPER = r"""(exec python3 -c '
import os
kinds = ("link", "fifo", "big", "small")
while True:
    for kind in kinds:
        tmp = "/workspace/." + kind
        if kind == "link":
            os.symlink("/etc/passwd", tmp)
        elif kind == "fifo":
            os.mkfifo(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(b"x" * (2 << 20) if kind == "big" else b"small\n")
        os.rename(tmp, "/artifacts/victim")
' >/dev/null 2>&1 &)"""


async def test_a_file_swapped_for_a_link_or_fifo_mid_download_is_never_followed(
    session: AsyncSessionHandle, tmp_path: Path
) -> None:
    started = await session.shell(SWAPPER)
    assert started.exit_code == 0, started.stderr
    outcomes: set[str] = set()

    for attempt in range(40):
        destination = tmp_path / f"out{attempt}"
        with anyio.fail_after(NO_HANG):
            download = await session.download_artifacts(
                destination, caps=Caps(max_file_bytes=1 << 20))
        written = host_files(destination)
        if download.files == ["victim"]:
            assert written == {"victim": b"small\n"}
            outcomes.add("copied")
        else:
            # A listing made while a name is renamed over may miss it: then nothing is copied.
            assert download.files == []
            assert [item.key for item in download.skipped] in (["victim"], [])
            assert written == {}, "a skipped artifact left a file behind"
            outcomes.add("skipped" if download.skipped else "unlisted")
        with anyio.fail_after(NO_HANG):
            try:
                data = await session.get_artifact_bytes("victim", max_bytes=1 << 20)
            except (SandboxFileNotFound, FileTooLarge):
                outcomes.add("refused")
            else:
                assert data == b"small\n"

    assert "skipped" in outcomes  # the swaps were seen; nothing else was ever read
    await assert_still_works(session)


# --- caps ------------------------------------------------------------------------------------


async def test_the_default_in_memory_cap_and_its_override(session: AsyncSessionHandle) -> None:
    made = await session.shell(f"truncate -s {DEFAULT_MAX_READ + 1} /artifacts/big")
    assert made.exit_code == 0, made.stderr

    for call in (lambda: session.get_file_bytes("/artifacts/big"),
                 lambda: session.get_file("/artifacts/big"),
                 lambda: session.get_artifact_bytes("big"),
                 lambda: session.get_artifact("big")):
        with pytest.raises(FileTooLarge, match=str(DEFAULT_MAX_READ)) as caught:
            await call()
        assert caught.value.code == "file_too_large"

    data = await session.get_artifact_bytes("big", max_bytes=DEFAULT_MAX_READ + 1)
    assert len(data) == DEFAULT_MAX_READ + 1
    with pytest.raises(FileTooLarge):
        await session.get_file_bytes("/artifacts/big", max_bytes=DEFAULT_MAX_READ)


async def test_get_artifact_with_an_unknown_encoding(session: AsyncSessionHandle) -> None:
    await session.put_file("/artifacts/t.txt", "text")

    with pytest.raises(InvalidArgument, match="encoding"):
        await session.get_artifact("t.txt", encoding="no-such-codec")
    assert await session.get_artifact("t.txt") == "text"


@pytest.mark.parametrize("max_bytes", [-1, 1.5, None, "10"])
async def test_a_bad_max_bytes_is_invalid(session: AsyncSessionHandle, max_bytes: object) -> None:
    with pytest.raises(InvalidArgument, match="max_bytes"):
        await session.get_file_bytes("/etc/hostname", max_bytes=max_bytes)  # type: ignore[arg-type]


async def test_download_skips_an_artifact_over_the_per_file_cap(
    session: AsyncSessionHandle, tmp_path: Path
) -> None:
    made = await session.shell("cd /artifacts && printf 1234567890 > a && head -c 1000 /dev/zero"
                               " > big && mkdir d && printf 0123456789 > d/c")
    assert made.exit_code == 0, made.stderr

    download = await session.download_artifacts(tmp_path / "out",
                                                caps=Caps(max_file_bytes=100))

    assert sorted(download.files) == ["a", "d/c"]
    assert [(item.key, "cap" in item.reason) for item in download.skipped] == [("big", True)]
    assert download.bytes == 20
    assert host_files(tmp_path / "out") == {"a": b"1234567890", "d/c": b"0123456789"}


async def test_download_skips_what_would_pass_the_total_cap(
    session: AsyncSessionHandle, tmp_path: Path
) -> None:
    made = await session.shell("cd /artifacts && for n in 1 2 3; do printf 0123456789 > $n; done")
    assert made.exit_code == 0, made.stderr

    download = await session.download_artifacts(tmp_path / "out", caps=Caps(max_bytes=25))

    assert len(download.files) == 2
    assert len(download.skipped) == 1
    assert "cap of 25 bytes" in download.skipped[0].reason
    assert download.bytes == 20
    assert sorted(host_files(tmp_path / "out")) == sorted(download.files)


async def test_download_skips_files_past_the_count_cap(
    session: AsyncSessionHandle, tmp_path: Path
) -> None:
    made = await session.shell("cd /artifacts && for n in 1 2 3; do echo $n > $n; done")
    assert made.exit_code == 0, made.stderr

    download = await session.download_artifacts(tmp_path / "out", caps=Caps(max_files=2))

    assert len(download.files) == 2
    assert [item.reason for item in download.skipped] == ["over the cap of 2 files"]
    assert sorted(host_files(tmp_path / "out")) == sorted(download.files)


async def test_a_listing_is_bounded(
    session: AsyncSessionHandle, caplog: pytest.LogCaptureFixture
) -> None:
    made = await session.shell("cd /artifacts && python3 -c '"
                               "[open(str(n), \"w\").close() for n in range(100005)]'",
                               timeout=300)
    assert made.exit_code == 0, made.stderr

    with caplog.at_level(logging.WARNING, logger="sandbox_sessions"):
        listed = await session.list_artifacts()

    assert len(listed) == 100_000
    assert "only the first 100000" in caplog.text


# --- names that are not UTF-8 ----------------------------------------------------------------


async def test_names_that_are_not_utf8_are_skipped_and_reported(
    session: AsyncSessionHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made = await session.shell(r"cd /artifacts && echo ok > good && touch $'\xff'"
                               r" && mkdir $'d\xfe' && echo in > $'d\xfe/inner'")
    assert made.exit_code == 0, made.stderr

    with caplog.at_level(logging.WARNING, logger="sandbox_sessions"):
        listed = await session.list_artifacts()
    download = await session.download_artifacts(tmp_path / "out")

    assert [artifact.key for artifact in listed] == ["good"]
    warned = caplog.text
    assert "\\xff" in warned
    assert "\\xfe" in warned
    assert "not valid UTF-8" in warned
    assert download.files == ["good"]
    skipped = {item.key: item.reason for item in download.skipped}
    assert skipped == {"\\xff": "name is not valid UTF-8", "d\\xfe": "name is not valid UTF-8",
                       "d\\xfe/inner": "name is not valid UTF-8"}
    download.model_dump_json()  # what it reports can be serialized
    assert host_files(tmp_path / "out") == {"good": b"ok\n"}


# --- the destination -------------------------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A host folder no one may create files in: immutable as root, mode 0555 otherwise."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


async def test_a_destination_that_is_a_file(session: AsyncSessionHandle, tmp_path: Path) -> None:
    await session.put_file("/artifacts/a", "a")
    target = tmp_path / "file"
    target.write_text("mine")

    with pytest.raises(InvalidArgument, match="exists and is not a folder"):
        await session.download_artifacts(target)
    with pytest.raises(InvalidArgument, match="cannot be made"):
        await session.download_artifacts(target / "below")

    assert target.read_text() == "mine"


async def test_a_destination_that_cannot_be_made_or_written(
    session: AsyncSessionHandle, unwritable: Path
) -> None:
    await session.put_file("/artifacts/a", "a")

    with pytest.raises(InvalidArgument, match="cannot be made"):
        await session.download_artifacts(unwritable / "dest")
    with pytest.raises(InvalidArgument, match="not writable"):
        await session.download_artifacts(unwritable)

    assert await anyio.Path(unwritable).exists()
    assert [path async for path in anyio.Path(unwritable).iterdir()] == []


def host_files(root: Path) -> dict[str, bytes]:
    """Every regular file below `root`, by relative path; a link or special file fails."""
    files: dict[str, bytes] = {}
    if not root.exists():
        return files
    for path in root.rglob("*"):
        assert not path.is_symlink(), f"a link was written: {path}"
        assert path.is_file() or path.is_dir(), f"a special file was written: {path}"
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files

"""Bad input and hostile conditions, on a real engine and real SQLite files.

Each case checks three things: the error is one of ours (its class, its `code` and the builtin
it also is), it says what went wrong, and nothing is lost: the session still answers afterwards
wherever it can.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sandbox_support import assert_still_works, container_of, docker_cli, killed_mid_command

from sandbox_sessions import (
    DEFAULT_MAX_OUTPUT,
    AsyncSandboxClient,
    AsyncSessionHandle,
    ContainerGone,
    FileDecodeError,
    FileTooLarge,
    InvalidArgument,
    SandboxClient,
    SandboxFileNotFound,
    SandboxSessionsError,
    SandboxUnavailable,
    SessionEnded,
    SessionNotFound,
)

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

UNREACHABLE = "unix:///nonexistent/docker.sock"
# Three sleepers in one process group: two children of the shell, a grandchild under a
# second shell, and one orphaned at once (re-parented to the container's init).
SPAWN = "bash -c 'sleep 301 & wait' & (sleep 302 &); sleep 300 & sleep 300"
SLEEPER = re.compile(r"\bsleep 30[0-2]\b")


@pytest.fixture
def collect_leaked_sockets() -> Iterator[None]:
    """Collect, inside the test, the sockets docker-py leaks on each failed connect.

    docker-py's `UnixHTTPConnection.connect` drops its socket unclosed when `connect()` fails;
    the socket lives on in the traceback that our error keeps as `__cause__`, and its
    ResourceWarning would otherwise surface in whichever later test the collector runs.
    """
    yield
    gc.collect()


LEAKED_SOCKET = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("bad-input", image=image).create_session() as handle:
        yield handle


async def sleepers(session: AsyncSessionHandle) -> list[str]:
    """The lines of `ps` naming one of SPAWN's sleepers (zombies show as `[sleep]`)."""
    listing = await session.shell("ps -eo pid,cmd")
    assert listing.exit_code == 0, listing.stderr
    return [line for line in listing.stdout.splitlines() if SLEEPER.search(line)]


async def sleepers_after_settling(session: AsyncSessionHandle) -> list[str]:
    """Sleepers still listed once a killed group had a generous 20 s to be reaped."""
    left = await sleepers(session)
    with anyio.move_on_after(20):
        while left:
            await anyio.sleep(0.2)
            left = await sleepers(session)
    return left


def host_tree(root: Path) -> dict[str, bytes | str]:
    """Every entry below `root` by relative path: a file's bytes, else `dir`, `link`..."""
    tree: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[name] = "link"
        elif path.is_dir():
            tree[name] = "dir"
        else:
            tree[name] = path.read_bytes() if path.is_file() else "other"
    return tree


# --- sessions that do not exist or have ended ----------------------------------------------


async def test_unknown_session_id(client: AsyncSandboxClient) -> None:
    handle = client.session("ses_000000000000000000000000")

    for call in (handle.get_info, lambda: handle.shell("true"), lambda: handle.get_file("x"),
                 handle.list_artifacts, handle.end):
        with pytest.raises(SessionNotFound) as caught:
            await call()
        assert isinstance(caught.value, LookupError)
        assert caught.value.code == "session_not_found"
        assert caught.value.retryable is False
        assert caught.value.session_id == handle.id
        assert handle.id in str(caught.value)
    assert await client.list_sessions(include_ended=True) == []


def test_unknown_session_id_through_the_sync_client(sync_client: SandboxClient) -> None:
    with pytest.raises(SessionNotFound) as caught:
        sync_client.session("ses_nope").shell("true")

    assert isinstance(caught.value, LookupError)
    assert caught.value.code == "session_not_found"


async def test_ended_session(client: AsyncSandboxClient, image: str) -> None:
    session = await client.agent("bad-input", image=image).create_session()
    await session.put_file("keep.txt", "kept")
    ended = await session.end()
    assert ended.status == "ended"

    for call in (lambda: session.shell("true"), lambda: session.get_file("keep.txt"),
                 session.list_artifacts, lambda: session.put_file("x", "y")):
        with pytest.raises(SessionEnded) as caught:
            await call()
        assert isinstance(caught.value, RuntimeError)
        assert caught.value.code == "session_ended"
        assert caught.value.session_id == session.id
    # Ending again is a no-op, and the record is still there to read.
    assert (await session.end()).status == "ended"
    assert (await session.get_info()).status == "ended"


async def test_ended_session_from_a_new_client(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    session = await client.agent("bad-input", image=image).create_session()
    await session.end()

    async with AsyncSandboxClient(store=store_path) as other:
        with pytest.raises(SessionEnded):
            await other.session(session.id).shell("true")


# --- files, folders and artifacts ----------------------------------------------------------


async def test_missing_file(session: AsyncSessionHandle) -> None:
    for call in (lambda: session.get_file("nope.txt"),
                 lambda: session.get_file_bytes("/no/such/dir/f")):
        with pytest.raises(SandboxFileNotFound) as caught:
            await call()
        assert isinstance(caught.value, FileNotFoundError)
        assert caught.value.code == "file_not_found"
        assert "no such file" in str(caught.value)
    assert caught.value.path == "/no/such/dir/f"
    await assert_still_works(session)


async def test_reading_a_folder(session: AsyncSessionHandle) -> None:
    with pytest.raises(SandboxFileNotFound, match="is a folder") as caught:
        await session.get_file("/workspace")

    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.code == "file_not_found"
    await assert_still_works(session)


async def test_missing_working_folder(session: AsyncSessionHandle) -> None:
    with pytest.raises(SandboxFileNotFound, match="no such working folder") as caught:
        await session.shell("touch made-here", cwd="/no/such/folder")

    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.code == "file_not_found"
    assert "/no/such/folder" in str(caught.value)
    await assert_still_works(session)


async def test_missing_artifact(session: AsyncSessionHandle) -> None:
    await session.put_file("/artifacts/real.txt", "real")

    with pytest.raises(SandboxFileNotFound, match="no such artifact") as caught:
        await session.get_artifact("missing.txt")

    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.code == "file_not_found"
    assert await session.get_artifact("real.txt") == "real"


@pytest.mark.parametrize("key", ["../x", "../../etc/passwd", "/etc/passwd", "a//b", ".", ""])
async def test_invalid_artifact_key(session: AsyncSessionHandle, key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await session.get_artifact(key)
    with pytest.raises(InvalidArgument):
        await session.get_artifact_bytes(key)

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_argument"
    await assert_still_works(session)


async def test_non_utf8_file(session: AsyncSessionHandle) -> None:
    data = b"ok \xff\xfe\x80 \x00 end"
    await session.put_file("binary.dat", data)
    await session.put_file("/artifacts/binary.dat", data)

    with pytest.raises(FileDecodeError, match="get_file_bytes") as caught:
        await session.get_file("binary.dat")
    with pytest.raises(FileDecodeError):
        await session.get_artifact("binary.dat")

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "file_not_text"
    assert await session.get_file_bytes("binary.dat") == data
    assert await session.get_artifact_bytes("binary.dat") == data
    assert await session.get_file("binary.dat", encoding="latin-1") == data.decode("latin-1")


async def test_unknown_encoding(session: AsyncSessionHandle) -> None:
    await session.put_file("t.txt", "text")

    with pytest.raises(InvalidArgument, match="encoding"):
        await session.get_file("t.txt", encoding="no-such-codec")
    assert await session.get_file("t.txt") == "text"


async def test_file_larger_than_max_bytes(session: AsyncSessionHandle) -> None:
    await session.put_file("ten.txt", "0123456789")

    with pytest.raises(FileTooLarge) as caught:
        await session.get_file("ten.txt", max_bytes=9)
    with pytest.raises(FileTooLarge):
        await session.get_file_bytes("ten.txt", max_bytes=0)

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "file_too_large"
    assert "10 bytes" in str(caught.value)
    assert await session.get_file("ten.txt", max_bytes=10) == "0123456789"


async def test_hostile_artifacts_folder(session: AsyncSessionHandle, tmp_path: Path) -> None:
    planted = await session.shell(
        "set -e; cd /artifacts; mkdir -p a/nested;"
        " echo evil > ..evil; echo b > a/..b; echo c > a/nested/c.txt;"
        " ln -s /etc/passwd etc-pw-link; ln -s /etc a/etc-dir-link;"
        " ln -s ../../../etc/passwd a/nested/relative-link; mkfifo pipe"
    )
    assert planted.exit_code == 0, planted.stderr
    parent = tmp_path / "out"
    parent.mkdir()
    destination = parent / "dest"

    with anyio.fail_after(120):  # a generous bound: reading the FIFO would block for ever
        download = await session.download_artifacts(destination)

    assert sorted(download.files) == ["..evil", "a/..b", "a/nested/c.txt"]
    assert download.bytes == len("evil\nb\nc\n")
    assert Path(download.destination) == destination.resolve()
    skipped = {item.key: item.reason for item in download.skipped}
    assert set(skipped) == {"etc-pw-link", "a/etc-dir-link", "a/nested/relative-link", "pipe"}
    assert all("link" in skipped[key] for key in skipped if key != "pipe")
    # Exactly these were written, nothing beside the destination, and no link anywhere.
    assert host_tree(parent) == {
        "dest": "dir", "dest/..evil": b"evil\n", "dest/a": "dir", "dest/a/..b": b"b\n",
        "dest/a/nested": "dir", "dest/a/nested/c.txt": b"c\n",
    }
    assert not [name for name in host_tree(tmp_path) if "passwd" in name]

    listed = [artifact.key for artifact in await session.list_artifacts()]
    assert listed == ["..evil", "a/..b", "a/nested/c.txt"]


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"cpus": -1}, {"cpus": 0}, {"pids": 0}, {"memory": 5}, {"nonsense": True}],
    ids=["cpus-negative", "cpus-zero", "pids-zero", "memory-not-text", "unknown-option"],
)
async def test_bad_agent_options(client: AsyncSandboxClient, options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="invalid sandbox options") as caught:
        client.agent("bad", **options)  # type: ignore[arg-type]

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_argument"
    assert await client.list_sessions(include_ended=True) == []


@pytest.mark.parametrize(
    "timeout", [-1, -0.5, math.nan, math.inf, -math.inf, 10**400, True, "5", [1]],
    ids=["-1", "-0.5", "nan", "inf", "-inf", "huge-int", "bool", "str", "list"])
async def test_bad_shell_timeout(session: AsyncSessionHandle, timeout: float) -> None:
    with pytest.raises(InvalidArgument, match="timeout must be a") as caught:
        await session.shell("touch ran", timeout=timeout)

    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_argument"
    check = await session.shell("test -e ran")
    assert check.exit_code == 1  # refused before it ran


async def test_negative_max_output(session: AsyncSessionHandle) -> None:
    with pytest.raises(InvalidArgument, match="max_output"):
        await session.shell("echo hi", max_output=-1)
    await assert_still_works(session)


# --- commands that run too long, or are cancelled ------------------------------------------


async def test_timeout_kills_the_whole_process_group(session: AsyncSessionHandle) -> None:
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(len(await sleepers(session)))
            await anyio.sleep(0.1)

    with anyio.fail_after(120):  # far more than the 5 s timeout plus a kill: never 300 s
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            result = await session.shell(f"echo begun; {SPAWN}", timeout=5)
            group.cancel_scope.cancel()

    assert max(seen) >= 4, "the sleepers were never seen running"
    assert result.timed_out is True
    assert result.exit_code == 124
    assert result.ok is False
    assert result.stdout == "begun\n"
    assert await sleepers_after_settling(session) == []
    await assert_still_works(session)


async def test_cancelling_a_shell_kills_its_process_group(session: AsyncSessionHandle) -> None:
    started = anyio.Event()

    def on_stdout(_text: str) -> None:
        started.set()

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            async def run() -> None:
                with anyio.move_on_after(300) as scope:  # cancelled below, long before
                    await session.shell(f"echo begun; {SPAWN}", on_stdout=on_stdout)
                outcome.append(scope.cancelled_caught)

            outcome: list[bool] = []
            group.start_soon(run)
            await started.wait()
            running: list[str] = []
            while len(running) < 4:
                running = await sleepers(session)
            group.cancel_scope.cancel()

    assert outcome == []  # cancelled from outside: `run` never got past its shell call
    assert await sleepers_after_settling(session) == []
    await assert_still_works(session)


async def test_move_on_after_a_shell_kills_its_process_group(
    session: AsyncSessionHandle,
) -> None:
    with anyio.move_on_after(3) as scope:
        await session.shell(SPAWN)

    assert scope.cancelled_caught
    assert await sleepers_after_settling(session) == []
    await assert_still_works(session)


# --- huge output ---------------------------------------------------------------------------

FIFTY_MB = "head -c 52428800 /dev/zero | tr '\\0' a; echo done >&2"


async def test_fifty_megabytes_of_output_are_capped(session: AsyncSessionHandle) -> None:
    tracemalloc.start()
    try:
        result = await session.shell(FIFTY_MB)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.exit_code == 0
    assert result.truncated is True
    assert len(result.stdout) == DEFAULT_MAX_OUTPUT
    assert set(result.stdout) == {"a"}
    assert result.stderr == "done\n"
    # What this process allocated while 50 MiB went by. The kept 1 MiB exists twice at the
    # end (the decoded parts, and their join into the result), so about 2 MiB is expected (2.0
    # MiB measured); 8 MiB leaves room for allocator and interpreter noise, and is still six
    # times less than holding the output would take.
    assert peak < 8 * 1024 * 1024, f"traced peak {peak} bytes"


async def test_custom_max_output(session: AsyncSessionHandle) -> None:
    received: list[str] = []

    tracemalloc.start()
    try:
        result = await session.shell(FIFTY_MB, max_output=1000, on_stdout=received.append)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Memory follows the cap, not the output: about the 256 KiB of one socket read (0.3 MiB
    # measured), so 1 MiB is generous.
    assert peak < 1024 * 1024, f"traced peak {peak} bytes"
    assert result.exit_code == 0
    assert result.truncated is True
    assert result.stdout == "a" * 1000
    assert "".join(received) == result.stdout
    assert result.stderr == "done\n"


async def test_output_under_the_cap_is_not_truncated(session: AsyncSessionHandle) -> None:
    result = await session.shell("printf %s 0123456789", max_output=10)

    assert (result.stdout, result.truncated) == ("0123456789", False)


# --- containers that die or vanish ---------------------------------------------------------


async def test_container_killed_mid_command(client: AsyncSandboxClient, image: str) -> None:
    session = await client.agent("bad-input", image=image).create_session()
    container = await container_of(session)
    died = await killed_mid_command(session)
    assert died.code == "container_died"
    assert isinstance(died, RuntimeError)
    assert isinstance(died, ContainerGone)
    assert "137" in died.reason
    assert "killed" in died.reason
    assert died.reason in str(died)

    # Only that call failed: the next one starts the container again (tests/test_resilience.py
    # has the details).
    await assert_still_works(session)

    # Removed entirely, it is gone; the session can still be ended.
    await docker_cli("rm", "-f", container)
    with pytest.raises(ContainerGone) as gone:
        await session.shell("true")
    assert gone.value.code == "container_gone"
    assert (await session.end()).status == "ended"
    with pytest.raises(SessionEnded):
        await session.shell("true")


async def test_container_removed_from_outside(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    session = await client.agent("bad-input", image=image).create_session()
    await assert_still_works(session)
    container = await container_of(session)

    await docker_cli("rm", "-f", container)

    for call in (lambda: session.shell("true"), lambda: session.get_file("x"),
                 lambda: session.put_file("x", "y")):
        with pytest.raises(ContainerGone) as caught:
            await call()
        assert type(caught.value) is ContainerGone
        assert caught.value.code == "container_gone"
        assert isinstance(caught.value, RuntimeError)
    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as other:
        with pytest.raises(ContainerGone) as fresh:
            await other.session(session.id).list_artifacts()
        assert fresh.value.code == "container_gone"
    assert (await session.get_info()).status == "idle"
    assert (await session.end()).status == "ended"


# --- an engine that does not answer --------------------------------------------------------


@LEAKED_SOCKET
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_unreachable_engine(
    store_path: Path, image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sandbox_sessions")
    async with AsyncSandboxClient(store=store_path, docker_url=UNREACHABLE) as client:
        assert any(record.getMessage().startswith("orphan reaping skipped: the Docker engine")
                   for record in caplog.records)
        with pytest.raises(SandboxUnavailable) as caught:
            await client.agent("x", image=image).create_session()
        assert await client.list_sessions(include_ended=True) == []

    error = caught.value
    assert isinstance(error, ConnectionError)
    assert isinstance(error, SandboxSessionsError)
    assert error.code == "sandbox_unavailable"
    assert error.retryable is True
    assert "does not answer" in str(error)


@LEAKED_SOCKET
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_existing_session_with_an_unreachable_engine(
    session: AsyncSessionHandle, store_path: Path
) -> None:
    await session.put_file("kept.txt", "kept")

    async with AsyncSandboxClient(store=store_path, docker_url=UNREACHABLE) as cut_off:
        handle = cut_off.session(session.id)
        for call in (lambda: handle.shell("true"), lambda: handle.get_file("kept.txt"),
                     handle.end):
            with pytest.raises(SandboxUnavailable) as caught:
                await call()
            assert caught.value.retryable is True
            assert isinstance(caught.value, ConnectionError)
        # The store still answers, and a failed end() did not mark the session ended.
        assert (await handle.get_info()).status == "idle"

    assert await session.get_file("kept.txt") == "kept"
    await assert_still_works(session)

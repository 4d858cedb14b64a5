"""The `docker exec` fallback, in an image without python3, where the helper cannot run.

The image is built once for the module from the base image, offline, and removed at the end.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sandbox_support import restarts

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    FileTooLarge,
    SandboxError,
    SandboxFileNotFound,
)
from sandbox_sessions.sandbox._exec_runtime import EXEC_GRACE
from sandbox_sessions.sandbox._images import DEFAULT_BASE_IMAGE
from sandbox_sessions.sandbox.docker import DockerSandbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NO_PYTHON_IMAGE = "sandbox-sessions/test-nopython:latest"
DOCKERFILE = f"""\
FROM {DEFAULT_BASE_IMAGE}
RUN rm -f /usr/bin/python3* /usr/local/bin/python3* \\
    && ! command -v python3 \\
    && mkdir -p /workspace /artifacts \\
    && chown 1000:1000 /workspace /artifacts
USER 1000:1000
WORKDIR /workspace
CMD ["sleep", "infinity"]
"""
SPAWN = "bash -c 'sleep 301 & wait' & sleep 300 & sleep 300"
SLEEPER = re.compile(r"\bsleep 30[01]\b")


@pytest.fixture(scope="module")
def no_python_image() -> Iterator[str]:
    """The image, tagged `NO_PYTHON_IMAGE` and also with a tag of this run's own.

    The tests use the run's tag: a test run going on at the same time on the same engine
    removes `NO_PYTHON_IMAGE` at its end, which must not pull the image from under this one.
    Removing a tag removes the image only with its last tag.
    """
    own_tag = f"{NO_PYTHON_IMAGE.rpartition(':')[0]}:run-{secrets.token_hex(6)}"
    subprocess.run(
        ["docker", "build", "--network", "none", "--tag", NO_PYTHON_IMAGE, "--tag", own_tag,
         "-"],
        input=DOCKERFILE.encode(), check=True, capture_output=True, timeout=600,
    )
    try:
        yield own_tag
    finally:
        subprocess.run(["docker", "rmi", own_tag], check=True, capture_output=True, timeout=120)
        # Already gone when a concurrent run removed it first: not an error.
        subprocess.run(["docker", "rmi", NO_PYTHON_IMAGE], check=False, capture_output=True,
                       timeout=120)


@pytest.fixture
async def session(
    client: AsyncSandboxClient, no_python_image: str
) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("no-python", image=no_python_image).create_session() as handle:
        yield handle


async def test_the_image_really_lacks_python(session: AsyncSessionHandle) -> None:
    result = await session.shell("command -v python3 || echo none; id -u")

    assert result.stdout == "none\n1000\n"


async def test_shell_output_and_exit_code(session: AsyncSessionHandle) -> None:
    streamed: list[str] = []

    result = await session.shell(
        "echo out; echo err >&2; pwd; echo $GREETING; exit 3",
        env={"GREETING": "hello"}, on_stdout=streamed.append,
    )

    assert result.exit_code == 3
    assert result.stdout == "out\n/workspace\nhello\n"
    assert result.stderr == "err\n"
    assert "".join(streamed) == result.stdout
    assert result.timed_out is False
    assert result.ok is False


async def test_shell_cwd_and_output_cap(session: AsyncSessionHandle) -> None:
    result = await session.shell("pwd; head -c 5000 /dev/zero | tr '\\0' b", cwd="/tmp",
                                 max_output=100)

    assert result.stdout == "/tmp\n" + "b" * 95
    assert result.truncated is True


async def test_shell_timeout_kills_the_command(session: AsyncSessionHandle) -> None:
    with anyio.fail_after(120):  # far more than the 3 s timeout: never the 300 s sleep
        result = await session.shell(f"echo begun; {SPAWN}", timeout=3)

    assert result.timed_out is True
    assert result.exit_code == 124
    assert result.stdout == "begun\n"
    left = ["pending"]
    with anyio.move_on_after(20):  # a generous bound for the killed group to be reaped
        while left:
            listing = await session.shell("ps -eo pid,cmd")
            left = [line for line in listing.stdout.splitlines() if SLEEPER.search(line)]
    assert left == []


async def test_file_round_trip(session: AsyncSessionHandle) -> None:
    data = bytes(range(256)) * 64

    await session.put_file("deep/er/blob.bin", data)
    await session.put_file("/workspace/note.txt", "héllo\n")
    await session.put_file("run.sh", "#!/bin/sh\necho ran\n", mode=0o755)

    assert await session.get_file_bytes("deep/er/blob.bin") == data
    assert await session.get_file("note.txt") == "héllo\n"
    assert (await session.shell("./run.sh")).stdout == "ran\n"
    owner = await session.shell("stat -c %u deep/er/blob.bin")
    assert owner.stdout == "1000\n"


async def test_file_errors(session: AsyncSessionHandle) -> None:
    await session.put_file("ten.txt", "0123456789")

    with pytest.raises(SandboxFileNotFound):
        await session.get_file("missing.txt")
    with pytest.raises(SandboxFileNotFound, match="folder"):
        await session.get_file("/workspace")
    with pytest.raises(FileTooLarge):
        await session.get_file("ten.txt", max_bytes=5)
    assert await session.get_file("ten.txt", max_bytes=10) == "0123456789"


async def test_list_artifacts(session: AsyncSessionHandle) -> None:
    assert await session.list_artifacts() == []

    made = await session.shell(
        "mkdir -p /artifacts/reports && printf 12345 > /artifacts/reports/a.txt"
        " && printf x > /artifacts/top.txt && ln -s /etc/passwd /artifacts/link"
    )
    assert made.exit_code == 0, made.stderr

    listed = [(artifact.key, artifact.size) for artifact in await session.list_artifacts()]
    assert listed == [("reports/a.txt", 5), ("top.txt", 1)]
    assert await session.get_artifact("reports/a.txt") == "12345"


async def test_download_artifacts_skips_links(
    session: AsyncSessionHandle, tmp_path: Path
) -> None:
    made = await session.shell(
        "set -e; cd /artifacts; mkdir -p a/b; echo one > a/b/one.txt; echo two > ..two;"
        " ln -s /etc/passwd pw-link; ln -s /etc a/dir-link"
    )
    assert made.exit_code == 0, made.stderr
    destination = tmp_path / "out" / "dest"

    download = await session.download_artifacts(destination)

    assert sorted(download.files) == ["..two", "a/b/one.txt"]
    assert {item.key for item in download.skipped} == {"pw-link", "a/dir-link"}
    assert all("link" in item.reason for item in download.skipped)
    assert download.bytes == len("one\ntwo\n")
    assert host_files(tmp_path / "out") == {
        "dest/..two": b"two\n", "dest/a/b/one.txt": b"one\n",
    }


def host_files(root: Path) -> dict[str, bytes]:
    """Every regular file below `root`, by relative path; a link anywhere fails the test."""
    files: dict[str, bytes] = {}
    for path in root.rglob("*"):
        assert not path.is_symlink(), f"a link was written: {path}"
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


async def test_an_image_derived_from_ours_without_python_still_makes_sessions(
    client: AsyncSandboxClient, image: str
) -> None:
    # It inherits the label that marks our image, so the helper is first tried as the main
    # process; that dies at once (no python3), and the session is made again without it.
    derived = f"sandbox-sessions/test-derived-nopython:run-{secrets.token_hex(6)}"
    dockerfile = f"FROM {image}\nUSER root\nRUN rm -f /usr/bin/python3*\nUSER 1000:1000\n"
    await anyio.run_process(["docker", "build", "--network", "none", "--tag", derived, "-"],
                            input=dockerfile.encode())
    try:
        async with await client.agent("derived", image=derived).create_session() as session:
            result = await session.shell("command -v python3 || echo none; echo ok > f.txt")
            text = await session.get_file("f.txt")
            info = await session.get_info()
        assert result.stdout == "none\n"
        assert text == "ok\n"
        assert info.container_id is not None
    finally:
        await anyio.run_process(["docker", "rmi", "-f", derived], check=False)


async def test_a_command_holding_its_output_open_is_bounded_on_the_host(
    session: AsyncSessionHandle,
) -> None:
    # The command stops `timeout(1)` itself (its parent), then runs on for 60 s.
    with anyio.fail_after(1 + EXEC_GRACE + 10):
        result = await session.shell("kill -STOP $PPID; echo started; sleep 60", timeout=1)

    assert (result.timed_out, result.exit_code, result.stdout) == (True, 124, "started\n")


async def test_a_killed_container_restarts_with_its_files(session: AsyncSessionHandle) -> None:
    await session.put_file("kept.txt", "kept")
    container = (await session.get_info()).container_id
    assert container is not None
    await anyio.run_process(["docker", "kill", container])

    assert await session.get_file("kept.txt") == "kept"  # no call was running: none fails
    assert (await session.shell("echo back")).stdout == "back\n"
    assert await restarts(session) == ["exited with code 137 (killed)"]


async def test_loopback_listeners_and_connections_need_the_helper(
    client: AsyncSandboxClient, session: AsyncSessionHandle
) -> None:
    """The model proxy and the harnesses tunnel through the helper: without python3 there
    is none, and they say so rather than hang."""
    sandbox = await client.service.sandbox(session.id)
    assert isinstance(sandbox, DockerSandbox)
    with pytest.raises(SandboxError, match="a loopback listener needs the sandbox helper"):
        async with sandbox.listen(0):
            pytest.fail("listening without the helper")
    with pytest.raises(SandboxError, match="a loopback connection needs the sandbox helper"):
        async with sandbox.connect(8080):
            pytest.fail("connected without the helper")

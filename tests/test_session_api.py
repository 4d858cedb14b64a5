"""Round trips of the public session API, async and sync, on real containers and SQLite files."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Unpack

import anyio
import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    SandboxClient,
    SandboxKwargs,
    SessionEnded,
    SessionHandle,
    SessionNotFound,
    ShellResult,
)
from sandbox_sessions.sandbox._engine import Engine

pytestmark = pytest.mark.docker

SESSION_ID = re.compile(r"ses_[0-9a-f]{24}")
ARTIFACTS: dict[str, bytes] = {
    "report.txt": b"tests: 12 passed\n",
    "dist/app.whl": b"PK\x03\x04" + bytes(range(256)) * 8,
    "a/b/c.log": b"deep\n",
    "README": b"",
}
ENGINE = Engine()


@asynccontextmanager
async def opened(
    client: AsyncSandboxClient, image_ref: str, **options: Unpack[SandboxKwargs]
) -> AsyncIterator[AsyncSessionHandle]:
    """A new session that is ended however the test leaves it."""
    settings: SandboxKwargs = {**options, "image": image_ref}
    session = await client.agent("build", **settings).create_session(title="test")
    async with session:
        yield session


@contextmanager
def opened_sync(client: SandboxClient, image: str) -> Iterator[SessionHandle]:
    with client.agent("build", image=image).create_session(title="test") as session:
        yield session


def container_of(info_container_id: str | None) -> dict[str, Any]:
    assert info_container_id is not None
    state = ENGINE.inspect(info_container_id)
    assert state is not None, "the container is gone"
    return state


def barrier_command(n: int, count: int, folder: str) -> str:
    """Prints `n` once `count` commands have reached the barrier; `alone` after ~20 s without.

    Commands run one at a time can never all be at the barrier, so they would say `alone`.
    """
    return (
        f"mkdir -p {folder} && touch {folder}/{n} && "
        f"for i in $(seq 400); do "
        f"[ $(ls {folder} | wc -l) -ge {count} ] && echo {n} && exit 0; sleep 0.05; "
        f"done; echo alone; exit 1"
    )


# --- create, info, options ------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_session_records_options_and_starts_a_hardened_container(
    client: AsyncSandboxClient, image: str
) -> None:
    agent = client.agent("build", image=image, env={"GREETING": "hello"}, memory="256m",
                         cpus=0.5, pids=128)
    before = datetime.now(UTC)
    async with await agent.create_session(title="My Session") as session:
        after = datetime.now(UTC)
        info = await session.get_info()

        assert SESSION_ID.fullmatch(session.id)
        assert info.id == session.id
        assert (info.title, info.agent, info.status) == ("My Session", "build", "idle")
        assert info.sandbox == agent.sandbox
        assert agent.name == "build"
        assert info.sandbox.env == {"GREETING": "hello"}
        assert info.time_created.tzinfo is not None
        assert before - timedelta(seconds=1) <= info.time_created <= info.time_updated
        assert info.time_updated <= after + timedelta(seconds=1)

        container = container_of(info.container_id)
        host = container["HostConfig"]
        assert container["Id"] == info.container_id
        assert container["State"]["Running"] is True
        assert host["Memory"] == 256 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 128
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Init"] is False  # our helper is the init: PID 1 (docs/decisions.md)
        assert host["NetworkMode"] == "none"
        assert container["Config"]["Labels"]["sandbox-sessions.session"] == session.id
        assert "GREETING=hello" in container["Config"]["Env"]


@pytest.mark.anyio
async def test_a_session_without_title_gets_one(client: AsyncSandboxClient, image: str) -> None:
    async with await client.agent("plan", image=image).create_session() as session:
        info = await session.get_info()

    assert info.title.startswith("Session ")
    assert info.agent == "plan"


@pytest.mark.anyio
async def test_list_sessions_newest_first_and_ended_only_on_request(
    client: AsyncSandboxClient, image: str
) -> None:
    first = await client.agent("build", image=image).create_session(title="one")
    async with opened(client, image) as second:
        await first.end()
        live = [info.id for info in await client.list_sessions()]
        every = [info.id for info in await client.list_sessions(include_ended=True)]

    assert live == [second.id]
    assert every == [second.id, first.id]


# --- shell ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shell_returns_stdout_stderr_and_exit_code(
    client: AsyncSandboxClient, image: str
) -> None:
    async with opened(client, image) as session:
        failed = await session.shell("echo out; echo err >&2; exit 3")
        fine = await session.shell("printf 'no newline'", timeout=30)

    assert (failed.stdout, failed.stderr, failed.exit_code) == ("out\n", "err\n", 3)
    assert not failed.ok
    assert (failed.timed_out, failed.truncated) == (False, False)
    assert fine.stdout == "no newline"
    assert fine.ok
    assert fine.timed_out is False
    assert fine.duration >= 0


@pytest.mark.anyio
async def test_shell_cwd_and_env(client: AsyncSandboxClient, image: str) -> None:
    async with opened(client, image, env={"FROM_AGENT": "a", "SHARED": "agent"}) as session:
        default = await session.shell("pwd")
        elsewhere = await session.shell("pwd", cwd="/tmp")
        env = await session.shell('echo "$FROM_AGENT $FROM_CALL $SHARED"',
                                  env={"FROM_CALL": "c", "SHARED": "call"})
        without = await session.shell('echo "[$FROM_CALL]"')

    assert default.stdout == "/workspace\n"
    assert elsewhere.stdout == "/tmp\n"
    assert env.stdout == "a c call\n"
    assert without.stdout == "[]\n"


@pytest.mark.anyio
async def test_shell_callbacks_receive_output_in_order(
    client: AsyncSandboxClient, image: str
) -> None:
    out: list[str] = []
    err: list[str] = []
    async with opened(client, image) as session:
        result = await session.shell(
            "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.02; done",
            on_stdout=out.append, on_stderr=err.append,
        )

    assert "".join(out) == result.stdout == "".join(f"out{i}\n" for i in range(1, 6))
    assert "".join(err) == result.stderr == "".join(f"err{i}\n" for i in range(1, 6))


@pytest.mark.anyio
async def test_shell_callbacks_are_live(client: AsyncSandboxClient, image: str) -> None:
    # The command waits for a file that is only written once its first line has reached the
    # callback: buffered output until the end would leave it waiting until its timeout.
    ready = anyio.Event()

    def on_stdout(text: str) -> None:
        if "ready" in text:
            ready.set()

    async with opened(client, image) as session:
        results: list[ShellResult] = []

        async def run() -> None:
            results.append(await session.shell(
                "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done",
                timeout=30, on_stdout=on_stdout,
            ))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run)
            await ready.wait()
            await session.put_file("/tmp/go", "")

    assert results[0].timed_out is False
    assert results[0].stdout == "ready\ndone\n"


@pytest.mark.anyio
async def test_concurrent_shell_calls_on_one_session_run_in_parallel(
    client: AsyncSandboxClient, image: str
) -> None:
    results: dict[int, ShellResult] = {}
    async with opened(client, image) as session:

        async def run(n: int) -> None:
            results[n] = await session.shell(barrier_command(n, 3, "/tmp/barrier"), timeout=60)

        async with anyio.create_task_group() as tasks:
            for n in range(3):
                tasks.start_soon(run, n)

    assert {n: (r.stdout, r.exit_code) for n, r in results.items()} == {
        n: (f"{n}\n", 0) for n in range(3)
    }


# --- hardening ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_container_is_hardened(client: AsyncSandboxClient, image: str) -> None:
    async with opened(client, image) as session:
        uid = await session.shell("id -u")
        status = await session.shell("cat /proc/self/status")
        interfaces = await session.shell("tail -n +3 /proc/net/dev | cut -d: -f1")

    assert uid.stdout == "1000\n"
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines() if ":" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert interfaces.stdout.split() == ["lo"]


@pytest.mark.anyio
async def test_network_option_gives_an_interface(client: AsyncSandboxClient, image: str) -> None:
    async with opened(client, image, network=True) as session:
        interfaces = await session.shell("tail -n +3 /proc/net/dev | cut -d: -f1")

    assert sorted(interfaces.stdout.split()) == ["eth0", "lo"]


# --- files ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_put_and_get_text_and_bytes(client: AsyncSandboxClient, image: str) -> None:
    blob = os.urandom(1024 * 1024)
    async with opened(client, image) as session:
        await session.put_file("notes/hello.txt", "héllo ✓\n")
        await session.put_file("/tmp/all.bin", bytes(range(256)))
        await session.put_file("/tmp/big.bin", blob)
        text = await session.get_file("/workspace/notes/hello.txt")
        seen_by_shell = await session.shell("cat notes/hello.txt; sha256sum /tmp/big.bin")
        small = await session.get_file_bytes("/tmp/all.bin")
        big = await session.get_file_bytes("/tmp/big.bin")
        relative = await session.get_file_bytes("notes/hello.txt")

    assert text == "héllo ✓\n"
    assert seen_by_shell.stdout.startswith("héllo ✓\n")
    assert hashlib.sha256(blob).hexdigest() in seen_by_shell.stdout
    assert small == bytes(range(256))
    assert big == blob
    assert relative == "héllo ✓\n".encode()


@pytest.mark.anyio
async def test_put_file_overwrites_and_sets_mode(client: AsyncSandboxClient, image: str) -> None:
    async with opened(client, image) as session:
        await session.put_file("run.sh", "#!/bin/sh\necho old\n", mode=0o755)
        await session.put_file("run.sh", "#!/bin/sh\necho new\n", mode=0o755)
        ran = await session.shell("./run.sh")
        mode = await session.shell("stat -c %a run.sh")

    assert ran.stdout == "new\n"
    assert mode.stdout == "755\n"


@pytest.mark.anyio
async def test_relative_paths_resolve_against_a_custom_workdir(
    client: AsyncSandboxClient, image: str
) -> None:
    async with opened(client, image, workdir="/home/sandbox/project") as session:
        await session.put_file("src/main.py", "print('hi')\n")
        where = await session.shell("pwd && python3 src/main.py")
        absolute = await session.get_file("/home/sandbox/project/src/main.py")

    assert where.stdout == "/home/sandbox/project\nhi\n"
    assert absolute == "print('hi')\n"


# --- artifacts ------------------------------------------------------------------------------


async def put_artifacts(session: AsyncSessionHandle) -> None:
    for key, data in ARTIFACTS.items():
        await session.put_file(f"/artifacts/{key}", data)


@pytest.mark.anyio
async def test_list_and_read_artifacts(client: AsyncSandboxClient, image: str) -> None:
    async with opened(client, image) as session:
        empty = await session.list_artifacts()
        await put_artifacts(session)
        listed = await session.list_artifacts()
        report = await session.get_artifact("report.txt")
        wheel = await session.get_artifact_bytes("dist/app.whl")

    assert empty == []
    assert [(a.key, a.size) for a in listed] == sorted(
        (key, len(data)) for key, data in ARTIFACTS.items()
    )
    assert report == ARTIFACTS["report.txt"].decode()
    assert wheel == ARTIFACTS["dist/app.whl"]


@pytest.mark.anyio
async def test_download_artifacts(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    calls: list[tuple[str, int, int]] = []
    destination = tmp_path / "out"
    async with opened(client, image) as session:
        await put_artifacts(session)
        download = await session.download_artifacts(
            destination, progress=lambda key, done, total: calls.append((key, done, total))
        )

    assert sorted(download.files) == sorted(ARTIFACTS)
    assert download.skipped == []
    assert download.bytes == sum(len(data) for data in ARTIFACTS.values())
    assert Path(download.destination) == destination.resolve()
    for key, data in ARTIFACTS.items():
        assert (destination / key).read_bytes() == data
    written = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert written == sorted(ARTIFACTS)
    assert [(done, total) for _, done, total in calls] == [
        (n, len(ARTIFACTS)) for n in range(1, len(ARTIFACTS) + 1)
    ]
    assert [key for key, _, _ in calls] == download.files


# --- ending ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_end_removes_the_container_and_later_calls_raise(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    session = await client.agent("build", image=image).create_session(title="to end")
    created = await session.get_info()

    ended = await session.end()

    assert ended.status == "ended"
    assert (await session.get_info()) == ended
    assert ended.title == "to end"
    assert ended.time_created == created.time_created
    assert ended.time_updated >= created.time_updated
    assert created.container_id is not None
    assert ENGINE.inspect(created.container_id) is None
    with pytest.raises(SessionEnded):
        await session.shell("true")
    with pytest.raises(SessionEnded):
        await session.put_file("/tmp/x", "x")
    with pytest.raises(SessionEnded):
        await session.put_file("relative.txt", "x")
    with pytest.raises(SessionEnded):
        await session.get_file("/etc/hostname")
    with pytest.raises(SessionEnded):
        await session.get_file_bytes("/etc/hostname")
    with pytest.raises(SessionEnded):
        await session.list_artifacts()
    with pytest.raises(SessionEnded):
        await session.get_artifact("report.txt")
    with pytest.raises(SessionEnded):
        await session.download_artifacts(tmp_path / "out")
    assert (await session.end()) == ended  # ending twice is a no-op


@pytest.mark.anyio
async def test_context_manager_ends_the_session_even_on_error(
    client: AsyncSandboxClient, image: str
) -> None:
    session = await client.agent("build", image=image).create_session()
    container_id = (await session.get_info()).container_id
    with pytest.raises(LookupError, match="boom"):
        async with session:
            raise LookupError("boom")

    assert (await session.get_info()).status == "ended"
    assert container_id is not None
    assert ENGINE.inspect(container_id) is None


@pytest.mark.anyio
async def test_a_handle_by_id_does_no_io_until_used(
    client: AsyncSandboxClient, image: str
) -> None:
    unknown = client.session("ses_000000000000000000000000")  # no I/O: no error yet
    assert unknown.id == "ses_000000000000000000000000"
    with pytest.raises(SessionNotFound):
        await unknown.get_info()
    with pytest.raises(SessionNotFound):
        await unknown.shell("true")

    async with opened(client, image) as session:
        await session.put_file("seen.txt", "by id")
        by_id = client.session(session.id)
        assert (await by_id.shell("cat seen.txt")).stdout == "by id"
        assert (await by_id.get_info()).id == session.id


@pytest.mark.anyio
async def test_resume_in_a_new_client_on_the_same_store(store_path: Path, image: str) -> None:
    async with AsyncSandboxClient(store=store_path) as first:
        session = await first.agent("build", image=image).create_session(title="lasting")
        await session.put_file("state.txt", "written by the first client\n")
        await session.shell("echo more >> state.txt")
        session_id = session.id
        container_id = (await session.get_info()).container_id
    assert container_id is not None
    assert container_of(container_id)["State"]["Running"] is True  # outlives its client

    async with AsyncSandboxClient(store=store_path) as second:
        assert [info.id for info in await second.list_sessions()] == [session_id]
        async with second.session(session_id) as resumed:
            seen = await resumed.shell("cat state.txt")
            info = await resumed.get_info()

    assert seen.stdout == "written by the first client\nmore\n"
    assert (info.title, info.status, info.container_id) == ("lasting", "idle", container_id)
    assert ENGINE.inspect(container_id) is None  # the second client's `async with` ended it


@pytest.mark.anyio
async def test_a_closed_client_refuses_calls(store_path: Path) -> None:
    async with AsyncSandboxClient(store=store_path) as client:
        pass
    with pytest.raises(ValueError, match="not open"):
        client.agent("build")


# --- trio -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_smoke(store_path: Path, image: str, anyio_backend: str) -> None:
    async with AsyncSandboxClient(store=store_path) as client:
        session = await client.agent("build", image=image).create_session(title="trio")
        result = await session.shell("echo trio; echo err >&2")
        await session.put_file("t.txt", "x")
        data = await session.get_file("t.txt")
        ended = await session.end()

    assert anyio_backend == "trio"
    assert (result.stdout, result.stderr, result.exit_code) == ("trio\n", "err\n", 0)
    assert data == "x"
    assert ended.status == "ended"


# --- the sync facade ------------------------------------------------------------------------


def test_sync_round_trip(sync_client: SandboxClient, image: str, tmp_path: Path) -> None:
    blob = os.urandom(1024 * 1024)
    out: list[str] = []
    err: list[str] = []
    agent = sync_client.agent("build", image=image, env={"GREETING": "hi"}, pids=64)
    with agent.create_session(title="sync") as session:
        info = session.get_info()
        result = session.shell('echo "$GREETING $CALL"; pwd; echo e >&2; exit 2', cwd="/tmp",
                               env={"CALL": "there"}, on_stdout=out.append,
                               on_stderr=err.append, timeout=30)
        session.put_file("dir/text.txt", "tëxt")
        session.put_file("/artifacts/dist/app.whl", blob)
        session.put_file("/artifacts/notes.md", b"# notes\n")
        text = session.get_file("/workspace/dir/text.txt")
        data = session.get_file_bytes("/artifacts/dist/app.whl")
        keys = [artifact.key for artifact in session.list_artifacts()]
        notes = session.get_artifact("notes.md")
        wheel = session.get_artifact_bytes("dist/app.whl")
        calls: list[tuple[str, int, int]] = []
        download = session.download_artifacts(
            tmp_path / "dl", progress=lambda *call: calls.append(call)
        )

    assert SESSION_ID.fullmatch(session.id)
    assert (info.title, info.status, info.sandbox.pids) == ("sync", "idle", 64)
    assert (result.stdout, result.stderr, result.exit_code) == ("hi there\n/tmp\n", "e\n", 2)
    assert "".join(out) == result.stdout
    assert "".join(err) == result.stderr
    assert text == "tëxt"
    assert data == wheel == blob
    assert keys == ["dist/app.whl", "notes.md"]
    assert notes == "# notes\n"
    assert sorted(download.files) == keys
    assert (tmp_path / "dl" / "dist" / "app.whl").read_bytes() == blob
    assert sorted(key for key, _, _ in calls) == keys
    assert calls[-1][1:] == (2, 2)
    assert session.get_info().status == "ended"  # the `with` block ended it
    assert info.container_id is not None
    assert ENGINE.inspect(info.container_id) is None


def test_sync_end_then_calls_raise(sync_client: SandboxClient, image: str) -> None:
    session = sync_client.agent("build", image=image).create_session()
    ended = session.end()

    assert ended.status == "ended"
    with pytest.raises(SessionEnded):
        session.shell("true")
    with pytest.raises(SessionEnded):
        session.get_file("/etc/hostname")
    assert session.end() == ended
    assert [info.id for info in sync_client.list_sessions(include_ended=True)] == [session.id]
    assert sync_client.list_sessions() == []


def test_sync_handle_by_id(sync_client: SandboxClient, image: str) -> None:
    unknown = sync_client.session("ses_ffffffffffffffffffffffff")
    with pytest.raises(SessionNotFound):
        unknown.get_info()

    with opened_sync(sync_client, image) as session:
        session.put_file("x.txt", "42")
        assert sync_client.session(session.id).shell("cat x.txt").stdout == "42"


def test_sync_resume_in_a_new_client(store_path: Path, image: str) -> None:
    with SandboxClient(store=store_path) as first:
        session = first.agent("build", image=image).create_session(title="sync resume")
        session.put_file("kept.txt", "still here")
    with SandboxClient(store=store_path) as second:
        resumed = second.session(session.id)
        seen = resumed.shell("cat kept.txt")
        info = resumed.end()

    assert seen.stdout == "still here"
    assert (info.title, info.status) == ("sync resume", "ended")


def test_sync_concurrent_calls_from_threads(sync_client: SandboxClient, image: str) -> None:
    results: dict[int, ShellResult] = {}
    errors: list[BaseException] = []
    with opened_sync(sync_client, image) as session:

        def run(n: int) -> None:
            try:
                results[n] = session.shell(barrier_command(n, 3, "/tmp/sync-barrier"), timeout=60)
            except BaseException as exc:  # re-raised below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    assert {n: r.stdout for n, r in results.items()} == {n: f"{n}\n" for n in range(3)}

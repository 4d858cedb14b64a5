"""One bad call never kills a session: malformed requests, hostile files, a full disk, kill
signals and fork bombs from the sandbox user, and the OOM killer, on real containers.

Each case checks that the failing call gets one of our errors and that the session (and the
helper that took the blow) still answers afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sandbox_support import (
    assert_still_works,
    container_of,
    restarts,
    second_helper,
)

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    ProtocolError,
    SandboxError,
    SandboxPermissionError,
)
from sandbox_sessions.sandbox._channel import DONE, FAIL, decode_json
from sandbox_sessions.sandbox._runtime import UPLOAD_CHUNK, UPLOAD_WINDOW

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

HELPER_PID = "$(pgrep -o -f '[s]andbox-sessions-helper')"
"""The main helper's pid, in a command (the bracket keeps pgrep from matching the shell)."""


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("resilience", image=image).create_session() as handle:
        yield handle


# --- malformed requests --------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"{nope"),
    ("not UTF-8", b"\xff\xfe"),
    ("not an object", b"[1, 2]"),
    ("unknown op", b'{"op": "format-disk"}'),
    ("op not text", b'{"op": 5}'),
    ("cmd not text", b'{"op": "exec", "cmd": 5}'),
    ("cmd missing", b'{"op": "exec"}'),
    ("env not a map", b'{"op": "exec", "cmd": "true", "env": ["A=1"]}'),
    ("env value not text", b'{"op": "exec", "cmd": "true", "env": {"A": 1}}'),
    ("NUL in cmd", json.dumps({"op": "exec", "cmd": "true\x00"}).encode()),
    ("timeout text", b'{"op": "exec", "cmd": "true", "timeout": "5"}'),
    ("timeout NaN", b'{"op": "exec", "cmd": "true", "timeout": NaN}'),
    ("timeout negative", b'{"op": "exec", "cmd": "true", "timeout": -1}'),
    ("max_output bool", b'{"op": "exec", "cmd": "true", "max_output": true}'),
    ("mode text", b'{"op": "write", "path": "/workspace/m", "mode": "644"}'),
    ("mode too large", b'{"op": "write", "path": "/workspace/m", "mode": 2097151}'),
    ("mode huge", b'{"op": "write", "path": "/workspace/m", "mode": 1e400}'),
    ("path not text", b'{"op": "write", "path": 5}'),
    ("path empty", b'{"op": "write", "path": ""}'),
    ("port text", b'{"op": "listen", "port": "80"}'),
    ("port bool", b'{"op": "listen", "port": true}'),
    ("port too large", b'{"op": "listen", "port": 70000}'),
    ("port negative", b'{"op": "listen", "port": -1}'),
]


async def test_malformed_requests_get_a_fail_frame_and_the_helper_serves_on(
    session: AsyncSessionHandle,
) -> None:
    async with second_helper(await container_of(session)) as channel:
        for name, request in MALFORMED:
            with anyio.fail_after(10):
                async with channel.call(request) as call:
                    kind, payload = await call.receive()
            assert kind == FAIL, name
            assert decode_json(payload)["error"] == "bad_request", name
        with anyio.fail_after(10):
            async with channel.call({"op": "ping"}) as call:
                assert (await call.receive())[0] == DONE
    await assert_still_works(session)


async def test_bad_modes_through_the_session_s_own_helper(
    client: AsyncSandboxClient, session: AsyncSessionHandle
) -> None:
    sandbox = await client.service.sandbox(session.id)
    for mode in ("644", 0o7777777, -1, True):
        with pytest.raises(ProtocolError, match="mode must be"):
            await sandbox.write_file("/workspace/m", b"x", mode=mode)  # type: ignore[arg-type]
    await assert_still_works(session)
    assert (await session.shell("ls -A /workspace")).stdout == ""  # no file, no leftover
    assert await restarts(session) == []


# --- files that fight back -----------------------------------------------------------------


async def test_a_fifo_at_the_old_temporary_names(session: AsyncSessionHandle) -> None:
    # The temporary name used to be `.<name>.<request id>.part`: plant a FIFO at each of them.
    planted = await session.shell("for i in $(seq 1 300); do mkfifo .target.txt.$i.part; done")
    assert planted.exit_code == 0, planted.stderr

    with anyio.fail_after(30):  # opening a FIFO without a reader would block for ever
        await session.put_file("target.txt", "written")

    assert await session.get_file("target.txt") == "written"
    listing = await session.shell("ls -A | grep -c '^.target.txt.*part$'; find . -type p | wc -l")
    assert listing.stdout.split() == ["300", "300"]  # ours went, the FIFOs stayed untouched


async def test_failed_uploads_are_answered_and_leave_nothing_behind(
    session: AsyncSessionHandle,
) -> None:
    # A full disk: /dev/shm is a 64 MiB tmpfs the sandbox user can fill.
    fill = await session.shell("head -c 100M /dev/zero > /dev/shm/fill")
    assert "No space left" in fill.stderr
    with pytest.raises(SandboxError, match="No space left on device"):  # past the ACK window
        await session.put_file("/dev/shm/more", b"x" * (8 << 20))
    # A file size limit (`ulimit -f`) on the helper itself, set by the sandbox user.
    limit = await session.shell(f"prlimit --pid {HELPER_PID} --fsize=65536")
    assert limit.exit_code == 0, limit.stderr
    with pytest.raises(SandboxError, match="too large"):
        await session.put_file("big.bin", b"x" * (1 << 20))
    # A folder the sandbox user may not write.
    with pytest.raises(SandboxPermissionError):
        await session.put_file("/etc/planted", "x")

    left = await session.shell("ls -A /dev/shm /workspace /etc | grep -c 'part$'")
    assert left.stdout == "0\n"
    await session.put_file("small.txt", "fits")
    assert await session.get_file("small.txt") == "fits"
    await assert_still_works(session)


async def test_a_large_upload_goes_through_its_window_intact(
    session: AsyncSessionHandle,
) -> None:
    blob = os.urandom(3 * UPLOAD_WINDOW * UPLOAD_CHUNK + 12345)  # three windows and a bit
    async with anyio.create_task_group() as group:
        group.start_soon(session.put_file, "blob.bin", blob)
        await assert_still_works(session)  # served while the upload is written

    digest = await session.shell("sha256sum < blob.bin")
    assert digest.stdout.split()[0] == hashlib.sha256(blob).hexdigest()


# --- the sandbox user against the helper ---------------------------------------------------


async def test_kill_signals_from_the_sandbox_user_do_not_reach_the_helper(
    session: AsyncSessionHandle,
) -> None:
    result = await session.shell(
        "sleep 300 & sleep 0.2; kill -9 1; kill -INT 1; kill -TERM 1; kill -STOP 1; "
        "kill -9 -1; echo survived", timeout=30)

    assert result.stdout == "survived\n"
    status = await session.shell("grep State /proc/1/status; pgrep -c -x sleep")
    assert status.stdout.split()[1] == "S"  # not stopped (T) either
    assert status.stdout.split()[-1] == "0"  # the sleeper was killed; the helper was not
    assert await restarts(session) == []


PEEK = """
import ctypes, os
pid = int(os.popen("pgrep -o -f '[s]andbox-sessions-helper'").read())
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
    os.waitpid(pid, 0)
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
    print("ptrace: attached")
else:
    print("ptrace: refused")
try:
    open("/proc/%d/fd/1" % pid, "wb").close()
    print("connection: opened")
except PermissionError:
    print("connection: refused")
"""


async def test_the_sandbox_user_cannot_trace_the_helper_or_open_its_connection(
    session: AsyncSessionHandle,
) -> None:
    await session.put_file("peek.py", PEEK)
    result = await session.shell("python3 peek.py", timeout=30)

    assert result.stdout.splitlines() == ["ptrace: refused", "connection: refused"]
    await assert_still_works(session)


async def works_once_reaped(session: AsyncSessionHandle) -> None:
    """Until the last killed process is reaped, a call may find no pid for its thread: that
    is a plain `SandboxError` ("busy"), never a dead container."""
    with anyio.fail_after(30):
        while True:
            try:
                await assert_still_works(session)
                return
            except SandboxError as exc:
                if type(exc) is not SandboxError:
                    raise
                await anyio.sleep(0.5)


async def test_a_command_holding_every_pid(client: AsyncSandboxClient, image: str) -> None:
    async with await client.agent("pids", image=image, pids=64).create_session() as session:
        started = anyio.Event()

        async def meanwhile() -> None:
            await started.wait()
            await anyio.sleep(2)  # every pid is taken by then: no thread for this request
            with pytest.raises(SandboxError, match="cannot start a thread") as busy:
                await session.shell("echo meanwhile")
            assert type(busy.value) is SandboxError

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(meanwhile)
                result = await session.shell("echo begun; while :; do sleep 1000 & done",
                                             timeout=5, on_stdout=lambda _text: started.set())

        assert result.timed_out is True
        await works_once_reaped(session)
        assert (await session.shell("pgrep -c -x sleep")).stdout == "0\n"
        assert await restarts(session) == []


async def test_a_fork_bomb_is_cleaned_up_by_its_timeout(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await client.agent("bomb", image=image, pids=64).create_session() as session:
        with anyio.fail_after(60):
            result = await session.shell("bomb() { bomb | bomb & }; bomb; sleep 60", timeout=3)

        assert result.timed_out is True
        await works_once_reaped(session)
        left = await session.shell("ps -eo args | grep -c '^/bin/bash -c bomb'")
        assert left.stdout == "0\n"
        assert await restarts(session) == []


async def test_the_oom_killer_takes_a_command_before_the_helper(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await client.agent("oom", image=image, memory="128m").create_session() as session:
        score = await session.shell("cat /proc/self/oom_score_adj")
        assert score.stdout == "500\n"

        hog = await session.shell("python3 -c 'b = bytearray(512 << 20)'", timeout=60)

        assert hog.exit_code == 137  # SIGKILL, from the OOM killer
        await assert_still_works(session)
        assert await restarts(session) == []


async def test_a_helper_killed_between_calls_is_replaced(
    session: AsyncSessionHandle, store_path: Path
) -> None:
    async with AsyncSandboxClient(store=store_path, reap_orphans=False) as other:
        handle = other.session(session.id)
        await assert_still_works(handle)  # connected through a helper of its own (docker exec)

        # The sandbox user kills that helper (it is not PID 1: nothing protects it).
        killed = await session.shell("kill -9 $(pgrep -n -f '[s]andbox-sessions-helper')")
        assert killed.exit_code == 0, killed.stderr
        await anyio.sleep(1)  # for its connection's end to reach this process

        await assert_still_works(handle)
    assert await restarts(session) == []

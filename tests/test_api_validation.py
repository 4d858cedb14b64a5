"""Every public call checks its input at the boundary (issue 6, section 11).

Each bad value is refused with one of our errors, before anything is changed, and the session
still works afterwards. Calls on an unknown session id raise `SessionNotFound`, including those
that read the log. The CLI answers each of these with one line on stderr and its exit code,
never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    InvalidArgument,
    SessionNotFound,
)

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

Call = Callable[[AsyncSessionHandle], Awaitable[object]]


@pytest.fixture
async def session(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    async with await client.agent("validation", image=image).create_session() as handle:
        await handle.put_file("kept.txt", "kept\n")
        yield handle


def bad(value: Any) -> Any:
    """A value the type checker would refuse, passed on purpose as a caller might."""
    return value


BAD_CALLS: dict[str, Call] = {
    "env key with =": lambda s: s.shell("true", env={"A=B": "x"}),
    "env key with NUL": lambda s: s.shell("true", env={"A\x00": "x"}),
    "empty env key": lambda s: s.shell("true", env={"": "x"}),
    "env key not a str": lambda s: s.shell("true", env=bad({1: "x"})),
    "env value with NUL": lambda s: s.shell("true", env={"A": "x\x00y"}),
    "env value not a str": lambda s: s.shell("true", env=bad({"A": 5})),
    "env not a mapping": lambda s: s.shell("true", env=bad(["A=1"])),
    "command with NUL": lambda s: s.shell("echo a\x00b"),
    "command not a str": lambda s: s.shell(bad(["echo", "hi"])),
    "cwd with NUL": lambda s: s.shell("true", cwd="/tmp\x00x"),
    "cwd not a str": lambda s: s.shell("true", cwd=bad(5)),
    "negative max_output": lambda s: s.shell("true", max_output=-1),
    "max_output a str": lambda s: s.shell("true", max_output=bad("10")),
    "max_output a bool": lambda s: s.shell("true", max_output=bad(True)),
    "max_output too big": lambda s: s.shell("true", max_output=1 << 70),
    "timeout nan": lambda s: s.shell("true", timeout=float("nan")),
    "timeout inf": lambda s: s.shell("true", timeout=float("inf")),
    "timeout negative": lambda s: s.shell("true", timeout=-1),
    "timeout a str": lambda s: s.shell("true", timeout=bad("5")),
    "path with NUL": lambda s: s.get_file("kept\x00.txt"),
    "path empty": lambda s: s.get_file(""),
    "path not a str": lambda s: s.get_file_bytes(bad(7)),
    "put path not a str": lambda s: s.put_file(bad(None), "x"),
    "content an int": lambda s: s.put_file("five.txt", bad(5)),
    "content a list": lambda s: s.put_file("list.txt", bad([1, 2])),
    "content with a lone surrogate": lambda s: s.put_file("s.txt", "a\udcffb"),
    "mode a str": lambda s: s.put_file("m.txt", "x", mode=bad("0644")),
    "mode too big": lambda s: s.put_file("m.txt", "x", mode=0o7777777),
    "mode negative": lambda s: s.put_file("m.txt", "x", mode=-1),
    "mode a bool": lambda s: s.put_file("m.txt", "x", mode=bad(True)),
    "encoding not a str": lambda s: s.get_file("kept.txt", encoding=bad(8)),
    "max_bytes negative": lambda s: s.get_file_bytes("kept.txt", max_bytes=-5),
    "title not a str": lambda s: s.update(title=bad(12)),
    "title with NUL": lambda s: s.update(title="a\x00b"),
    "permission id not a str": lambda s: s.reply_to_permission(bad(3), "once"),
    "bad permission reply": lambda s: s.reply_to_permission("per_x", bad("sometimes")),
    "download to a non-path": lambda s: s.download_artifacts(bad(42)),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
async def test_bad_input_is_refused_and_changes_nothing(
    session: AsyncSessionHandle, name: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await BAD_CALLS[name](session)
    assert caught.value.code == "invalid_argument"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)
    listing = await session.shell("ls -A /workspace")
    assert listing.stdout.split() == ["kept.txt"]  # nothing was written
    assert (await session.get_file("kept.txt")) == "kept\n"
    info = await session.get_info()
    assert info.title != "12"
    assert "\x00" not in info.title


UNKNOWN_CALLS: dict[str, Call] = {
    "get_info": lambda s: s.get_info(),
    "get_messages": lambda s: s.get_messages(),
    "get_metrics": lambda s: s.get_metrics(),
    "get_todos": lambda s: s.get_todos(),
    "abort": lambda s: s.abort(),
    "shell": lambda s: s.shell("true"),
    "get_file": lambda s: s.get_file("x"),
    "put_file": lambda s: s.put_file("x", "y"),
    "list_artifacts": lambda s: s.list_artifacts(),
    "update": lambda s: s.update(title="t"),
    "reply_to_permission": lambda s: s.reply_to_permission("per_x", "once"),
    "send": lambda s: s.send("hello"),
    "end": lambda s: s.end(),
}


@pytest.mark.parametrize("name", sorted(UNKNOWN_CALLS))
async def test_every_call_on_an_unknown_session_raises_session_not_found(
    client: AsyncSandboxClient, name: str
) -> None:
    handle = client.session("ses_" + "0" * 24)
    with pytest.raises(SessionNotFound) as caught:
        await UNKNOWN_CALLS[name](handle)
    assert caught.value.code == "session_not_found"
    assert isinstance(caught.value, LookupError)


async def test_events_of_an_unknown_session(client: AsyncSandboxClient) -> None:
    with pytest.raises(SessionNotFound):
        async for _ in client.session("ses_missing").events():
            pass


async def test_a_session_id_of_the_wrong_type(client: AsyncSandboxClient) -> None:
    with pytest.raises(InvalidArgument):
        await client.session(bad(5)).get_info()


async def test_content_bytes_like_is_accepted(session: AsyncSessionHandle) -> None:
    await session.put_file("b.bin", bytearray(b"\x00\x01"))
    await session.put_file("m.bin", memoryview(b"ab"))
    assert await session.get_file_bytes("b.bin") == b"\x00\x01"
    assert await session.get_file_bytes("m.bin") == b"ab"


# --- the command line ------------------------------------------------------------------------


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOX_SESSIONS_DB": str(store)}
    return subprocess.run([sys.executable, "-m", "sandbox_sessions", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sandbox-sessions: ")


async def test_cli_answers_bad_input_with_one_line(
    session: AsyncSessionHandle, store_path: Path
) -> None:
    assert_one_line_error(cli(store_path, "shell", session.id, "true", "--timeout", "nan"), 2)
    assert_one_line_error(cli(store_path, "shell", session.id, "true", "--timeout", "-3"), 2)
    assert_one_line_error(cli(store_path, "shell", "ses_unknown", "true"), 3)
    assert_one_line_error(cli(store_path, "end", "ses_unknown"), 3)
    done = cli(store_path, "shell", session.id, "echo fine")
    assert (done.returncode, done.stdout) == (0, "fine\n")


def test_cli_answers_an_unusable_store_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = cli(blocker / "sessions.db", "sessions")
    assert_one_line_error(done, 1)
    assert "store" in done.stderr


"""The bridge's lifecycle, with a real `sandbox-sessions serve` process: SIGTERM mid-turn
ends the turn in the log and the process within 10 s; a second server on the same store
serves the old session, its container reattached; a client that goes away mid-turn does not
stop the turn, and whoever reattaches sees it end.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
import pytest

from sandbox_sessions import AsyncSandboxClient, Event
from sandbox_sessions._exceptions import BridgeUnavailable, SandboxSessionsError

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
SLEEPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 300"}}]},
    {"text": "never"},
]
SEES_THE_SILENT_ONE = "until pgrep -f 'sleep 12[0]' >/dev/null; do sleep 0.1; done; echo up; " \
    "sleep 110"
"""Says `up` once the silent `sleep 120` runs (the pattern does not match itself)."""
NAPPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 3"}}]},
    {"text": "done"},
]


class Served:
    """`sandbox-sessions serve` on a free loopback port, in a process of its own, over
    `store`; its stderr is kept (read as it comes, so the pipe never fills)."""

    def __init__(self, store: Path, token_file: Path) -> None:
        self.token_file = token_file
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox_sessions", "--store", str(store), "serve",
             "--port", "0", "--token-file", str(token_file)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "serving http://" in line:
                self.url = line.split("serving ", 1)[1].strip()
                self._serving.set()

    def __enter__(self) -> Self:
        deadline = time.monotonic() + 60
        while not self._serving.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"serve did not start: {''.join(self.lines)}")
        return self

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def terminate(self, signum: int = signal.SIGTERM) -> float:
        """Send `signum`; the seconds it took the process to exit (it is killed after 30)."""
        start = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - start

    def close(self) -> None:
        if self.process.poll() is None:
            self.terminate()
        self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


async def _read_until_turn_end(client: AsyncSandboxClient, session_id: str, seen: list[Event],
                               *, after: int = 0, running: anyio.Event | None = None) -> None:
    async for event in client.session(session_id).events(after=after):
        seen.append(event)
        if event.type == "tool-running" and running is not None:
            running.set()
        if event.type == "turn-end":
            return


async def _start_turn(served: Served, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        response = await http.post(f"/sessions/{session_id}/turns", json={"prompt": "go"},
                                   headers={"Authorization": f"Bearer {served.token}"})
    assert response.status_code == 202, response.text
    started: dict[str, Any] = response.json()
    return started


async def test_sigterm_mid_turn_ends_the_turn_and_a_new_server_serves_the_session(
    store_path: Path, tmp_path: Path, image: str
) -> None:
    token_file = tmp_path / "state" / "token"
    seen: list[Event] = []
    command: list[object] = []
    with Served(store_path, token_file) as first:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert any(str(token_file) in line for line in first.lines)
        async with AsyncSandboxClient(base_url=first.url, token=first.token) as client:
            session = await client.agent("sleeper", model="scripted", script=SLEEPER,
                                         image=image).create_session()
            before = await session.get_info()
            running = anyio.Event()

            started = anyio.Event()

            async def run_command(line: str) -> None:
                try:
                    command.append(await session.shell(line, on_stdout=lambda _: started.set()))
                except SandboxSessionsError as exc:
                    command.append(exc)

            with anyio.fail_after(60):  # the reader returns at turn-end, the command fails
                async with anyio.create_task_group() as group:
                    group.start_soon(lambda: _read_until_turn_end(client, session.id, seen,
                                                                  running=running))
                    await _start_turn(first, session.id)
                    await running.wait()
                    group.start_soon(run_command, "sleep 120")  # silent: no response yet
                    group.start_soon(run_command, SEES_THE_SILENT_ONE)
                    await started.wait()  # both commands run
                    took = await anyio.to_thread.run_sync(first.terminate)
        assert took < 10, f"serve took {took:.1f} s to exit: {''.join(first.lines)}"
        assert first.process.returncode == 0, "".join(first.lines)

    assert seen[-1].type == "turn-end"
    assert seen[-1].reason == "aborted"
    # the silent one answered 503 in our body (not uvicorn's bare 500), the other's stream
    # broke off: both are the same error
    assert [type(outcome) for outcome in command] == [BridgeUnavailable] * 2, command
    with Served(store_path, token_file) as second:
        async with AsyncSandboxClient(base_url=second.url, token=second.token) as client:
            handle = client.session(session.id)
            after = await handle.get_info()
            stored: list[Event] = []
            with anyio.fail_after(30):
                await _read_until_turn_end(client, session.id, stored)
            alive = await handle.shell("echo alive")
            for _ in range(60):  # the tool's and the command's sleep are killed (soon)
                sleepers = (await handle.shell("pgrep -x sleep | wc -l")).stdout.strip()
                if sleepers == "0":
                    break
                await anyio.sleep(0.5)
            await handle.end()
    assert after.status == "idle"
    assert after.container_id == before.container_id  # reattached, not a new container
    assert [event.reason for event in stored if event.type == "turn-end"] == ["aborted"]
    assert alive.stdout == "alive\n"
    assert sleepers == "0"


async def test_a_client_that_goes_away_mid_turn_does_not_stop_it(
    store_path: Path, tmp_path: Path, image: str
) -> None:
    with Served(store_path, tmp_path / "token") as served:
        async with AsyncSandboxClient(base_url=served.url, token=served.token) as client:
            session = await client.agent("napper", model="scripted", script=NAPPER,
                                         image=image).create_session()
            started = await _start_turn(served, session.id)
            headers = {"Authorization": f"Bearer {served.token}"}
            async with (httpx.AsyncClient(base_url=served.url, timeout=30) as gone,
                        gone.stream("GET", f"/sessions/{session.id}/events",
                                    headers=headers) as stream):
                async for line in stream.aiter_lines():
                    if line == "event: tool-running":
                        break  # and the connection is dropped mid-turn
            first: list[Event] = []
            second: list[Event] = []
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(_read_until_turn_end, client, session.id, first)
                    group.start_soon(_read_until_turn_end, client, session.id, second)
            messages = await session.get_messages()
            await session.end()
    ends = [event for event in first if event.type == "turn-end"]
    assert [(end.message_id, end.reason) for end in ends] == [
        (started["message_id"], "completed")]
    assert [event.model_dump() for event in first] == [event.model_dump() for event in second]
    assert "done" in messages[-1].model_dump_json()


def _serve_exit(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox_sessions", "--store", str(store), "serve", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60, check=False)


def test_serve_refuses_a_token_file_others_may_read_and_a_port_in_use(
    store_path: Path, tmp_path: Path
) -> None:
    readable = tmp_path / "readable"
    readable.write_text("a" * 64 + "\n")
    readable.chmod(0o644)
    refused = _serve_exit(store_path, "--port", "0", "--token-file", str(readable))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        in_use = _serve_exit(store_path, "--port", port, "--token-file", str(tmp_path / "t"))
    bad_origin = _serve_exit(store_path, "--port", "0", "--token-file", str(tmp_path / "t"),
                             "--allow-origin", "*")
    assert refused.returncode == 2
    assert "read by others" in refused.stderr
    assert in_use.returncode == 1
    assert f"port {port}" in in_use.stderr
    assert bad_origin.returncode == 2
    assert "--allow-origin" in bad_origin.stderr


def test_sigint_stops_an_idle_server_cleanly(store_path: Path, tmp_path: Path) -> None:
    with Served(store_path, tmp_path / "token") as served:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            listed = http.get("/sessions", headers={"Authorization": f"Bearer {served.token}"})
        took = served.terminate(signal.SIGINT)
    assert listed.status_code == 200
    assert took < 10
    assert served.process.returncode == 0, "".join(served.lines)
    assert not any("Traceback" in line for line in served.lines)

"""How a harness reaches its CLI: stdio over the helper's tunnel, servers by `connect`.

Real containers: a process started with `launch` talks to the host through its stdin and
stdout; leaving kills it and whatever it started, even out of its process group; the host
reaches a loopback server inside the container with `DockerSandbox.connect`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator

import anyio
import pytest

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle, SandboxError
from sandbox_sessions.agent.harness._process import RUN_MARKER, launch
from sandbox_sessions.sandbox.docker import DockerSandbox

pytestmark = pytest.mark.anyio

ECHO = ("import json, sys\n"
        "for line in sys.stdin:\n"
        "    data = json.loads(line)\n"
        "    sys.stdout.write(json.dumps({'echo': data, 'size': len(line)}) + '\\n')\n"
        "    sys.stdout.flush()\n"
        "sys.stdout.write(json.dumps({'eof': True}) + '\\n')\n")
# Every process whose command line or environment shows it belongs to a run.
FIND_MARKED = ("import os\n"
               "for pid in os.listdir('/proc'):\n"
               "    if not pid.isdigit() or int(pid) == os.getpid():\n"
               "        continue\n"
               "    try:\n"
               "        env = open('/proc/%s/environ' % pid, 'rb').read()\n"
               "        cmd = open('/proc/%s/cmdline' % pid, 'rb').read()\n"
               "    except OSError:\n"
               "        continue\n"
               f"    if b'{RUN_MARKER}=' in env or b'sleep 4242' in cmd.replace(b'\\0', b' '):\n"
               "        print(pid, cmd.replace(b'\\0', b' ').decode())\n")


@pytest.fixture
async def session(embedded_client: AsyncSandboxClient, image: str
                  ) -> AsyncIterator[AsyncSessionHandle]:
    async with await embedded_client.agent("process", image=image).create_session() as handle:
        yield handle


async def marked(session: AsyncSessionHandle) -> str:
    result = await session.shell(shlex.join(["python3", "-c", FIND_MARKED]))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


async def test_stdin_and_stdout_of_the_process_reach_the_host(sandbox: DockerSandbox) -> None:
    with anyio.fail_after(60):
        async with launch(sandbox, ["python3", "-u", "-c", ECHO], env={}, cwd="/workspace",
                          name="echo") as process:
            messages = process.messages()
            await process.send_json({"hello": "wörld"})
            sent = json.dumps({"hello": "wörld"}, separators=(",", ":")) + "\n"
            assert await anext(messages) == {"echo": {"hello": "wörld"}, "size": len(sent)}
            await process.close_stdin()
            assert await anext(messages) == {"eof": True}
            assert [m async for m in messages] == []


async def test_writes_go_on_while_another_task_waits_for_output(sandbox: DockerSandbox) -> None:
    """A reader blocked on the stream and a writer that runs out of window share it: the
    acknowledgements the reader takes give the writer its credit back."""
    payload = "x" * 100_000
    with anyio.fail_after(120):
        async with launch(sandbox, ["python3", "-u", "-c", ECHO], env={}, cwd="/workspace",
                          name="echo") as process:
            sizes: list[int] = []

            async def read() -> None:
                async for message in process.messages():
                    if "eof" in message:
                        return
                    sizes.append(message["size"])

            async with anyio.create_task_group() as group:
                group.start_soon(read)
                for index in range(40):
                    await process.send_json({"n": index, "data": payload})
                await process.close_stdin()
    assert sizes == [len(json.dumps({"n": index, "data": payload}, separators=(",", ":"))) + 1
                     for index in range(40)]


async def test_leaving_kills_the_process_and_children_that_left_its_group(
    session: AsyncSessionHandle, sandbox: DockerSandbox
) -> None:
    script = "setsid sleep 4242 & (sleep 4242 &) ; echo started; exec sleep 4242"
    with anyio.fail_after(60):
        async with launch(sandbox, ["bash", "-c", script], env={}, cwd="/workspace",
                          name="sleeper") as process:
            lines = process.lines()
            assert await anext(lines) == b"started"
            running = await marked(session)
            assert running.count("sleep 4242") == 3, running
    assert await marked(session) == ""


async def test_a_cli_that_is_missing_fails_with_its_name_and_stderr(
    sandbox: DockerSandbox,
) -> None:
    with anyio.fail_after(60), pytest.raises(SandboxError) as caught:
        async with launch(sandbox, ["no-such-agent-cli", "-p"], env={}, cwd="/workspace",
                          name="no-such-agent-cli"):
            pytest.fail("a missing CLI started")
    message = str(caught.value)
    assert "no-such-agent-cli could not start in the sandbox" in message
    assert "exited with 127" in message
    assert "command not found" in message


async def test_a_cli_that_exits_at_once_ends_its_output(sandbox: DockerSandbox) -> None:
    with anyio.fail_after(60):
        async with launch(sandbox, ["bash", "-c", "echo '{\"a\": 1}'; echo oops >&2; exit 3"],
                          env={}, cwd="/workspace", name="short") as process:
            assert [m async for m in process.messages()] == [{"a": 1}]
    assert process.stderr_tail == "oops"


async def test_the_env_reaches_the_process_with_the_run_marker(sandbox: DockerSandbox) -> None:
    script = "import json, os; print(json.dumps({k: v for k, v in os.environ.items()}))"
    with anyio.fail_after(60):
        async with launch(sandbox, ["python3", "-c", script], env={"GIVEN": "yes"},
                          cwd="/tmp", name="env") as process:
            (env,) = [m async for m in process.messages()]
    assert env["GIVEN"] == "yes"
    assert len(env[RUN_MARKER]) == 32


async def test_connect_reaches_a_loopback_server_inside_the_container(
    session: AsyncSessionHandle, sandbox: DockerSandbox
) -> None:
    await session.put_file("/workspace/page.txt", b"served from inside\n")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(session.shell,
                             "exec python3 -m http.server 8765 --bind 127.0.0.1")
            for _ in range(100):
                probe = await session.shell("python3 -c \"import socket; "
                                            "socket.create_connection(('127.0.0.1', 8765))\"")
                if probe.exit_code == 0:
                    break
                await anyio.sleep(0.1)
            async with sandbox.connect(8765) as stream:
                await stream.send(b"GET /page.txt HTTP/1.0\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := await stream.receive():
                    answer += chunk
            group.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.0 200")
    assert answer.endswith(b"served from inside\n")


async def test_connect_to_a_port_nobody_listens_on_is_a_sandbox_error(
    sandbox: DockerSandbox,
) -> None:
    refused = r"cannot connect to 127\.0\.0\.1:9\b"
    with anyio.fail_after(30), pytest.raises(SandboxError, match=refused):
        async with sandbox.connect(9):
            pytest.fail("connected to a closed port")


async def test_only_the_connection_that_presents_the_token_is_taken(
    session: AsyncSessionHandle, sandbox: DockerSandbox
) -> None:
    """Another process in the container that connects first, to stand in for the CLI, is
    closed: the launcher's connection is the one that presents the run's token."""
    from contextlib import AsyncExitStack

    from sandbox_sessions.agent.harness._process import _connected

    clients = ("import socket, sys, time\n"
               "port = int(sys.argv[1])\n"
               "bad = socket.create_connection(('127.0.0.1', port))\n"
               "bad.sendall(b'not-the-token\\nfrom the imposter\\n')\n"
               "time.sleep(0.5)\n"
               "good = socket.create_connection(('127.0.0.1', port))\n"
               "good.sendall(b'the-token\\nfrom the launcher\\n')\n"
               "time.sleep(5)\n")
    with anyio.fail_after(60):
        async with sandbox.listen(0) as listener, AsyncExitStack() as stack, \
                anyio.create_task_group() as group:
            group.start_soon(session.shell,
                             shlex.join(["python3", "-c", clients, str(listener.port)]))
            found = await _connected(listener, stack, "the-token")
            assert found is not None
            stream, rest = found
            while not rest.endswith(b"\n"):
                rest += await stream.receive()
            group.cancel_scope.cancel()
    assert rest == b"from the launcher\n"


async def test_a_line_past_the_cap_is_a_protocol_error_not_a_host_buffer(
    sandbox: DockerSandbox,
) -> None:
    """A CLI (or what took its place) that writes without a newline is cut at `MAX_LINE`."""
    from sandbox_sessions import ProtocolError
    from sandbox_sessions.agent.harness._process import MAX_LINE

    flood = ("import sys\n"
             f"chunk = b'x' * (1 << 20)\n"
             f"for _ in range({MAX_LINE >> 20} + 4):\n"
             "    sys.stdout.buffer.write(chunk)\n"
             "sys.stdout.buffer.flush()\n")

    async def read_all() -> list[bytes]:
        async with launch(sandbox, ["python3", "-c", flood], env={}, cwd="/tmp",
                          name="flood") as process:
            return [line async for line in process.lines()]

    with anyio.fail_after(120), pytest.raises(ProtocolError, match="a line of over"):
        await read_all()

"""The command line, run for real: `python -m sandbox_sessions` in a subprocess, on real
containers, embedded (over the test's store file) and against a real `sandbox-sessions serve`
subprocess (`--url`, the token in `$SANDBOX_SESSIONS_TOKEN`).

Sessions are made from Python on the same store (or through the same server); each command
is then checked by its output, its exit code, and what it did to the session.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_sessions import AgentConfig, SandboxClient, SessionHandle, UserMessage

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
WAIT = 60.0
"""Seconds a test waits for a subprocess's line before it fails."""
SHARED_SCRIPT: list[dict[str, Any]] = [
    {"reasoning": "thinking it over",
     "tool_calls": [{"name": "bash", "input": {"command": "echo from-the-tool"}}]},
    {"text": "all done here"},
]


@dataclass
class Cli:
    """`sandbox-sessions` in a subprocess, embedded or against the server (`url`)."""

    env: dict[str, str]
    cwd: Path
    url: str | None = None

    def argv(self, args: tuple[str, ...]) -> list[str]:
        where = ["--url", self.url] if self.url else []  # before the command: `shell ... --`
        return [sys.executable, "-m", "sandbox_sessions", *where, *args]

    def __call__(self, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(args), env={**self.env, **(env or {})}, cwd=self.cwd,
                              capture_output=True, text=True, timeout=180, check=False)

    def json(self, *args: str) -> list[Any]:
        """The command's stdout with `--json`: every line must be JSON (exit code 0)."""
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(args), env=self.env, cwd=self.cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Check a refusal: its code, one error line (the last on stderr; progress lines may come
    before it), no traceback; that line."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sandbox-sessions: error: ")]
    assert len(errors) == 1, done.stderr
    assert lines[-1] == errors[0], done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


class Server:
    """`sandbox-sessions serve --port 0` over `store`, in a subprocess, until `stop()`."""

    def __init__(self, store: Path, folder: Path, env: dict[str, str]) -> None:
        self.token_file = folder / "token"
        self.log = folder / "serve.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandbox_sessions", "serve", "--port", "0",
                 "--token-file", str(self.token_file)],
                env={**env, "SANDBOX_SESSIONS_DB": str(store)}, stdout=subprocess.DEVNULL,
                stderr=log, text=True)
        self.url = self._served()
        self.token = self.token_file.read_text().strip()

    def _served(self) -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if "serving http://" in line:
                    return line.rsplit(" ", 1)[-1]
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=WAIT)


def base_env(tmp: Path, store: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SANDBOX_SESSIONS_")}
    env.update(PYTHONPATH=str(REPO), SANDBOX_SESSIONS_DB=str(store),
               XDG_CONFIG_HOME=str(tmp / "config"), XDG_STATE_HOME=str(tmp / "state"))
    return env


@dataclass
class World:
    store: Path
    env: dict[str, str]
    server: Server
    client: SandboxClient
    """Embedded, on `store`."""
    remote: SandboxClient
    """Through the server."""
    shared: SessionHandle
    """A session with one turn done (a tool call, reasoning, text)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cli")
    store = tmp / "sessions.db"
    env = base_env(tmp, store)
    server = Server(store, tmp, env)
    try:
        with SandboxClient(store=store) as client, \
                SandboxClient(base_url=server.url, token=server.token) as remote:
            shared = client.agent("build", model="scripted", script=SHARED_SCRIPT,
                                  image=image).create_session(title="shared")
            assert shared.send("first prompt").reason == "completed"
            try:
                yield World(store, env, server, client, remote, shared)
            finally:
                for info in client.list_sessions():
                    client.session(info.id).end()
    finally:
        server.stop()


@pytest.fixture(params=["embedded", "server"])
def cli(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Cli:
    if request.param == "embedded":
        return Cli(dict(world.env), tmp_path)
    # The store the CLI would open embedded does not exist: every call goes to the server.
    env = {**world.env, "SANDBOX_SESSIONS_TOKEN": world.server.token,
           "SANDBOX_SESSIONS_DB": str(tmp_path / "unused" / "none.db")}
    return Cli(env, tmp_path, world.server.url)


# --- sessions list / show / messages / events ------------------------------------------------


def test_sessions_list(cli: Cli, world: World) -> None:
    rows = cli.json("sessions", "list")
    assert world.shared.id in [row["id"] for row in rows]
    assert all(row["status"] != "ended" for row in rows)
    for args in (("sessions",), ("sessions", "list")):  # alone, `sessions` lists
        done = cli(*args)
        assert done.returncode == 0, done.stderr
        [line] = [line for line in done.stdout.splitlines() if line.startswith(world.shared.id)]
        assert line.split()[1] == "idle"
        assert line.endswith("shared")


def test_sessions_show(cli: Cli, world: World) -> None:
    done = cli("sessions", "show", world.shared.id)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert (fields["id"], fields["title"], fields["status"], fields["model"]) == (
        world.shared.id, "shared", "idle", "scripted")
    [info] = cli.json("sessions", "show", world.shared.id)
    assert info == world.shared.get_info().model_dump(mode="json")
    line = one_line_error(cli("sessions", "show", "ses_nosuchsession"), 3)
    assert "ses_nosuchsession" in line


def test_unknown_session_in_json_mode_is_one_json_line(cli: Cli) -> None:
    done = cli("--json", "sessions", "messages", "ses_nosuchsession")
    one_line_error(done, 3)
    [error] = [json.loads(line) for line in done.stdout.splitlines()]
    assert error["error"]["code"] == "session_not_found"
    assert error["error"]["exit_code"] == 3


def test_sessions_messages(cli: Cli, world: World) -> None:
    done = cli("sessions", "messages", world.shared.id)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for expected in ("first prompt", "(reasoning) thinking it over", "⚙ bash",
                     "echo from-the-tool", "[completed]", "from-the-tool", "all done here"):
        assert expected in text
    assert text.index("first prompt") < text.index("echo from-the-tool") < text.index(
        "all done here")
    messages = cli.json("sessions", "messages", world.shared.id, "--hidden")
    assert messages == [m.model_dump(mode="json") for m in world.shared.get_messages(hidden=True)]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def events_upto(handle: SessionHandle, seq: int) -> list[dict[str, Any]]:
    """The session's events up to `seq`, read from Python."""
    events: list[dict[str, Any]] = []
    for event in handle.events():
        events.append(event.model_dump(mode="json"))
        if event.seq >= seq:
            return events
    raise AssertionError("unreachable: the stream never ends by itself")


def test_sessions_events(cli: Cli, world: World) -> None:
    marker = f"echo newest-{time.monotonic_ns()}"
    assert world.shared.shell(marker).exit_code == 0  # the newest event stored
    events = cli.json("sessions", "events", world.shared.id)
    assert (events[-1]["type"], events[-1]["command"]) == ("shell-run", marker)
    expected = events_upto(world.shared, events[-1]["seq"])
    assert events == expected
    assert "turn-end" in [event["type"] for event in events]
    middle = expected[len(expected) // 2]["seq"]
    later = cli.json("sessions", "events", world.shared.id, "--after", str(middle))
    assert later == [event for event in expected if event["seq"] > middle]
    plain = cli("sessions", "events", world.shared.id)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [event["seq"] for event in expected]
    assert any("turn-end" in line and "completed" in line for line in lines)
    assert f"exit 0: {marker}" in lines[-1]
    one_line_error(cli("sessions", "events", "ses_nosuchsession"), 3)
    one_line_error(cli("sessions", "events", world.shared.id, "--after", "-1"), 2)


def lines_of(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The process's stdout lines as they come, and the thread that reads them."""
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return found, reader


def test_sessions_events_follow_gets_live_events_until_ctrl_c(cli: Cli, world: World) -> None:
    session = world.client.session(world.shared.id)
    process = cli.popen("sessions", "events", world.shared.id, "--follow", "--json")
    lines, reader = lines_of(process)
    try:
        first = json.loads(lines.get(timeout=WAIT))  # the stored ones come first
        assert first["seq"] == 1
        marker = f"echo live-{time.monotonic_ns()}"
        assert session.shell(marker).exit_code == 0
        while True:
            event = json.loads(lines.get(timeout=WAIT))
            if event["type"] == "shell-run" and event["command"] == marker:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=WAIT)
        assert process.stdout is not None
        assert process.stderr is not None
        errors = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert "Traceback" not in errors


# --- shell and cp ----------------------------------------------------------------------------


def test_shell_exit_codes(cli: Cli, world: World) -> None:
    done = cli("shell", world.shared.id, "--", "sh", "-c", "echo out; exit 7")
    assert (done.returncode, done.stdout) == (7, "out\n")
    timed_out = cli("shell", world.shared.id, "--timeout", "0.5", "--", "sleep", "30")
    assert timed_out.returncode == 124
    one_line_error(cli("shell", "ses_nosuchsession", "--", "true"), 3)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40,
             "sub/deeper/c.txt": b"gamma", ".gitignore": b"*.log\n"}
    for name, data in {**files, "x.log": b"ignored"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_cp_round_trip(cli: Cli, world: World, tmp_path: Path) -> None:
    source = tmp_path / "src"
    files = make_tree(source)
    target = f"/workspace/cp-{time.monotonic_ns()}"
    [up] = cli.json("cp", str(source), f"{world.shared.id}:{target}")
    assert (sorted(up["files"]), up["bytes"], up["destination"]) == (
        sorted(files), sum(map(len, files.values())), target)
    done = cli("cp", f"{world.shared.id}:{target}", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == files  # x.log was left out by .gitignore
    assert cli("cp", "--no-gitignore", str(source),
               f"{world.shared.id}:{target}").returncode == 0
    [down] = cli.json("cp", f"{world.shared.id}:{target}/x.log", str(tmp_path / "one"))
    assert down["files"] == ["x.log"]
    assert (tmp_path / "one" / "x.log").read_bytes() == b"ignored"


def test_cp_refusals(cli: Cli, world: World, tmp_path: Path) -> None:
    assert "exactly one side" in one_line_error(cli("cp", "a", "b"), 2)
    one_line_error(cli("cp", f"{world.shared.id}:/a", f"{world.shared.id}:/b"), 2)
    one_line_error(cli("cp", str(tmp_path), "ses_nosuchsession:/workspace"), 3)
    one_line_error(cli("cp", str(tmp_path / "missing"), f"{world.shared.id}:/workspace"), 3)
    one_line_error(cli("cp", f"{world.shared.id}:/workspace/no-such-file", str(tmp_path)), 3)


# --- command templates -----------------------------------------------------------------------


def test_command_run_and_list(cli: Cli, world: World, image: str) -> None:
    commands = cli.cwd / ".sandbox-sessions" / "commands"
    commands.mkdir(parents=True)
    (commands / "greet.md").write_text("---\ndescription: Say hello\n---\nSay hello to $1.\n")
    (commands / "broken.md").write_text("Before: !`exit 3`\n")
    session = world.client.agent("build", model="scripted", image=image, script=[
        {"text": "hello from the template"}]).create_session(title="commands")
    try:
        done = cli("command", "run", session.id, "greet", "world")
        assert (done.returncode, done.stdout.strip()) == (0, "hello from the template"), \
            done.stderr
        user = session.get_messages()[-2]
        assert isinstance(user, UserMessage)
        assert user.command is not None
        assert user.command.name == "greet"
        assert user.command.arguments == ["world"]
        assert "Say hello to world." in json.dumps(user.model_dump(mode="json"))
        listed = cli.json("command", "list", session.id)
        assert {"greet", "broken"} <= {template["name"] for template in listed}
        plain = cli("command", "list")
        assert any(line.startswith("greet") and "Say hello" in line
                   for line in plain.stdout.splitlines())
        one_line_error(cli("command", "run", session.id, "broken"), 1)
        one_line_error(cli("command", "run", session.id, "nosuchcommand"), 3)
        one_line_error(cli("command", "run", "ses_nosuchsession", "greet"), 3)
    finally:
        session.end()


# --- reply / answer --------------------------------------------------------------------------

ASKING_SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "echo ran > /workspace/ran.txt"}}]},
    {"tool_calls": [{"name": "question", "input": {"question": "Which colour?"}}]},
    {"text": "finished"},
]


def test_reply_and_answer_through_the_server(world: World, image: str, tmp_path: Path) -> None:
    """A turn runs in the server: its permission request and question are answered from
    the command line, and the turn completes."""
    cli = Cli({**world.env, "SANDBOX_SESSIONS_TOKEN": world.server.token}, tmp_path,
              world.server.url)
    config = AgentConfig(  # timeouts: a reply that does not arrive fails the test, not hangs
        model="scripted", script=ASKING_SCRIPT, tools=["bash", "question"],
        permissions={"bash": {"*": "ask"}}, permission_timeout=WAIT, question_timeout=WAIT)
    session = world.remote.agent("build", config=config, image=image).create_session(
        title="asks")
    try:
        events = session.stream("go")
        asked = next(e for e in events if e.type == "permission-asked")
        one_line_error(cli("reply", session.id, asked.request.id, "maybe"), 2)
        done = cli("reply", session.id, asked.request.id, "once")
        assert done.returncode == 0, done.stderr
        question = next(e for e in events if e.type == "question-asked")
        one_line_error(cli("reply", session.id, asked.request.id, "once"), 3)  # not pending
        [answered] = cli.json("answer", session.id, question.request.id, "green")
        assert answered["answer"] == "green"
        end = next(e for e in events if e.type == "turn-end")
        assert end.reason == "completed"
        assert session.get_file("/workspace/ran.txt") == "ran\n"
        replies = [e for e in session.get_messages()[-1].parts if e.type == "tool"]
        assert [p.state.status for p in replies] == ["completed", "completed"]
        assert "green" in (replies[1].state.output or "")
    finally:
        session.end()


def test_reply_and_answer_to_nothing_pending(cli: Cli, world: World) -> None:
    one_line_error(cli("reply", world.shared.id, "per_nosuchrequest", "reject",
                       "--message", "no"), 3)
    one_line_error(cli("answer", world.shared.id, "que_nosuchquestion", "blue"), 3)
    one_line_error(cli("reply", world.shared.id, "per_x", "sometimes"), 2)


# --- usage, engine, images, doctor -----------------------------------------------------------


def test_unknown_option_is_a_usage_error(cli: Cli, world: World) -> None:
    line = one_line_error(cli("sessions", "show", world.shared.id, "--colour"), 2)
    assert "--colour" in line


def test_an_unreachable_engine_exits_4(world: World, tmp_path: Path) -> None:
    cli = Cli(dict(world.env), tmp_path)
    for host in ("tcp://127.0.0.1:1", "unix:///nonexistent.sock"):
        one_line_error(cli("shell", world.shared.id, "--", "true",
                           env={"DOCKER_HOST": host}), 4)


def test_images_list(world: World, tmp_path: Path, image: str) -> None:
    cli = Cli(dict(world.env), tmp_path)
    rows = cli.json("images", "list")
    assert image in [row["tag"] for row in rows]
    assert all(row["id"].startswith("sha256:") and row["size"] > 0 for row in rows)
    assert all(row["tag"].startswith("sandbox-sessions/") or row["tag"] == "-"
               or ":" in row["tag"] for row in rows)
    plain = cli("images", "list")
    assert any(line.startswith(image) for line in plain.stdout.splitlines())
    one_line_error(cli("images", "list", env={"DOCKER_HOST": "tcp://127.0.0.1:1"}), 4)


def doctor_checks(cli: Cli, *args: str, env: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, dict[str, Any]]]:
    done = cli("doctor", "--json", *args, env=env)
    checks = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, {check["check"]: check for check in checks}


def test_doctor(cli: Cli, world: World) -> None:
    code, checks = doctor_checks(cli)
    assert code == 0, checks
    assert {"engine", "image", "agents", "store", "extra cli", "extra server"} <= set(checks)
    assert all(check["status"] in ("ok", "skip") for check in checks.values())
    # the agents image is built by setup.sh: its CLIs and their versions are named
    assert checks["agents"]["detail"] == ("sandbox-sessions/agents:latest: claude 2.1.332, "
                                          "codex 0.171.0, opencode 1.18.33")
    if cli.url:
        assert checks["server"]["status"] == checks["token"]["status"] == "ok"
    else:
        assert checks["store"]["detail"] == world.env["SANDBOX_SESSIONS_DB"]
    plain = cli("doctor")
    assert plain.returncode == 0
    assert "ok    engine" in plain.stdout


def test_doctor_names_the_failure_and_the_fix(world: World, tmp_path: Path) -> None:
    cli = Cli(dict(world.env), tmp_path)
    code, checks = doctor_checks(cli, env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert code == 4
    assert checks["engine"]["status"] == "fail"
    assert "ensure-docker.sh" in checks["engine"]["fix"]
    assert checks["image"]["status"] == checks["agents"]["status"] == "skip"
    code, checks = doctor_checks(cli, "--image", "sandbox-sessions/none:missing")
    assert code == 3
    assert checks["image"]["fix"] == "sandbox-sessions images build --tag " \
        "sandbox-sessions/none:missing"
    plain = cli("doctor", "--image", "sandbox-sessions/none:missing")
    assert plain.returncode == 3
    assert "fix: sandbox-sessions images build" in plain.stdout


def test_doctor_says_how_to_build_a_missing_agents_image() -> None:
    from sandbox_sessions.cli._doctor import check_agents
    from sandbox_sessions.sandbox._engine import Engine

    engine = Engine()
    try:
        check = check_agents(engine, "sandbox-sessions/none:missing")
    finally:
        engine.close()
    assert (check.status, check.fix) == (
        "skip", "sandbox-sessions images build --with claude-code,codex,opencode")
    assert check.detail == "no image sandbox-sessions/none:missing (harness agents need it)"


def test_doctor_against_a_server(world: World, tmp_path: Path) -> None:
    cli = Cli(dict(world.env), tmp_path)
    code, checks = doctor_checks(cli, "--url", "http://127.0.0.1:1")
    assert code == 4
    assert (checks["server"]["status"], checks["token"]["status"]) == ("fail", "skip")
    code, checks = doctor_checks(cli, "--url", world.server.url,
                                 env={"SANDBOX_SESSIONS_TOKEN": "0" * 64})
    assert code == 1
    assert (checks["server"]["status"], checks["token"]["status"]) == ("ok", "fail")
    assert "SANDBOX_SESSIONS_TOKEN" in checks["token"]["fix"]

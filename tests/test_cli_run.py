"""`sandbox-sessions run`, through the real CLI in a subprocess, against real containers (and
a real server for `--url`): each exit code, `--json`, `--ask`, `--timeout`, Ctrl-C, task
files end to end with their artifacts, and what a hostile container prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import REPO, cli, cli_env, json_lines, one_line_error, popen_cli, served
from servers import Canned, CannedServer, sse

from sandbox_sessions import SandboxClient

pytestmark = pytest.mark.docker

ASK = {"bash": {"*": "ask"}}


def write_script(folder: Path, entries: list[dict[str, Any]], name: str = "model.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(entries))
    return path


def bash(command: str, text: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"tool_calls": [{"name": "bash", "input": {"command": command}}]}
    if text is not None:
        entry["text"] = text
    return entry


def stored_events(store: Path, session_id: str) -> list[Any]:
    """The session's log, read from the store file after the CLI has gone."""
    with SandboxClient(store=store, reap_orphans=False) as client:
        handle = client.session(session_id)
        events = []
        for event in handle.events():
            events.append(event)
            if event.type == "turn-end":
                break
        return events


def result_line(stdout: str) -> dict[str, Any]:
    lines = json_lines(stdout)
    assert lines[-1]["type"] == "run-result", lines[-1]
    return lines[-1]


def test_a_prompt_runs_streams_its_events_and_downloads_the_artifact(tmp_path: Path,
                                                                      image: str) -> None:
    script = write_script(tmp_path, [
        bash("mkdir -p /artifacts/dist && echo built > /artifacts/dist/app.txt",
             "Building."),
        {"text": "All built."}])
    done = cli(tmp_path, "run", "Build it", "--script", str(script), "--artifacts", "out",
               "--image", image)
    assert done.returncode == 0, done.stderr
    assert "Building." in done.stdout
    assert "All built." in done.stdout
    assert "[tool] bash: mkdir -p /artifacts/dist" in done.stdout
    assert "[turn-end] completed" in done.stdout
    assert (tmp_path / "out" / "dist" / "app.txt").read_text() == "built\n"
    session_id = done.stdout.rsplit("(session ", 1)[1].split(")")[0]
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        assert client.session(session_id).get_info().status == "ended"  # not --keep


def test_json_gives_only_json_lines_each_event_then_the_result(tmp_path: Path,
                                                                image: str) -> None:
    script = write_script(tmp_path, [bash("echo hi"), {"text": "Done."}])
    done = cli(tmp_path, "--json", "run", "Say hi", "--script", str(script), "--keep")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    types = [line["type"] for line in lines]
    assert types[0] == "run-step"
    assert types[-1] == "run-result"
    assert {"message-created", "text-delta", "tool-start", "tool-end", "turn-end"} <= set(types)
    result = lines[-1]
    assert result["exit_code"] == 0
    assert result["kept"] is True
    seqs = [line["seq"] for line in lines if "seq" in line]
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs))
    ended = [line for line in lines if line["type"] == "turn-end"]
    assert [e["reason"] for e in ended] == ["completed"]
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        kept = client.session(result["session_id"])
        assert kept.get_info().status == "idle"
        kept.end()


@pytest.mark.parametrize(("ask", "code", "reply"), [
    ("reject", 5, "reject"), ("once", 0, "once"), ("fail", 5, "reject")])
def test_ask_answers_requests_when_stdin_is_not_a_terminal(
        tmp_path: Path, image: str, ask: str, code: int, reply: str) -> None:
    script = write_script(tmp_path, [bash("touch /workspace/made"), {"text": "Done."}])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(ASK))
    done = cli(tmp_path, "--json", "run", "Touch it", "--script", str(script),
               "--permissions", "rules.yaml", "--ask", ask)
    assert done.returncode == code, done.stderr
    lines = json_lines(done.stdout)
    replies = [line["reply"] for line in lines if line["type"] == "permission-replied"]
    assert replies == [reply]
    assert result_line(done.stdout)["exit_code"] == code
    if ask == "fail":
        assert "--ask fail: bash asks permission for: touch /workspace/made" in done.stderr


def test_the_default_ask_is_reject(tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [bash("touch /workspace/made"), {"text": "Done."}])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(ASK))
    done = cli(tmp_path, "run", "Touch it", "--script", str(script), "--permissions",
               "rules.yaml")
    assert done.returncode == 5, done.stderr
    assert "the turn ended rejected" in one_line_error(done.stderr)


def test_a_turn_past_max_steps_exits_with_the_limit_code(tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [bash("true"), bash("true"), {"text": "never"}])
    done = cli(tmp_path, "run", "Loop", "--script", str(script), "--max-steps", "1")
    assert done.returncode == 6, done.stderr
    assert "the turn ended limit" in one_line_error(done.stderr)


def test_a_model_error_exits_with_the_agent_error_code(tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [{"error": {"message": "the model fell over"}}])
    done = cli(tmp_path, "run", "Go", "--script", str(script))
    assert done.returncode == 1, done.stderr
    assert "the turn ended error" in one_line_error(done.stderr)


def test_timeout_aborts_the_turn_stores_its_end_and_exits_7(tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [bash("sleep 60"), {"text": "never"}])
    done = cli(tmp_path, "--json", "run", "Wait", "--script", str(script), "--timeout", "2s",
               "--keep")
    assert done.returncode == 7, done.stderr
    result = result_line(done.stdout)
    assert result["message"].startswith("timed out after 2 s, during step 1")
    printed = [line for line in json_lines(done.stdout) if line["type"] == "turn-end"]
    assert [line["reason"] for line in printed] == ["aborted"]
    stored = stored_events(tmp_path / "sessions.db", result["session_id"])
    assert stored[-1].type == "turn-end"
    assert stored[-1].reason == "aborted"


@pytest.mark.parametrize("keep", [False, True])
def test_ctrl_c_aborts_the_turn_and_ends_the_session_unless_kept(
        tmp_path: Path, image: str, keep: bool) -> None:
    script = write_script(tmp_path, [bash("sleep 60"), {"text": "never"}])
    process = popen_cli(tmp_path, "--json", "run", "Wait", "--script", str(script),
                        *(["--keep"] if keep else []))
    assert process.stdout is not None
    for line in process.stdout:  # wait until the command runs in the container
        if '"tool-running"' in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=90)
    assert process.returncode == 130, stderr
    result = result_line(stdout)
    assert result["message"].startswith("interrupted during step 1")
    stored = stored_events(tmp_path / "sessions.db", result["session_id"])
    assert stored[-1].type == "turn-end"
    assert stored[-1].reason == "aborted"
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        status = client.session(result["session_id"]).get_info().status
        assert status == ("idle" if keep else "ended")
        if keep:
            client.session(result["session_id"]).end()


def test_what_the_container_prints_reaches_the_terminal_without_control_characters(
        tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [
        bash(r"printf 'evil\033]0;owned\007\033[2J\rline\n'", "Look \x1b[31mred"),
        {"text": "Done."}])
    done = cli(tmp_path, "run", "Print", "--script", str(script), "--keep")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\x07" not in done.stdout
    assert "\r" not in done.stdout
    assert r"evil\x1b]0;owned\x07\x1b[2J" in done.stdout  # a \r only breaks the line
    assert r"Look \x1b[31mred" in done.stdout
    session_id = done.stdout.rsplit("(session ", 1)[1].split(")")[0]
    for command in ("messages", "events"):  # the same text, read back later
        shown = cli(tmp_path, "sessions", command, session_id)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout + shown.stderr
        if command == "messages":
            assert r"evil\x1b]0;owned\x07" in shown.stdout
            assert r"Look \x1b[31mred" in shown.stdout
    assert cli(tmp_path, "end", session_id).returncode == 0


def test_run_over_the_bridge_gives_the_same_run(tmp_path: Path, image: str) -> None:
    script = write_script(tmp_path, [
        bash("mkdir -p /artifacts && echo remote > /artifacts/r.txt"), {"text": "Done."}])
    store = tmp_path / "server.db"
    with served(tmp_path, store) as (_url, env):
        done = cli(tmp_path, "--json", "run", "Remote", "--script", str(script),
                   "--artifacts", "out", env=env)
        assert done.returncode == 0, done.stderr
        result = result_line(done.stdout)
        with SandboxClient(store=store, reap_orphans=False) as client:  # the server's store
            assert client.session(result["session_id"]).get_info().status == "ended"
    assert (tmp_path / "out" / "r.txt").read_text() == "remote\n"
    assert not (tmp_path / "sessions.db").exists()  # nothing ran embedded


# --- task files --------------------------------------------------------------------------------


def test_the_example_task_file_runs_end_to_end_with_its_artifact(tmp_path: Path,
                                                                 image: str) -> None:
    done = cli(tmp_path, "--json", "run", "--task", str(REPO / "examples" / "task.yaml"),
               "--ask", "once", "--artifacts", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    steps = [line for line in json_lines(done.stdout) if line["type"] == "run-step"
             and line["status"] == "passed"]
    assert [step["index"] for step in steps] == [1, 2, 3, 4]
    app = tmp_path / "out" / "dist" / "greet.pyz"
    assert app.stat().st_size > 100
    ran = subprocess.run(["python3", str(app), "ci"], capture_output=True, text=True,
                         check=True)
    assert ran.stdout == "hello, ci\n"


def task(folder: Path, steps: list[dict[str, Any]], **agent: Any) -> Path:
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump({
        "agent": {"model": "scripted", "script": [{"text": "ok"}], **agent},
        "steps": steps}, sort_keys=False))
    return path


@pytest.mark.parametrize(("step", "message"), [
    ({"name": "build", "shell": "exit 3"}, "step 1 (build) failed: the command exited 3, not 0"),
    ({"expect_artifact": {"glob": "dist/*.whl"}},
     "step 1 (expect_artifact \"dist/*.whl\") failed: no artifact matches 'dist/*.whl'"),
    ({"expect_file": {"path": "/workspace/REPORT.txt"}},
     "step 1 (expect_file \"/workspace/REPORT.txt\") failed: no file /workspace/REPORT.txt"),
    ({"shell": "sleep 30", "timeout": "1s"}, "failed: the command timed out after 1 s"),
])
def test_a_failing_check_stops_the_task_naming_the_step(
        tmp_path: Path, image: str, step: dict[str, Any], message: str) -> None:
    path = task(tmp_path, [step, {"shell": "touch /workspace/after"}])
    done = cli(tmp_path, "--json", "run", "--task", str(path), "--keep")
    assert done.returncode == 8, done.stderr
    assert message in one_line_error(done.stderr)
    result = result_line(done.stdout)
    assert result["steps"] == []
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        kept = client.session(result["session_id"])
        assert kept.shell("test -e /workspace/after").exit_code == 1  # step 2 never ran
        kept.end()


def test_expectations_that_hold_pass(tmp_path: Path, image: str) -> None:
    path = task(tmp_path, [
        {"shell": "mkdir -p /artifacts/a/b && printf 12345 > /artifacts/a/b/x.bin && "
                  "echo 'all good' > /workspace/R.txt"},
        {"shell": "exit 4", "expect_exit": 4},
        {"expect_artifact": {"glob": "**/*.bin", "min_bytes": 5, "max_bytes": 5}},
        {"expect_file": {"path": "R.txt", "contains": "all good"}},
        {"prompt": "Say ok"}])
    done = cli(tmp_path, "run", "--task", str(path))
    assert done.returncode == 0, done.stderr
    assert "ok: completed" in done.stdout


def test_artifact_sizes_outside_the_bounds_fail(tmp_path: Path, image: str) -> None:
    path = task(tmp_path, [
        {"shell": "mkdir -p /artifacts && printf 12345 > /artifacts/x.bin"},
        {"expect_artifact": {"glob": "*.bin", "min_bytes": 6}}])
    done = cli(tmp_path, "run", "--task", str(path))
    assert done.returncode == 8
    assert "x.bin is 5 bytes, under min_bytes 6" in one_line_error(done.stderr)


def test_a_command_step_runs_a_template(tmp_path: Path, image: str) -> None:
    commands = tmp_path / ".sandbox-sessions" / "commands"
    commands.mkdir(parents=True)
    (commands / "hello.md").write_text("Say hello to $1")
    path = task(tmp_path, [{"command": {"name": "hello", "arguments": "ci"}}])
    done = cli(tmp_path, "--json", "run", "--task", str(path))
    assert done.returncode == 0, done.stderr
    users = [line["message"] for line in json_lines(done.stdout)
             if line["type"] == "message-created" and line["message"]["role"] == "user"]
    assert [part["text"] for part in users[0]["parts"] if part["type"] == "text"] == [
        "Say hello to ci"]


def test_an_unknown_command_template_exits_not_found(tmp_path: Path, image: str) -> None:
    path = task(tmp_path, [{"command": {"name": "nope"}}])
    done = cli(tmp_path, "run", "--task", str(path))
    assert done.returncode == 3, done.stderr
    assert "nope" in one_line_error(done.stderr)


# --- bad usage: one line, the documented code, never a traceback --------------------------------


@pytest.mark.parametrize(("args", "code", "words"), [
    (["run", "hi", "--bogus"], 2, "No such option"),
    (["run"], 2, "give a PROMPT, or --task FILE"),
    (["run", "hi"], 2, "--model is required"),
    (["run", "hi", "--model", "scripted", "--script", "missing.yaml"], 3, "no script file"),
    (["run", "--task", "missing.yaml"], 3, "no task file at missing.yaml"),
    (["run", "hi", "--task", "t.yaml"], 2, "not both"),
    (["run", "hi", "--script", "model.yaml", "--timeout", "soon"], 2, "--timeout 'soon'"),
    (["run", "hi", "--script", "model.yaml", "--ask", "maybe"], 2, "'maybe' is not one of"),
    (["run", "hi", "--script", "model.yaml", "--upload", "nocolon"], 2, "--upload 'nocolon'"),
    (["run", "hi", "--script", "model.yaml", "--permissions", "bad.yaml"], 2,
     "bad.yaml:2: bash: "),
    (["run", "hi", "--script", "model.yaml", "--image", "no-such/image:1"], 3, "no-such/image"),
    (["run", "hi", "--harness", "claude-code", "--model", "openai/gpt-5"], 2,
     "the claude-code harness"),
    (["run", "hi", "--harness", "aider", "--model", "openai/gpt-5"], 2, "'aider' is not one of"),
])
def test_bad_usage_is_one_line_and_its_code(tmp_path: Path, image: str, args: list[str],
                                            code: int, words: str) -> None:
    write_script(tmp_path, [{"text": "hi"}])
    (tmp_path / "bad.yaml").write_text("'*': allow\nbash: sometimes\n")
    done = cli(tmp_path, *args)
    assert done.returncode == code, done.stderr
    assert words in one_line_error(done.stderr)
    assert done.stdout == ""


def test_a_malformed_task_file_names_its_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("agent: {model: scripted, script: [{text: hi}]}\nsteps:\n"
                    "  - shell: make\n    expect_exit: lots\n")
    done = cli(tmp_path, "run", "--task", str(path))
    assert done.returncode == 2
    assert f"{path}:4: steps[0].expect_exit: " in one_line_error(done.stderr)


def test_an_engine_that_does_not_answer_exits_4(tmp_path: Path) -> None:
    write_script(tmp_path, [{"text": "hi"}])
    env = cli_env(tmp_path / "sessions.db", DOCKER_HOST="unix:///nonexistent/docker.sock")
    done = cli(tmp_path, "run", "hi", "--script", "model.yaml", env=env)
    assert done.returncode == 4, done.stderr
    one_line_error(done.stderr)


def test_a_server_that_does_not_answer_exits_4(tmp_path: Path) -> None:
    write_script(tmp_path, [{"text": "hi"}])
    env = cli_env(tmp_path / "sessions.db", SANDBOX_SESSIONS_TOKEN="x" * 64)
    done = cli(tmp_path, "run", "hi", "--script", "model.yaml", "--url", "http://127.0.0.1:9",
               env=env)
    assert done.returncode == 4, done.stderr
    one_line_error(done.stderr)
    assert not (tmp_path / "sessions.db").exists()  # nothing fell back to running embedded


def test_ask_at_the_keyboard_on_a_terminal(tmp_path: Path, image: str) -> None:
    """On a terminal (a pty), a request is asked and answered at the keyboard."""
    import pty

    script = write_script(tmp_path, [bash("touch /workspace/made"), {"text": "Done."}])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(ASK))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the pty
        os.chdir(tmp_path)
        os.execve(sys.executable,
                  [sys.executable, "-m", "sandbox_sessions", "run", "Touch", "--script",
                   str(script), "--permissions", "rules.yaml", "--keep"],
                  cli_env(tmp_path / "sessions.db"))
    seen = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Allow?" in seen:
            os.write(fd, b"once\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    assert answered, text
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "answered once" in text
    session_id = text.rsplit("(session ", 1)[1].split(")")[0]
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        kept = client.session(session_id)
        assert kept.shell("test -e /workspace/made").exit_code == 0
        kept.end()


# --- a real provider's wire format, served on loopback --------------------------------------


def _anthropic_turn(*blocks: tuple[dict[str, Any], list[dict[str, Any]]], stop: str
                    ) -> list[bytes | str]:
    """An Anthropic Messages stream: each block's start, its deltas, its stop."""
    message: dict[str, Any] = {
        "id": "msg_cli", "type": "message", "role": "assistant", "content": [],
        "model": "claude-sonnet-4-5", "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 1}}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": message})]
    for index, (start, deltas) in enumerate(blocks):
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": body}) for body in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9},
                                     "delta": {"stop_reason": stop, "stop_sequence": None}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


def test_run_drives_a_real_provider_wire_format_and_the_key_stays_on_the_host(
        tmp_path: Path, image: str, http_server: CannedServer) -> None:
    """`--model anthropic/...` against a loopback server speaking Anthropic's Messages API:
    the tool call runs in the container, its output goes back to the model, and the key,
    sent to the provider, is nowhere in the container's environment."""
    key = "sk-ant-test-" + "k" * 24
    call = {"command": "env; echo from-the-box"}
    http_server.enqueue(
        Canned(chunks=_anthropic_turn(
            ({"type": "text", "text": ""}, [{"type": "text_delta", "text": "Looking."}]),
            ({"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}},
             [{"type": "input_json_delta", "partial_json": json.dumps(call)}]),
            stop="tool_use")),
        Canned(chunks=_anthropic_turn(
            ({"type": "text", "text": ""}, [{"type": "text_delta", "text": "All done."}]),
            stop="end_turn")))
    env = cli_env(tmp_path / "sessions.db", ANTHROPIC_BASE_URL=http_server.url,
                  ANTHROPIC_API_KEY=key)
    done = cli(tmp_path, "--json", "run", "Look around", "--model",
               "anthropic/claude-sonnet-4-5", "--agent", "build", env=env)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    ends = [line for line in lines if line["type"] == "tool-end"]
    output = ends[0]["part"]["state"]["output"]
    assert "from-the-box" in output
    assert key not in output
    assert "ANTHROPIC" not in output
    assert [r.path for r in http_server.requests] == ["/v1/messages", "/v1/messages"]
    assert all(r.headers["x-api-key"] == key for r in http_server.requests)
    sent = http_server.requests[1].json["messages"]
    results = [block for message in sent for block in message["content"]
               if isinstance(block, dict) and block.get("type") == "tool_result"]
    assert "from-the-box" in json.dumps(results)
    assert result_line(done.stdout)["exit_code"] == 0


def test_run_with_a_harness_drives_codex_in_the_box_and_downloads_its_artifact(
        tmp_path: Path, agents_image: str, http_server: CannedServer) -> None:
    """`run --harness codex`: Codex runs in the agents image, its command is asked (the
    permissions file says so) and answered by `--ask once`, and its artifact comes home."""
    from test_harness_codex import command_answer, text_answer

    key = "sk-test-" + "c" * 24
    command = "mkdir -p /artifacts && echo from-codex > /artifacts/made.txt"
    http_server.enqueue(command_answer(command), text_answer("Made it."))
    (tmp_path / "ask.yaml").write_text("bash: ask\n")
    env = cli_env(tmp_path / "sessions.db", OPENAI_BASE_URL=f"{http_server.url}/v1",
                  OPENAI_API_KEY=key)
    done = cli(tmp_path, "--json", "run", "Make the artifact", "--harness", "codex",
               "--model", "openai/scripted", "--permissions", "ask.yaml", "--ask", "once",
               "--artifacts", "out", env=env)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    asked = [line["request"] for line in lines if line["type"] == "permission-asked"]
    assert [(r["tool"], r["patterns"]) for r in asked] == [("bash", [command])]
    assert (result_line(done.stdout)["status"], result_line(done.stdout)["exit_code"]) == (
        "passed", 0)
    assert [line["reason"] for line in lines if line["type"] == "turn-end"] == ["completed"]
    assert (tmp_path / "out" / "made.txt").read_text() == "from-codex\n"
    assert all(r.headers["authorization"] == f"Bearer {key}" for r in http_server.requests)


# --- answers from another process -------------------------------------------------------------


def test_reply_and_answer_from_another_process_reach_an_embedded_run(
        tmp_path: Path, image: str) -> None:
    """`run --ask wait` leaves its requests to others: `sandbox-sessions reply` and `answer`,
    embedded in processes of their own on the same store, answer them, and the run goes on."""
    script = write_script(tmp_path, [
        bash("echo ran > /workspace/ran.txt"),
        {"tool_calls": [{"name": "question", "input": {
            "question": "Which colour?", "options": ["green", "red"], "allow_custom": False}}]},
        {"text": "finished"}])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(ASK))
    process = popen_cli(tmp_path, "--json", "run", "go", "--script", str(script),
                        "--permissions", "rules.yaml", "--tools", "bash,question",
                        "--ask", "wait", "--keep", "--timeout", "2m")
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []

    def until(kind: str) -> dict[str, Any]:
        assert process.stdout is not None
        while line := process.stdout.readline():
            lines.append(json.loads(line))
            if lines[-1]["type"] == kind:
                return lines[-1]
        raise AssertionError(f"the run ended before a {kind}: {lines}")

    try:
        asked = until("permission-asked")
        session_id, request_id = asked["session_id"], asked["request"]["id"]
        assert one_line_error(cli(tmp_path, "reply", session_id, "per_nosuch", "once").stderr)
        done = cli(tmp_path, "reply", session_id, request_id, "once")
        assert done.returncode == 0, done.stderr
        replied = until("permission-replied")
        assert replied["request_id"] == request_id
        assert replied["reply"] == "once"
        question = until("question-asked")["request"]["id"]
        refused = cli(tmp_path, "answer", session_id, question, "blue")  # not an option
        assert refused.returncode == 2, refused.stderr
        assert "must be one of the options" in one_line_error(refused.stderr)
        done = cli(tmp_path, "answer", session_id, question, "green")
        assert done.returncode == 0, done.stderr
        result = until("run-result")
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.communicate()
    assert result["exit_code"] == 0
    answered = [line for line in lines if line["type"] == "question-replied"]
    assert [line["answer"] for line in answered] == ["green"]
    late = cli(tmp_path, "reply", session_id, request_id, "once")  # answered, turn over
    assert late.returncode == 3
    with SandboxClient(store=tmp_path / "sessions.db", reap_orphans=False) as client:
        kept = client.session(session_id)
        assert kept.get_file("/workspace/ran.txt") == "ran\n"
        kept.end()

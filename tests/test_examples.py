"""Every example in `examples/` runs, offline, as a user would run it: each in a subprocess
against real containers (and a real server for the bridge example), its output checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import REPO, cli_env, json_lines, served

from sandbox_sessions import SandboxClient

pytestmark = pytest.mark.docker

EXAMPLES = REPO / "examples"


def run_example(cwd: Path, *command: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `command` with the venv's `sandbox-sessions` and python first on PATH."""
    env = dict(env if env is not None else cli_env(cwd / "sessions.db"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_python_api_example_builds_and_downloads_the_artifact(tmp_path: Path,
                                                                   image: str) -> None:
    done = run_example(tmp_path, sys.executable, str(EXAMPLES / "build_artifact.py"), "out")
    assert done.returncode == 0, done.stderr
    assert "report: hello, sandbox" in done.stdout
    assert (tmp_path / "out" / "dist" / "greet.pyz").stat().st_size > 100


def test_the_cli_example_builds_the_package_and_brings_it_home(tmp_path: Path,
                                                               image: str) -> None:
    done = run_example(tmp_path, "bash", str(EXAMPLES / "build_with_cli.sh"), "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("hello, ci\n")  # the downloaded zipapp, run on the host
    assert "[permission] answered once" in done.stdout
    assert "ok: completed" in done.stdout


def test_the_github_actions_workflow_runs_its_cli_steps(tmp_path: Path, image: str) -> None:
    """The workflow's own `run:` lines, run by bash in a copy of the repository's examples
    (the steps that install Python and the package are the runner's: here they are given)."""
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    steps: list[dict[str, Any]] = workflow["jobs"]["build"]["steps"]
    uses = [step["uses"] for step in steps if "uses" in step]
    assert uses == ["actions/checkout@v4", "actions/setup-python@v5",
                    "actions/upload-artifact@v4"]
    runs = [step["run"] for step in steps if "run" in step]
    assert runs[0] == 'python -m pip install "sandbox-sessions[cli]"'
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    for script in runs[1:]:
        done = run_example(tmp_path, "bash", "-eo", "pipefail", "-c", script)
        assert done.returncode == 0, (script, done.stderr)
    events = json_lines((tmp_path / "events.jsonl").read_text())
    assert events[-1]["type"] == "run-result"
    assert events[-1]["exit_code"] == 0
    assert (tmp_path / "out" / "dist" / "greet.pyz").stat().st_size > 100
    upload = steps[-1]["with"]["path"].split()
    assert upload == ["out/", "events.jsonl"]
    assert all((tmp_path / p).exists() for p in upload)


def test_the_permission_callbacks_example_allows_a_write_and_rejects_a_delete(
        tmp_path: Path, image: str) -> None:
    done = run_example(tmp_path, sys.executable, str(EXAMPLES / "permission_callbacks.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "allowed once: echo tidy > notes.txt",
        "rejected: rm -rf /workspace/*",
        "",
        "turn ended completed: Understood: I left the files in place.",
        "notes.txt: tidy",
    ]


def test_the_command_template_example_fills_its_template_in_the_sandbox(
        tmp_path: Path, image: str) -> None:
    done = run_example(tmp_path, sys.executable, str(EXAMPLES / "command_template.py"))
    assert done.returncode == 0, done.stderr
    assert "def greet(name: str) -> str:" in done.stdout  # @$1 inlined the sandbox file
    assert " for error handling. It has 5 lines." in done.stdout  # $2 and !`wc -l`
    assert done.stdout.rstrip().endswith("answer: greet() is small and needs no error "
                                         "handling.")
    assert "command review: Review a file" in done.stderr


def test_the_watch_example_streams_a_turn_over_the_bridge_from_a_second_process(
        tmp_path: Path, image: str) -> None:
    store = tmp_path / "server.db"
    with served(tmp_path, store) as (url, env):
        token = env["SANDBOX_SESSIONS_TOKEN"]
        with SandboxClient(base_url=url, token=token) as client:
            agent = client.agent("watched", model="scripted", script=[
                {"text": "Counting.", "tool_calls": [
                    {"name": "bash", "input": {"command": "seq 3"}}]},
                {"text": "Counted to three."}])
            with agent.create_session(title="watched") as session:
                watcher = subprocess.Popen(
                    [sys.executable, str(EXAMPLES / "watch_events.py"), session.id,
                     "--until-turn-end"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
                try:
                    result = session.send("Count to three")
                    stdout, stderr = watcher.communicate(timeout=60)
                finally:
                    watcher.kill()
    assert result.reason == "completed"
    assert watcher.returncode == 0, stderr
    events = json_lines(stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none lost
    text = "".join(e["delta"] for e in events if e["type"] == "text-delta")
    assert text == "Counting.Counted to three."
    ends = [e for e in events if e["type"] == "tool-end"]
    assert ends[0]["part"]["state"]["output"] == "1\n2\n3\n"
    assert events[-1]["type"] == "turn-end"
    assert events[-1]["reason"] == "completed"

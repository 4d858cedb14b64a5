"""Each harness in the box against the same CLI run directly on the host.

Issue 10's measure: the time from `send()` to the first event of the CLI's answer (its first
text delta) and to the turn's end, for Claude Code, Codex and opencode running in a session's
container (network `none`, the model reached through the proxy), against the same CLI binary
(from the npm cache the agents image was built from) started on the host with the same model
settings, timed from its start to the first line of its output carrying the answer's text and
to its exit. The model is `_wire_upstream.Upstream`: a loopback server that answers at once,
so the figures are the CLIs' own cost and ours, not a model's. Each run is a fresh
conversation on both sides (a new session in the box, created before the clock starts). The
container gets `--cpus` cores (2 by default, as the host's CLI has; sessions default to 1,
which slows a CLI whose start is CPU-bound, such as opencode's).

    .venv/bin/python benchmarks/bench_harness.py [--runs 5] [--only claude-code,codex]
                                                 [--cpus 2] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
from _bench import report
from _wire_upstream import TEXT, Upstream

from sandbox_sessions import AgentConfig, AsyncSandboxClient
from sandbox_sessions._types import Event
from sandbox_sessions.agent.harness._claude import claude_env
from sandbox_sessions.agent.harness._opencode import ENV as OPENCODE_ENV
from sandbox_sessions.agent.harness._opencode import opencode_config
from sandbox_sessions.sandbox._agent_images import AGENT_CLIS, default_cache_dir

PROMPT = "Say hello."
KEY = "bench-key"
MODELS = {"claude-code": "anthropic/claude-bench", "codex": "openai/gpt-bench",
          "opencode": "openai/gpt-bench"}


def program(name: str) -> Path:
    """The CLI's binary as npm installed it on the host (the agents image's source)."""
    cli = AGENT_CLIS[name]
    found = (default_cache_dir() / name / cli.version / "node_modules" / cli.native
             / cli.program)
    if not found.is_file():
        raise SystemExit(f"{found} is missing: run `sandbox-sessions images build --with "
                         f"{name}` first")
    return found


def host_command(name: str, upstream: str, home: Path) -> tuple[list[str], dict[str, str]]:
    """The CLI's one-shot command on the host, and its environment, for one prompt."""
    binary = str(program(name))
    model = MODELS[name].split("/", 1)[1]
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "NO_COLOR": "1"}
    if name == "claude-code":
        env = {**claude_env(upstream, KEY, model), **base}
        return [binary, "-p", "--output-format", "stream-json", "--verbose",
                "--include-partial-messages", f"--model={model}", PROMPT], env
    if name == "codex":
        provider = (f'{{name="up", base_url="{upstream}/v1", wire_api="responses", '
                    'env_key="BENCH_KEY", request_max_retries=0, stream_max_retries=0}')
        return [binary, "exec", "--json", "--skip-git-repo-check", "-c", f'model="{model}"',
                "-c", 'model_provider="up"', "-c", f"model_providers.up={provider}",
                "-c", 'sandbox_mode="danger-full-access"', PROMPT], \
            {**base, "CODEX_HOME": str(home / ".codex"), "BENCH_KEY": KEY}
    config = opencode_config(AgentConfig(), model, f"{upstream}/v1", KEY)
    return [binary, "run", "--format", "json", PROMPT], \
        {**base, **OPENCODE_ENV, "OPENCODE_CONFIG_CONTENT": json.dumps(config)}


def median(rows: list[tuple[float, float]], index: int) -> float:
    """The median of column `index`, in milliseconds."""
    return statistics.median(row[index] for row in rows) * 1000


def run_on_host(name: str, upstream: str) -> tuple[float, float]:
    """Seconds to the first output line holding the answer's text, and to the exit."""
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        (home / ".codex").mkdir()
        argv, env = host_command(name, upstream, home)
        started = time.perf_counter()
        first = None
        with subprocess.Popen(argv, env=env, cwd=folder, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if first is None and TEXT.split()[0].encode() in line:
                    first = time.perf_counter() - started
            stderr = process.stderr.read() if process.stderr else b""
        ended = time.perf_counter() - started
    if first is None or process.returncode != 0:
        raise RuntimeError(f"{name} on the host: exit {process.returncode}, no answer: "
                           f"{stderr.decode(errors='replace')[-2000:]}")
    return first, ended


async def run_in_box(client: AsyncSandboxClient, name: str, upstream: str, cpus: float
                     ) -> tuple[float, float]:
    """Seconds from `send()` to the first text delta, and to the turn's end."""
    base_url = upstream if name == "claude-code" else f"{upstream}/v1"
    agent = client.agent(f"bench-{name}", harness=name,  # type: ignore[arg-type]
                         model=MODELS[name], config=AgentConfig(base_url=base_url),
                         cpus=cpus)
    async with await agent.create_session() as session:
        first: list[float] = []
        started = time.perf_counter()

        def seen(event: Event) -> None:
            if event.type == "text-delta" and not first:
                first.append(time.perf_counter() - started)

        result = await session.send(PROMPT, on_event=seen)
        ended = time.perf_counter() - started
    if result.reason != "completed" or not first:
        raise RuntimeError(f"{name} in the box: {result.reason}: {result.error}")
    return first[0], ended


async def measure(names: list[str], runs: int, cpus: float) -> dict[str, float]:
    upstream = Upstream()
    figures: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            async with AsyncSandboxClient(store=Path(folder) / "s.db",
                                          api_keys={"anthropic": KEY, "openai": KEY}
                                          ) as client:
                for name in names:
                    host = [await anyio.to_thread.run_sync(run_on_host, name, upstream.url)
                            for _ in range(runs)]
                    box = [await run_in_box(client, name, upstream.url, cpus)
                           for _ in range(runs)]
                    figures.update({
                        f"{name}_host_first_text_ms": median(host, 0),
                        f"{name}_box_first_text_ms": median(box, 0),
                        f"{name}_first_text_ratio": median(box, 0) / median(host, 0),
                        f"{name}_host_end_ms": median(host, 1),
                        f"{name}_box_end_ms": median(box, 1),
                        f"{name}_end_ratio": median(box, 1) / median(host, 1),
                    })
    finally:
        upstream.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="claude-code,codex,opencode")
    parser.add_argument("--cpus", type=float, default=2.0,
                        help="the container's CPU limit (the sessions' default is 1; the "
                             "host's CLI may use both cores of this machine)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    report(anyio.run(measure, names, args.runs, args.cpus), args.json, digits=2)


if __name__ == "__main__":
    main()

"""What the harness tests share: waiting for a CLI's command to run, and searching the
container for the model key and for processes a run left behind."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from real_model import REQUIRE_MODEL, ModelUnavailable, check_installed, start_server

from sandbox_sessions import AgentConfig, AsyncSandboxClient, AsyncSessionHandle, SendResult
from sandbox_sessions._types import Event, HarnessName, TextDeltaEvent, TurnEndEvent
from sandbox_sessions.agent.harness._process import RUN_MARKER

STARTED = "echo started > /workspace/started.txt"
"""What a scripted command runs first, so a test knows it is running."""
SEARCHED = ("/home/sandbox", "/workspace", "/tmp")
"""Where a CLI may write files: searched for the key."""


async def wait_started(session: AsyncSessionHandle, seen: Sequence[object]) -> None:
    """Wait (90 s at most) until the scripted command wrote `/workspace/started.txt`."""
    for _ in range(450):
        started = await session.shell("cat /workspace/started.txt 2>/dev/null")
        if started.stdout == "started\n":
            return
        await anyio.sleep(0.2)
    pytest.fail(f"the command never started: {list(seen)}")


async def processes(session: AsyncSessionHandle) -> str:
    """Every process's environment and argv (NUL-separated), read on the host: a search run
    in the container would carry what it looks for in its own argv."""
    found = await session.shell("for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do "
                                "cat $f; echo; done 2>/dev/null", timeout=60)
    return found.stdout


async def files_holding(session: AsyncSessionHandle, secret: str) -> list[str]:
    """The files under `SEARCHED` that hold `secret` (the pattern `ab[c]` finds `abc` and
    not itself, so the search's own argv does not count)."""
    pattern = secret[:-1] + f"[{secret[-1]}]"
    found = await session.shell(f"grep -rlI -e '{pattern}' {' '.join(SEARCHED)} "
                                "2>/dev/null; true", timeout=60)
    return found.stdout.splitlines()


async def search_finds_a_planted_key(session: AsyncSessionHandle, path: str) -> list[str]:
    """Plant a string of the key's shape at `path` and search for it as for the key: the
    search can fail."""
    control = "sk-test-control-" + secrets.token_hex(16)
    await session.put_file(path, control)
    return await files_holding(session, control)


async def left_behind(session: AsyncSessionHandle, *names: str) -> str:
    """The processes still carrying a run's marker, the scripted `sleep 300`, and any of
    `names` (the CLI's)."""
    pgreps = "".join(f"pgrep {name}; " for name in names)
    left = await session.shell(
        f"for f in /proc/[0-9]*/environ; do grep -q {RUN_MARKER}= $f 2>/dev/null "
        f"&& echo $f; done; pgrep -f 'sleep 30[0]'; {pgreps}true")
    return left.stdout


def ends(events: Sequence[Event]) -> list[TurnEndEvent]:
    """The turn-end events among `events`."""
    return [event for event in events if isinstance(event, TurnEndEvent)]


async def collect(session: AsyncSessionHandle, prompt: str, **callbacks: Any
                  ) -> tuple[SendResult, list[Event]]:
    """Send `prompt` (four minutes at most): the result and every event of the turn."""
    events: list[Event] = []
    with anyio.fail_after(240):
        result = await session.send(prompt, on_event=events.append, **callbacks)
    return result, events


@dataclass
class Aborted:
    """What `abort_while_running` saw."""

    events: list[Event] = field(default_factory=list)
    processes: str = ""
    """Every process's environment and argv while the command ran."""
    files: list[str] = field(default_factory=list)
    """The files holding the key (or what else was hidden) while the command ran."""
    left: str = ""
    """What `left_behind` found after the abort."""
    files_after: list[str] = field(default_factory=list)


def host_address(url: str) -> str:
    """`127.0.0.1:<port>` of a loopback URL on the host (the upstream's address)."""
    return url.split("://", 1)[1].split("/", 1)[0]


async def abort_while_running(session: AsyncSessionHandle, key: str, cli: str,
                              hidden: Sequence[str] = ()) -> Aborted:
    """Stream a turn whose scripted command starts with `STARTED` and then sleeps; once it
    runs, look for the key (and anything else the test hides) in the processes and files,
    abort, and look again."""
    seen = Aborted()

    async def run() -> None:
        async for event in session.stream("sleep a while"):
            seen.events.append(event)

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await wait_started(session, seen.events)
        seen.processes = await processes(session)
        seen.files = [path for secret in (key, *hidden)
                      for path in await files_holding(session, secret)]
        assert await session.abort()
        group.cancel_scope.cancel()
    seen.left = await left_behind(session, cli)
    seen.files_after = [path for secret in (key, *hidden)
                        for path in await files_holding(session, secret)]
    return seen


async def real_text_turn(store: Path, log: Path, harness: HarnessName, model: str, *,
                         n_ctx: int, n_predict: int = -1, base: str = "openai",
                         config: AgentConfig | None = None) -> None:
    """One text turn of `harness` in the agents image against SmolLM2 (xllamacpp, its
    answers capped at `n_predict` tokens), through the model proxy; checks that it completed
    with streamed text, exactly one turn-end, and the proxy's tokens in the metrics. The
    CLI's prompt is thousands of tokens: `n_ctx` must hold it."""
    try:
        gguf = check_installed()
    except ModelUnavailable as exc:
        if REQUIRE_MODEL:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server = start_server(gguf, log, n_ctx=n_ctx, n_predict=n_predict)
    base_url = server.openai_base_url if base == "openai" else server.base_url
    try:
        async with AsyncSandboxClient(store=store, api_keys={base: "sk-none"}) as client:
            agent = client.agent(harness, harness=harness, model=model, config=(
                config or AgentConfig()).model_copy(update={"base_url": base_url}))
            async with await agent.create_session() as session:
                result, events = await collect(session, "Say hello in one short sentence.")
                metrics = await session.get_metrics()
    finally:
        server.stop()
    assert result.reason == "completed", (result.error, server.log_tail())
    deltas = [e.delta for e in events if isinstance(e, TextDeltaEvent)]
    assert deltas
    assert result.text.strip()
    assert "".join(deltas).endswith(result.text)
    assert [end.reason for end in ends(events)] == ["completed"]
    assert result.tokens.input > 1000  # as the proxy read them from the model's answers
    assert result.tokens.output > 0
    assert (metrics.tokens.input, metrics.tokens.output) == (result.tokens.input,
                                                             result.tokens.output)

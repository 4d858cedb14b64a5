"""Agent bridge throughput and overhead, in-process, with the scripted model.

1. Events per second from a scripted turn to a `stream()` consumer: one model call streaming
   N text deltas; the clock runs from `stream()` to the `turn-end` event (target: 50,000/s).
2. The overhead the bridge adds to one tool call over a bare `shell()`: a turn whose one step
   makes K `bash: true` calls, minus the same turn with none, divided by K, compared with the
   median of K bare `shell("true")` calls (target: under 2 ms).

    .venv/bin/python benchmarks/bench_agent.py [--deltas 100000] [--calls 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle


async def events_per_second(client: AsyncSandboxClient, deltas: int) -> dict[str, float]:
    text = " ".join(["word"] * deltas)
    agent = client.agent("bench-events", model="scripted", tools=[],
                         script=[{"text": text, "usage": {"input": 1, "output": 1}}])
    session = await agent.create_session(title="events")
    try:
        count = 0
        started = time.perf_counter()
        async for _event in session.stream("go"):
            count += 1
        seconds = time.perf_counter() - started
    finally:
        await session.end()
    return {"events": count, "seconds": seconds, "events_per_second": count / seconds}


async def _turn_seconds(session: AsyncSessionHandle) -> float:
    started = time.perf_counter()
    result = await session.send("go")
    assert result.reason == "completed", result
    return time.perf_counter() - started


async def tool_call_overhead(
    client: AsyncSandboxClient, calls: int, rounds: int
) -> dict[str, float]:
    # Loaded and empty turns alternate, so both see the same (growing) history.
    loaded_turn: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "bash", "input": {"command": "true"}}] * calls},
        {"text": "done"},
    ]
    script = [entry for _ in range(rounds) for entry in [*loaded_turn, {"text": "done"}]]
    agent = client.agent("bench-tools", model="scripted", tools=["bash"], script=script)
    session = await agent.create_session(title="tools")
    try:
        await session.shell("true")
        bare = []
        for _ in range(calls):
            started = time.perf_counter()
            await session.shell("true")
            bare.append(time.perf_counter() - started)
        loaded, empty = [], []
        for _ in range(rounds):
            loaded.append(await _turn_seconds(session))
            empty.append(await _turn_seconds(session))
    finally:
        await session.end()
    per_call = (statistics.median(loaded) - statistics.median(empty)) / calls
    bare_p50 = statistics.median(bare)
    return {"bare_shell_p50_ms": bare_p50 * 1000, "tool_call_ms": per_call * 1000,
            "overhead_ms": (per_call - bare_p50) * 1000}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        async with AsyncSandboxClient(store=Path(folder) / "bench.db") as client:
            events = await events_per_second(client, args.deltas)
            tools = await tool_call_overhead(client, args.calls, args.rounds)
    return {"events": events, "tool_calls": tools}


def report(results: dict[str, Any]) -> None:
    events, tools = results["events"], results["tool_calls"]
    rate = events["events_per_second"]
    print(f"stream: {events['events']:,} events in {events['seconds']:.3f} s = {rate:,.0f}/s "
          f"(target >= 50,000/s: {'met' if rate >= 50_000 else 'NOT met'})")
    print(f"bare shell('true') p50: {tools['bare_shell_p50_ms']:.2f} ms; one bash tool call "
          f"in a turn: {tools['tool_call_ms']:.2f} ms; overhead {tools['overhead_ms']:.2f} ms "
          f"(target < 2 ms: {'met' if tools['overhead_ms'] < 2 else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    options = parser.parse_args()
    outcome = anyio.run(main, options)
    report(outcome)
    if options.json:
        Path(options.json).write_text(json.dumps(outcome, indent=2) + "\n")
    sys.exit(0)

"""What workspace snapshots cost a turn, and what a revert takes.

In-process, scripted model, the default image: the median time of a text-only turn (one
snapshot, at the prompt) and of a turn with one bash call (a second snapshot and its patch
after the call) and of a text-only turn whose model takes 100 ms to answer (the snapshot is
taken meanwhile), with `AgentConfig.snapshots` on and off, in a workspace of `--files` small
files; then `revert()` to the first prompt and `diff()`. Reported as milliseconds and as the
ratio on/off within the run (this machine is noisy: compare ratios, not absolutes).

    .venv/bin/python benchmarks/bench_snapshots.py [--files 1000] [--turns 9] [--json out]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _bench import report, timed_turns

from sandbox_sessions import AgentConfig, AsyncSandboxClient

SLOW_MODEL = 0.1
"""Seconds a 'slow' model waits before answering: the prompt's snapshot is taken meanwhile,
so it should cost such a turn nothing."""
TOOL_TURN: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "echo $RANDOM > touched.txt"}}]},
    {"text": "touched"}]


async def _one(client: AsyncSandboxClient, files: int, turns: int, snapshots: bool
               ) -> dict[str, float]:
    answer: dict[str, Any] = {"text": "pong", "delay": SLOW_MODEL}
    script = [{"text": "pong"}] * (turns + 1) + TOOL_TURN * (turns + 1) + [answer] * turns
    agent = client.agent(f"bench-snap-{snapshots}", model="scripted",
                         permissions={"*": "allow"},
                         config=AgentConfig(script=script, snapshots=snapshots))
    async with await agent.create_session() as session:
        await session.shell(f"mkdir -p src && for i in $(seq {files}); do "
                            "echo \"line $i\" > src/f$i.txt; done")
        await session.send("warm up")  # the first snapshot adds every file once
        text = await timed_turns(session, turns)
        await session.send("warm up the tool")
        tool = await timed_turns(session, turns)
        slow = await timed_turns(session, turns)
        figures = {"text_turn_ms": statistics.median(text) * 1000,
                   "tool_turn_ms": statistics.median(tool) * 1000,
                   "slow_turn_ms": statistics.median(slow) * 1000}
        if snapshots:
            first = (await session.get_messages())[0]
            started = time.perf_counter()
            await session.diff()
            figures["diff_ms"] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await session.revert(first.id)
            figures["revert_ms"] = (time.perf_counter() - started) * 1000
    return figures


async def measure(files: int, turns: int, store: Path) -> dict[str, float]:
    async with AsyncSandboxClient(store=store) as client:
        off = await _one(client, files, turns, snapshots=False)
        on = await _one(client, files, turns, snapshots=True)
    return {
        "files": files,
        "text_turn_off_ms": off["text_turn_ms"], "text_turn_on_ms": on["text_turn_ms"],
        "text_turn_on_over_off": on["text_turn_ms"] / off["text_turn_ms"],
        "tool_turn_off_ms": off["tool_turn_ms"], "tool_turn_on_ms": on["tool_turn_ms"],
        "tool_turn_on_over_off": on["tool_turn_ms"] / off["tool_turn_ms"],
        "slow_turn_off_ms": off["slow_turn_ms"], "slow_turn_on_ms": on["slow_turn_ms"],
        "slow_turn_on_over_off": on["slow_turn_ms"] / off["slow_turn_ms"],
        "diff_ms": on["diff_ms"], "revert_ms": on["revert_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="small files in the workdir")
    parser.add_argument("--turns", type=int, default=9, help="timed turns of each kind")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = anyio.run(measure, args.files, args.turns, Path(folder) / "snap.db")
    report(figures, args.json, digits=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

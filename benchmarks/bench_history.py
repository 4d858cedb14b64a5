"""What a long session costs: a trivial turn and `get_messages()` as the history grows.

Issue 8's measure, in-process with the scripted model: a trivial turn (one short answer) is
timed at the start of a session; then turns of `--words` words each (one text delta per word)
grow the history to about `--deltas` deltas; then the trivial turn is timed again, and
`get_messages()` too (of 84 messages: 12 trivial turns first, 20 big ones, 10 trivial ones).
As the early and late turns are minutes apart, the grown session's trivial turns are then
also timed alternately with those of a fresh session (`alternated_*`): the same load for both.
The store's size per delta is the growth of the SQLite file (WAL folded in) divided by the
deltas written, and the same for the pages in use (the file less its free pages: space freed
when a turn's deltas are folded is reused by later writes, so the file is a high-water mark).

Targets (issue 8), met since the projection is kept in memory and deltas are folded (see
docs/performance.md, "A long session"): the late trivial turn at most 1.5x the early one;
`get_messages()` of 80 messages at most 20 ms; a finished message's text kept once, not once
per delta.

    .venv/bin/python benchmarks/bench_history.py [--words 5000] [--deltas 100000] [--json out]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _bench import report, timed_turns

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle

TRIVIAL = 10
"""Trivial turns timed at each end (their median is reported)."""


async def _alternated(grown: AsyncSessionHandle, fresh: AsyncSessionHandle, count: int
                      ) -> tuple[list[float], list[float]]:
    """Trivial turns of the grown session and of a fresh one, one after the other: both see
    the same load of a shared machine, which moves within a run."""
    await timed_turns(fresh, 2)  # its provider, its first reads
    late, early = [], []
    for _ in range(count):
        late += await timed_turns(grown, 1)
        early += await timed_turns(fresh, 1)
    return late, early


async def _timed_reads(session: AsyncSessionHandle, count: int) -> tuple[list[float], int]:
    seconds, messages = [], 0
    for _ in range(count):
        started = time.perf_counter()
        messages = len(await session.get_messages())
        seconds.append(time.perf_counter() - started)
    return seconds, messages


def _store_bytes(path: Path) -> tuple[int, int]:
    """The store file's size, and the bytes of its pages in use (not on the free list)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (db.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
    return path.stat().st_size, (pages - free) * size


async def measure(words: int, deltas: int, store: Path) -> dict[str, Any]:
    big_turns = max(1, deltas // words)
    text = " ".join(["word"] * words)
    trivial = {"text": "pong", "usage": {"input": 1, "output": 1}}
    big = {"text": text, "usage": {"input": 1, "output": 1}}
    # The fresh session plays the same script from its start: the same agent config (which
    # holds the script, big texts and all: every `get_info()` reads it) for both sessions.
    script = [trivial] * (TRIVIAL + 2) + [big] * big_turns + [trivial] * TRIVIAL * 2
    async with AsyncSandboxClient(store=store) as client:
        agent = client.agent("bench-history", model="scripted", tools=[], script=script)
        async with await agent.create_session(title="history") as session, \
                await agent.create_session(title="fresh") as fresh:
            early = (await timed_turns(session, TRIVIAL + 2))[2:]  # as the fresh one's
            early_reads, early_messages = await _timed_reads(session, 3)
            empty = _store_bytes(store)
            started = time.perf_counter()
            for _ in range(big_turns):
                await session.send("write")
            growing = time.perf_counter() - started
            late = await timed_turns(session, TRIVIAL)
            late_reads, late_messages = await _timed_reads(session, 3)
            grown = _store_bytes(store)
            alternated_late, alternated_fresh = await _alternated(session, fresh, TRIVIAL)
    written = big_turns * words
    return {
        "words_per_turn": words, "big_turns": big_turns, "deltas": written,
        "trivial_turn_early_ms": statistics.median(early) * 1000,
        "trivial_turn_late_ms": statistics.median(late) * 1000,
        "late_over_early": statistics.median(late) / statistics.median(early),
        "alternated_late_ms": statistics.median(alternated_late) * 1000,
        "alternated_fresh_ms": statistics.median(alternated_fresh) * 1000,
        "alternated_late_over_fresh":
            statistics.median(alternated_late) / statistics.median(alternated_fresh),
        "get_messages_early_ms": statistics.median(early_reads) * 1000,
        "messages_early": early_messages,
        "get_messages_late_ms": statistics.median(late_reads) * 1000,
        "messages_late": late_messages,
        "store_bytes_per_delta": (grown[0] - empty[0]) / written,
        "store_bytes_in_use_per_delta": (grown[1] - empty[1]) / written,
        "growing_seconds": growing,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=5000, help="text deltas per big turn")
    parser.add_argument("--deltas", type=int, default=100_000, help="deltas to grow by")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = anyio.run(measure, args.words, args.deltas, Path(folder) / "history.db")
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

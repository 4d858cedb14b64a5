"""What the benchmarks share: timing turns, and printing figures (JSON when asked)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from sandbox_sessions import AsyncSessionHandle


async def timed_turns(session: AsyncSessionHandle, count: int, prompt: str = "go"
                      ) -> list[float]:
    """Seconds each of `count` turns took, sent one after the other; each must complete."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        result = await session.send(prompt)
        seconds.append(time.perf_counter() - started)
        assert result.reason == "completed", result
    return seconds


def report(figures: Mapping[str, float | int], path: Path | None, *, digits: int = 1) -> None:
    """Print one `name value` line per figure (floats to `digits` places) and, given `path`,
    write them there as JSON."""
    width = max(map(len, figures), default=0) + 2
    for name, value in figures.items():
        shown = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
        print(f"{name:{width}}{shown}")
    if path is not None:
        path.write_text(json.dumps(dict(figures), indent=2))

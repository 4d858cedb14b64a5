"""Folding a stored chunk's deltas: pure functions over a chunk's JSON, for any store.

A chunk is a JSON array of consecutive events of one session. A *run* is a maximal sequence of
consecutive `text-delta` events (or `reasoning-delta` events) of one message's part. Folding
makes each run of two or more one event: the run's last delta (its seq, time and other fields)
carrying the whole run's text, and, for reasoning, the run's last non-empty signature. That is
exactly what the projection makes of the run (it joins the deltas of a part, and keeps its last
non-empty signature), so the session's messages are the same before and after.

The store's events stay schema-agnostic here: a chunk is read as plain JSON, and only the
fields a delta has are looked at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ChunkError", "Folded", "fold_chunk"]

_DELTAS = frozenset({"text-delta", "reasoning-delta"})


class ChunkError(ValueError):
    """A chunk that is not an array of events with integer seqs (and deltas with text)."""


@dataclass(frozen=True, slots=True)
class Folded:
    """A chunk folded: its new JSON, and each run folded as (its first seq, the seq of the
    event that now stands for it)."""

    data: bytes
    runs: list[tuple[int, int]]
    removed: int


def fold_chunk(data: bytes) -> Folded | None:
    """The chunk `data` with its runs of deltas folded; None when it has none to fold.

    Raises `ChunkError` when `data` is not a chunk of events.
    """
    try:
        events = json.loads(data)
    except ValueError as exc:
        raise ChunkError(f"not JSON: {exc}") from exc
    if not isinstance(events, list):
        raise ChunkError("not an array of events")
    folded: list[Any] = []
    runs: list[tuple[int, int]] = []
    start = 0
    while start < len(events):
        end = _run_end(events, start)
        if end - start > 1:
            folded.append(_joined(events[start:end]))
            runs.append((_seq(events[start]), _seq(events[end - 1])))
        else:
            folded.append(events[start])
        start = end
    if not runs:
        return None
    text = json.dumps(folded, ensure_ascii=False, separators=(",", ":"))
    return Folded(text.encode(), runs, len(events) - len(folded))


def _run_end(events: list[Any], start: int) -> int:
    """The index after the run that starts at `start` (start + 1 for an event of no run)."""
    key = _run_key(events[start])
    end = start + 1
    if key is None:
        return end
    while end < len(events) and _run_key(events[end]) == key \
            and _seq(events[end]) == _seq(events[end - 1]) + 1:
        end += 1
    return end


def _run_key(event: Any) -> tuple[str, str, str] | None:
    if not isinstance(event, dict) or event.get("type") not in _DELTAS:
        return None
    kind, message_id, part_id = event["type"], event.get("message_id"), event.get("part_id")
    if not isinstance(message_id, str) or not isinstance(part_id, str) \
            or not isinstance(event.get("delta"), str):
        raise ChunkError(f"a delta event without message_id, part_id or text: {event!r:.200}")
    return kind, message_id, part_id


def _seq(event: Any) -> int:
    seq = event.get("seq") if isinstance(event, dict) else None
    if not isinstance(seq, int):
        raise ChunkError(f"an event without an integer seq: {event!r:.200}")
    return seq


def _joined(run: list[dict[str, Any]]) -> dict[str, Any]:
    last = dict(run[-1])
    last["delta"] = "".join(event["delta"] for event in run)
    signatures = [event["signature"] for event in run if event.get("signature")]
    if signatures:
        last["signature"] = signatures[-1]
    return last

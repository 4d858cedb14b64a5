"""What `bench_bridge.py` times: one function per measurement, each returning its samples.

Two families:

- Through our client (`AsyncSandboxClient`), the same code for both of our transports
  (in-process, or HTTP to `sandbox-sessions serve`): `client_events` and `client_shell`.
- Through one plain HTTP client (httpx and httpx-sse, JSON decoded with `json.loads`), the
  same code for both servers, ours and opencode's: `raw_*`. Here the client costs both the
  same, so the differences are the servers'.

Every sample is a `time.perf_counter()` wall time in this process, in seconds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from sandbox_sessions import AsyncSessionHandle
from sandbox_sessions._types import AgentConfig, CreateSessionRequest

__all__ = [
    "Peer",
    "StreamSample",
    "client_events",
    "client_shell",
    "opencode_peer",
    "ours_peer",
    "scripted_turns",
]

WORD = "word "


@dataclass
class StreamSample:
    """One turn read from an event stream: every event from the request that started the
    turn to the one that says it ended, and how they split by type."""

    seconds: float
    events: int
    types: Counter[str] = field(default_factory=Counter)
    first: float = 0.0
    """Seconds from the start to the first event: the turn's start, mostly."""

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds


def scripted_turns(deltas: int) -> list[dict[str, Any]]:
    """A script of two turns of one step: one word, then `deltas` words (one text delta
    each: the scripted model streams a text word by word)."""
    return [{"text": WORD, "usage": {"input": 1, "output": 1}},
            {"text": WORD * deltas, "usage": {"input": 1, "output": deltas}}]


async def client_events(session: AsyncSessionHandle, *, turns: int) -> list[StreamSample]:
    """`turns` turns of the session's (scripted) agent, each read with `session.stream()`;
    the clock runs from `stream()` to the `turn-end` event."""
    samples = []
    for _ in range(turns):
        types: Counter[str] = Counter()
        first = 0.0
        started = time.perf_counter()
        async for event in session.stream("go"):
            first = first or time.perf_counter() - started
            types[event.type] += 1
        samples.append(StreamSample(time.perf_counter() - started, sum(types.values()), types,
                                    first))
    return samples


async def client_shell(session: AsyncSessionHandle, *, iterations: int,
                       warmup: int = 3) -> list[float]:
    """`shell("true")` round trips, after `warmup` untimed ones."""
    for _ in range(warmup):
        await session.shell("true")
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        result = await session.shell("true")
        samples.append(time.perf_counter() - started)
        assert result.exit_code == 0, result
    return samples


# --- one plain HTTP client for both servers ----------------------------------------------------


class Peer:
    """A server as the plain client sees it: create a session, run a command, run a turn
    and read its events. `ours_peer` and `opencode_peer` fill in the routes."""

    name = ""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def create_session(self) -> str:
        """A new session's id, once the server says it is ready."""
        raise NotImplementedError

    async def end_session(self, session_id: str) -> None:
        """Remove the session (its container, for ours)."""
        raise NotImplementedError

    async def get_session(self, session_id: str) -> None:
        """Read the session's record: the server's floor for one request."""
        raise NotImplementedError

    async def shell(self, session_id: str, *, command: str) -> None:
        """Run `command` and read the whole answer."""
        raise NotImplementedError

    async def turn(self, session_id: str, *, prompt: str) -> StreamSample:
        """Start a turn; read the event stream until the turn has ended."""
        raise NotImplementedError


class _Ours(Peer):
    name = "ours"

    def __init__(self, http: httpx.AsyncClient, *, model_url: str) -> None:
        super().__init__(http)
        config = AgentConfig(model="openai/bench", base_url=model_url, tools=[])
        self._create = CreateSessionRequest(agent="bench", title="bench", config=config
                                            ).model_dump(mode="json", exclude_none=True)

    async def create_session(self) -> str:
        response = await self.http.post("/sessions", json=self._create)
        response.raise_for_status()
        return str(response.json()["id"])

    async def end_session(self, session_id: str) -> None:
        (await self.http.delete(f"/sessions/{session_id}")).raise_for_status()

    async def get_session(self, session_id: str) -> None:
        (await self.http.get(f"/sessions/{session_id}")).raise_for_status()

    async def shell(self, session_id: str, *, command: str) -> None:
        response = await self.http.post(f"/sessions/{session_id}/shell",
                                        json={"command": command})
        response.raise_for_status()  # the body (NDJSON lines) was read whole by post()

    async def turn(self, session_id: str, *, prompt: str) -> StreamSample:
        types: Counter[str] = Counter()
        first = 0.0
        started = time.perf_counter()
        response = await self.http.post(f"/sessions/{session_id}/turns",
                                        json={"prompt": prompt})
        response.raise_for_status()
        turn = response.json()
        headers = {"Last-Event-ID": str(turn["after"])}
        async with aconnect_sse(self.http, "GET", f"/sessions/{session_id}/events",
                                headers=headers) as source:
            async for sse in source.aiter_sse():
                event = json.loads(sse.data)
                first = first or time.perf_counter() - started
                types[event["type"]] += 1
                if event["type"] == "turn-end" and event.get("message_id") == turn["message_id"]:
                    break
        return StreamSample(time.perf_counter() - started, sum(types.values()), types, first)


class _OpenCode(Peer):
    name = "opencode"

    async def create_session(self) -> str:
        response = await self.http.post("/session", json={})
        response.raise_for_status()
        return str(response.json()["id"])

    async def end_session(self, session_id: str) -> None:
        (await self.http.delete(f"/session/{session_id}")).raise_for_status()

    async def get_session(self, session_id: str) -> None:
        (await self.http.get(f"/session/{session_id}")).raise_for_status()

    async def shell(self, session_id: str, *, command: str) -> None:
        response = await self.http.post(f"/session/{session_id}/shell",
                                        json={"agent": "build", "command": command})
        response.raise_for_status()

    async def turn(self, session_id: str, *, prompt: str) -> StreamSample:
        # `/event` carries every session's events and only live ones: subscribe first.
        types: Counter[str] = Counter()
        first = 0.0
        async with aconnect_sse(self.http, "GET", "/event") as source:
            events = source.aiter_sse()
            await anext(events)  # server.connected: the subscription is live
            started = time.perf_counter()
            response = await self.http.post(f"/session/{session_id}/prompt_async",
                                             json={"parts": [{"type": "text", "text": prompt}]})
            response.raise_for_status()
            async for sse in events:
                event = json.loads(sse.data)
                first = first or time.perf_counter() - started
                types[event["type"]] += 1
                if (event["type"] == "session.idle"
                        and event["properties"].get("sessionID") == session_id):
                    break
        return StreamSample(time.perf_counter() - started, sum(types.values()), types, first)


@asynccontextmanager
async def _http(url: str, *, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(120.0, connect=10.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as http:
        yield http


@asynccontextmanager
async def ours_peer(url: str, *, token: str | None, model_url: str) -> AsyncIterator[Peer]:
    """Our bridge at `url`, its sessions' model the fake one at `model_url`."""
    async with _http(url, token=token) as http:
        yield _Ours(http, model_url=model_url)


@asynccontextmanager
async def opencode_peer(url: str) -> AsyncIterator[Peer]:
    """opencode's server at `url`."""
    async with _http(url, token=None) as http:
        yield _OpenCode(http)


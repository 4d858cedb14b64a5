"""Budgets: `max_steps` and `token_budget` end a turn with reason `limit`; the session's usage
is in its record. Real containers, the scripted model, both transports (see conftest.py)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_sessions import AsyncSandboxClient, Event, InvalidArgument, PermissionRules, Tokens
from sandbox_sessions.store import SQLiteStore

ALLOW: PermissionRules = {"bash": {"*": "allow"}}


def _step(command: str = "true", *, usage: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {"tool_calls": [{"name": "bash", "input": {"command": command}}]}
    if usage:
        entry["usage"] = {"input": usage - 20, "output": 20}
    return entry


async def _events_of_turn(client: AsyncSandboxClient, session_id: str, after: int) -> list[Event]:
    seen = []
    async for event in client.session(session_id).events(after=after):
        seen.append(event)
        if event.type == "turn-end":
            return seen
    raise AssertionError("unreachable")


@pytest.mark.docker
@pytest.mark.anyio
async def test_max_steps_ends_the_turn_with_limit(client: AsyncSandboxClient, image: str) -> None:
    agent = client.agent("build", model="scripted", script=[_step()] * 5 + [{"text": "never"}],
                         image=image, permissions=ALLOW, max_steps=2)
    async with await agent.create_session() as session:
        result = await session.send("loop")
        events = await _events_of_turn(client, session.id, 0)

    assert (result.reason, result.error) == ("limit", "the turn reached its 2 steps (max_steps)")
    assert sum(event.type == "step-start" for event in events) == 2


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_token_budget_stops_the_turn_and_the_next_ones(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [_step(usage=120)] * 4 + [{"text": "done", "usage": {"input": 5, "output": 5}}]
    agent = client.agent("build", model="scripted", script=script, image=image,
                         permissions=ALLOW, token_budget=250)
    async with await agent.create_session() as session:
        first = await session.send("work")
        info = await session.get_info()
        head = max(event.seq for event in await _events_of_turn(client, session.id, 0))
        second = await session.send("more")
        again = await _events_of_turn(client, session.id, head)
        after = await session.get_info()

    # checked before each model call: 120, 240, then 360 >= 250 stops it
    assert (first.reason, first.error) == ("limit", "the session's token budget (250) is spent")
    assert first.tokens.total == 360
    assert info.tokens == Tokens(input=300, output=60)
    assert info.tokens.total == 360
    assert info.config.token_budget == 250
    assert second.reason == "limit"
    assert not any(event.type == "step-start" for event in again)  # no model call at all
    assert after.tokens == info.tokens


@pytest.mark.docker
@pytest.mark.anyio
async def test_usage_adds_up_over_turns_without_a_budget(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [{"text": "a", "usage": {"input": 10, "output": 2}},
              {"text": "b", "usage": {"input": 30, "output": 4, "cache_read": 6}}]
    agent = client.agent("build", model="scripted", script=script, image=image)
    async with await agent.create_session() as session:
        assert (await session.get_info()).tokens == Tokens()
        await session.send("one")
        await session.send("two")
        info = await session.get_info()
        metrics = await session.get_metrics()
    assert info.tokens == Tokens(input=40, output=6, cache_read=6) == metrics.tokens
    assert info.cost == metrics.cost


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), [("token_budget", 0), ("token_budget", -5),
                                              ("max_steps", 0)])
async def test_a_bad_budget_is_refused(embedded_client: AsyncSandboxClient, field: str,
                                       value: int) -> None:
    with pytest.raises(InvalidArgument, match=field):
        embedded_client.agent("build", model="scripted", **{field: value})  # type: ignore[arg-type]


def _add_many(store_path: str, session_id: str, times: int) -> None:
    async def main() -> None:
        store = SQLiteStore(store_path)
        try:
            for _ in range(times):
                await store.add_usage(session_id, Tokens(input=1, output=2), 0.5)
        finally:
            await store.aclose()

    anyio.run(main)


@pytest.mark.docker
@pytest.mark.anyio
async def test_usage_added_by_two_processes_at_once_is_all_counted(
    embedded_client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    session = await embedded_client.agent("build", image=image).create_session()
    try:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_add_many, args=(str(store_path), session.id, 100))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            await anyio.to_thread.run_sync(worker.join, 120)
        assert [worker.exitcode for worker in workers] == [0, 0]
        info = await session.get_info()
        assert (info.tokens, info.cost) == (Tokens(input=200, output=400), 100.0)
    finally:
        await session.end()

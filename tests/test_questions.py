"""The `question` tool: the agent asks, the turn waits, the user answers (or a timeout policy
does). Real containers and the scripted model, both transports (see conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Event,
    InvalidArgument,
    QuestionNotFound,
    QuestionRequest,
    SendResult,
    ToolPart,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


def _ask(question: str = "Which colour?", **extra: Any) -> list[dict[str, Any]]:
    call = {"name": "question", "input": {"question": question, **extra}}
    return [{"tool_calls": [call]}, {"text": "thanks"}]


async def _session(client: AsyncSandboxClient, image: str, script: list[dict[str, Any]],
                   **config: Any) -> AsyncSessionHandle:
    agent = client.agent("build", model="scripted", script=script, image=image,
                         tools=["question", "bash"], config=AgentConfig(**config))
    return await agent.create_session()


async def _first_question(session: AsyncSessionHandle) -> QuestionRequest:
    async for event in session.events():
        if event.type == "question-asked":
            return event.request
    raise AssertionError("unreachable")


def _tool_part(result: SendResult) -> ToolPart:
    parts = [p for p in result.parts if isinstance(p, ToolPart)]
    assert len(parts) == 1
    return parts[0]


@pytest.fixture
async def asked(client: AsyncSandboxClient, image: str) -> AsyncIterator[AsyncSessionHandle]:
    options = ["red", "blue"]
    async with await _session(client, image, _ask(options=options, allow_custom=False)) as s:
        yield s


async def test_a_question_waits_for_its_answer(asked: AsyncSessionHandle) -> None:
    outcome: list[SendResult] = []

    async def send() -> None:
        outcome.append(await asked.send("paint it"))

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        request = await _first_question(asked)
        assert (request.question, request.options, request.allow_custom) == (
            "Which colour?", ["red", "blue"], False)
        assert (await asked.get_info()).status == "busy"  # the turn waits
        with pytest.raises(InvalidArgument, match="one of the options"):
            await asked.reply_to_question(request.id, "green")  # still pending after this
        with pytest.raises(InvalidArgument):
            await asked.reply_to_question(request.id, "")
        with pytest.raises(QuestionNotFound):
            await asked.reply_to_question("que_unknown", "red")
        await asked.reply_to_question(request.id, "blue")
    with pytest.raises(QuestionNotFound):
        await asked.reply_to_question(request.id, "red")  # answered already

    (result,) = outcome
    part = _tool_part(result)
    assert (result.reason, result.text) == ("completed", "thanks")
    assert (part.state.status, part.state.output) == (
        "completed", "The user answered: blue")
    replies = [e async for e in _until_turn_end(asked) if e.type == "question-replied"]
    assert [(e.request_id, e.answer, e.timed_out) for e in replies] == [
        (request.id, "blue", False)]


async def _until_turn_end(session: AsyncSessionHandle, *, turns: int = 1
                          ) -> AsyncIterator[Event]:
    async for event in session.events():
        yield event
        if event.type == "turn-end":
            turns -= 1
            if turns == 0:
                return


async def test_a_callback_answers(client: AsyncSandboxClient, image: str) -> None:
    seen: list[QuestionRequest] = []

    def answer(request: QuestionRequest) -> str:  # sync: runs in a worker thread
        seen.append(request)
        return "a custom answer"

    async with await _session(client, image, _ask("Name?") + _ask("Again?")) as session:
        first = await session.send("go", on_question=answer)

        async def answer_async(request: QuestionRequest) -> str:
            return f"async to {request.question}"

        second = await session.send("go", on_question=answer_async)
    assert [r.question for r in seen] == ["Name?"]
    assert _tool_part(first).state.output == "The user answered: a custom answer"
    assert _tool_part(second).state.output == "The user answered: async to Again?"


@pytest.mark.parametrize(("policy", "expected"), [
    ("error", ("error", "the user did not answer in time; decide without them, or stop")),
    ("first", ("completed", "The user answered: red")),
])
async def test_an_unanswered_question_times_out_by_policy(
    client: AsyncSandboxClient, image: str, policy: str, expected: tuple[str, str]
) -> None:
    script = _ask(options=["red", "blue"])
    async with await _session(client, image, script, question_timeout=0.5,
                              on_question_timeout=policy) as session:
        result = await session.send("go")
        replies = [e async for e in _until_turn_end(session) if e.type == "question-replied"]
    state = _tool_part(result).state
    text = state.error if state.status == "error" else state.output
    assert (result.reason, result.text) == ("completed", "thanks")  # the model goes on
    assert (state.status, text) == expected
    answer = None if policy == "error" else "red"
    assert [(e.answer, e.timed_out) for e in replies] == [(answer, True)]


async def test_a_malformed_or_denied_question_fails_the_call_and_asks_nothing(
    client: AsyncSandboxClient, image: str
) -> None:
    script = _ask(options=["same", "same"]) + _ask(options=["x" * 501])
    async with await _session(client, image, script) as session:
        duplicate = await session.send("one")
        long_option = await session.send("two")
        asked = [e.type async for e in _until_turn_end(session, turns=2)]
    agent = client.agent("build", model="scripted", script=_ask(), image=image,
                         tools=["question"], permissions={"question": "deny"})
    async with await agent.create_session() as session:
        denied = await session.send("three")
        asked += [e.type async for e in _until_turn_end(session)]

    errors = [_tool_part(r).state.error or "" for r in (duplicate, long_option, denied)]
    assert "distinct" in errors[0]
    assert "500 characters" in errors[1]
    assert errors[2].startswith("denied by the session's permission rules")
    assert "question-asked" not in asked

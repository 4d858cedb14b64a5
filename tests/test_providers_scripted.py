"""The scripted provider: deterministic turns from a list, a JSON file or a YAML file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox_sessions import InvalidArgument
from sandbox_sessions.providers import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    ProviderError,
    ReasoningDelta,
    ScriptedProvider,
    TextContent,
    TextDelta,
    ToolCall,
    ToolResultContent,
    ToolSpec,
    Usage,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The providers are backend-neutral: every async test runs on asyncio and on trio."""
    return str(request.param)


REQUEST = ModelRequest(
    model="scripted",
    system="You are terse.",
    messages=(ModelMessage(role="user", content=(TextContent("List the files."),)),),
)


async def collect(provider: ScriptedProvider, req: ModelRequest = REQUEST) -> list[ModelEvent]:
    return [event async for event in provider.stream(req)]


async def drain(provider: ScriptedProvider, seen: list[ModelEvent]) -> None:
    """Collect events into `seen` until the stream ends or fails."""
    async for event in provider.stream(REQUEST):
        seen.append(event)


def texts(events: list[ModelEvent], kind: type[TextDelta | ReasoningDelta]) -> list[str]:
    return [event.text for event in events if isinstance(event, kind)]


# --- playing ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_text_is_streamed_in_pieces_that_join_back_exactly() -> None:
    scripted = "  Hello,\tworld!\n\nTwo  spaces and a trailing newline\n"
    provider = ScriptedProvider([{"text": scripted}])
    events = await collect(provider)

    pieces = texts(events, TextDelta)
    assert len(pieces) > 3
    assert "".join(pieces) == scripted
    assert isinstance(events[-2], Usage)
    assert events[-1] == Finish("stop")


@pytest.mark.anyio
async def test_reasoning_comes_first_then_text_then_calls() -> None:
    entry = {
        "reasoning": "I should list the files.",
        "text": "Listing.",
        "tool_calls": [
            {"name": "bash", "input": {"command": "ls"}},
            {"name": "read", "input": {"path": "a.txt"}, "id": "toolu_mine"},
        ],
        "usage": {"input": 100, "output": 20, "reasoning": 8, "cache_read": 50},
    }
    events = await collect(ScriptedProvider([entry]))

    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "ReasoningDelta", "ReasoningDelta", "ReasoningDelta", "ReasoningDelta", "ReasoningDelta",
        "TextDelta", "ToolCall", "ToolCall", "Usage", "Finish",
    ]
    assert "".join(texts(events, ReasoningDelta)) == "I should list the files."
    assert events[-4:] == [
        ToolCall("call_0_0", "bash", {"command": "ls"}),
        ToolCall("toolu_mine", "read", {"path": "a.txt"}),
        Usage(input=100, output=20, reasoning=8, cache_read=50),
        Finish("tool_calls"),
    ]


@pytest.mark.anyio
async def test_each_call_plays_the_next_entry_and_then_the_script_runs_out() -> None:
    provider = ScriptedProvider([{"text": "one"}, {"tool_calls": [{"name": "ls"}]}])

    assert texts(await collect(provider), TextDelta) == ["one"]
    second = await collect(provider)
    assert second[0] == ToolCall("call_1_0", "ls", {})
    assert provider.remaining == 0
    with pytest.raises(ProviderError, match="script exhausted after 2 calls") as caught:
        await collect(provider)
    assert not caught.value.retryable
    assert provider.requests == [REQUEST, REQUEST]


@pytest.mark.anyio
async def test_usage_is_estimated_when_absent() -> None:
    request = ModelRequest(
        model="scripted",
        system="x" * 40,
        messages=(
            ModelMessage(role="user", content=(TextContent("y" * 40),)),
            ModelMessage(role="assistant", content=(ToolCall("c", "ls", {}),)),
            ModelMessage(role="user", content=(ToolResultContent("c", "z" * 40),)),
        ),
        tools=(ToolSpec("ls", "List files.", {"type": "object"}),),
    )
    script = [{"text": "a" * 80, "reasoning": "b" * 20}] * 2
    provider = ScriptedProvider(script)
    usage = (await collect(provider, request))[-2]

    assert isinstance(usage, Usage)
    assert 35 <= usage.input <= 45  # about 155 characters, at ~4 a token
    assert usage.reasoning == 5
    assert usage.output == 25  # 20 for the text, 5 for the reasoning
    assert (await collect(provider, request))[-2] == usage  # deterministic


@pytest.mark.anyio
async def test_an_error_entry_fails_the_call_after_its_text() -> None:
    provider = ScriptedProvider([
        {"text": "Partial answer", "error": {"message": "overloaded", "status": 529}},
        {"error": {"message": "bad request", "status": 400}},
        {"error": {"message": "no status"}},
    ])
    seen: list[ModelEvent] = []
    with pytest.raises(ProviderError, match="overloaded") as caught:
        await drain(provider, seen)
    assert "".join(texts(seen, TextDelta)) == "Partial answer"
    assert (caught.value.status, caught.value.retryable) == (529, True)

    with pytest.raises(ProviderError) as caught:
        await collect(provider)
    assert (caught.value.status, caught.value.retryable) == (400, False)
    with pytest.raises(ProviderError) as caught:
        await collect(provider)
    assert (caught.value.status, caught.value.retryable) == (None, False)


@pytest.mark.anyio
async def test_a_delay_is_waited_before_the_first_event() -> None:
    provider = ScriptedProvider([{"text": "late", "delay": 0.15}])
    started = time.monotonic()
    await collect(provider)

    assert time.monotonic() - started >= 0.15


@pytest.mark.anyio
async def test_an_empty_entry_is_an_empty_answer() -> None:
    events = await collect(ScriptedProvider([{}]))

    assert [type(event) for event in events] == [Usage, Finish]
    assert events[-1] == Finish("stop")


# --- files -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_json_script_file(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([
        {"tool_calls": [{"name": "bash", "input": {"command": "ls"}}]},
        {"text": "There is one file."},
    ]))
    provider = ScriptedProvider(path)

    assert (await collect(provider))[0] == ToolCall("call_0_0", "bash", {"command": "ls"})
    assert texts(await collect(provider), TextDelta) == ["There ", "is ", "one ", "file."]


@pytest.mark.anyio
async def test_a_yaml_script_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(
        "- reasoning: The user wants a file.\n"
        "  tool_calls:\n"
        "    - name: write\n"
        "      id: call_w\n"
        "      input: {path: hello.txt, content: \"hi\\n\"}\n"
        "- text: |\n"
        "    Wrote hello.txt.\n"
        "  usage: {input: 10, output: 4}\n"
    )
    provider = ScriptedProvider(str(path))

    first = await collect(provider)
    assert ToolCall("call_w", "write", {"path": "hello.txt", "content": "hi\n"}) in first
    second = await collect(provider)
    assert "".join(texts(second, TextDelta)) == "Wrote hello.txt.\n"
    assert second[-2:] == [Usage(input=10, output=4), Finish("stop")]


# --- malformed scripts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ({"text": "hi"}, "must be a list of entries"),
        ("", "cannot read the script"),
        ([{"text": "ok"}, {"txt": "typo"}], "script entry 1: txt: Extra inputs"),
        ([{"text": 42}], "script entry 0: text: Input should be a valid string"),
        ([{"tool_calls": [{"input": {}}]}], "script entry 0: tool_calls.0.name: Field required"),
        ([{"tool_calls": {"name": "ls"}}], "script entry 0: tool_calls"),
        ([{"usage": {"input": 1}}], "script entry 0: usage.output: Field required"),
        ([{"delay": -1}], "script entry 0: delay"),
        ([{"error": {"status": 500}}], "script entry 0: error.message"),
        (["just text"], "script entry 0 must be a mapping"),
    ],
)
def test_a_malformed_script_is_refused_naming_the_entry(script: Any, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ScriptedProvider(script)

    assert expected in str(caught.value)


def test_an_unreadable_or_invalid_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the script"):
        ScriptedProvider(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "unterminated]')
    with pytest.raises(InvalidArgument, match="is not valid"):
        ScriptedProvider(broken)
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("- text: [unclosed\n")
    with pytest.raises(InvalidArgument, match="is not valid"):
        ScriptedProvider(bad_yaml)
    not_a_list = tmp_path / "map.yaml"
    not_a_list.write_text("text: hi\n")
    with pytest.raises(InvalidArgument, match=r"list of entries in '.*map\.yaml', not dict"):
        ScriptedProvider(not_a_list)
    wrong_entry = tmp_path / "entry.yaml"
    wrong_entry.write_text("- text: ok\n- tool_calls: [{name: ls, input: [1]}]\n")
    with pytest.raises(InvalidArgument, match=r"script entry 1 in '.*entry\.yaml'"):
        ScriptedProvider(wrong_entry)

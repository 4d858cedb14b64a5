"""A harness agent through the session API, both transports: what it is made of, and what
it refuses with `NotSupported` rather than doing nothing (revert, unrevert, summarize).
The turns of each CLI are tested in `test_harness_<cli>.py`."""

from __future__ import annotations

import pytest

from sandbox_sessions import (
    AGENTS_IMAGE,
    AssistantMessage,
    AsyncSandboxClient,
    InvalidArgument,
    NotSupported,
)
from sandbox_sessions._types import TurnEndEvent
from sandbox_sessions.agent.harness import harness

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def test_a_harness_agent_runs_in_the_agents_image_with_its_cli(
    client: AsyncSandboxClient, agents_image: str
) -> None:
    agent = client.agent("oc", harness="opencode", model="openai/local")
    assert (agent.config.harness, agent.sandbox.image) == ("opencode", AGENTS_IMAGE)
    async with await agent.create_session() as session:
        info = await session.get_info()
        assert (info.config.harness, info.sandbox.image) == ("opencode", agents_image)
        found = await session.shell("command -v opencode claude codex")
        assert found.stdout.split() == ["/usr/local/bin/opencode", "/usr/local/bin/claude",
                                        "/usr/local/bin/codex"]


async def test_an_image_given_is_kept_and_builtin_is_the_default(
    client: AsyncSandboxClient, image: str
) -> None:
    assert client.agent("a", harness="codex", model="openai/m", image=image).sandbox.image \
        == image
    plain = client.agent("b", model="scripted", script=[{"text": "hi"}])
    assert (plain.config.harness, plain.sandbox.image) == ("builtin", image)


@pytest.mark.parametrize(("name", "provider", "accepted", "refused"), [
    ("claude-code", "anthropic", ["anthropic/claude-sonnet-4-5"],
     ["openai/gpt-4.1", "scripted", "anthropic/"]),
    ("codex", "openai", ["openai/gpt-5", "openai-responses/gpt-5"],
     ["anthropic/claude-sonnet-4-5", "scripted", "openai/", "gpt-5"]),
    ("opencode", "openai", ["openai/gpt-5"],
     ["anthropic/claude-sonnet-4-5", "scripted", "openai/", "gpt-5"]),
])
def test_each_cli_takes_the_models_of_its_wire_format_only(
    name: str, provider: str, accepted: list[str], refused: list[str]
) -> None:
    bridge = harness(name)
    assert (bridge.name, bridge.provider) == (name, provider)
    for model in accepted:
        bridge.check_model(model)
    for model in refused:
        with pytest.raises(InvalidArgument, match=name):
            bridge.check_model(model)


async def test_an_unknown_harness_or_a_model_the_cli_cannot_use_is_refused(
    client: AsyncSandboxClient,
) -> None:
    with pytest.raises(InvalidArgument, match="harness"):
        client.agent("x", harness="aider", model="openai/m")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="claude-code"):
        client.agent("x", harness="claude-code", model="openai/gpt-5")
    with pytest.raises(InvalidArgument, match="codex"):
        client.agent("x", harness="codex", model="anthropic/claude-sonnet-4-5")
    with pytest.raises(InvalidArgument, match="opencode"):
        client.agent("x", harness="opencode", model="scripted")


async def test_a_turn_on_a_model_the_cli_cannot_use_is_refused_before_it_starts(
    client: AsyncSandboxClient, agents_image: str
) -> None:
    """A command template's `model` runs that turn on it: one the CLI cannot use is refused
    by the service, before anything is stored."""
    client.add_command("ask-claude", "hello", model="anthropic/claude-sonnet-4-5")
    agent = client.agent("cx", harness="codex", model="openai/gpt-5")
    async with await agent.create_session() as session:
        with pytest.raises(InvalidArgument, match="codex harness"):
            await session.run_command("ask-claude")
        assert await session.get_messages() == []


async def test_revert_unrevert_and_summarize_are_not_supported_and_change_nothing(
    client: AsyncSandboxClient, agents_image: str
) -> None:
    agent = client.agent("cc", harness="claude-code", model="anthropic/claude-sonnet-4-5")
    async with await agent.create_session() as session:
        with pytest.raises(NotSupported, match="claude-code session cannot revert"):
            await session.revert("msg_any")
        with pytest.raises(NotSupported, match="cannot unrevert"):
            await session.unrevert()
        with pytest.raises(NotSupported, match="cannot summarize"):
            await session.summarize()
        assert await session.get_messages() == []


async def test_a_turn_without_a_key_for_its_model_ends_with_an_error_naming_it(
    client: AsyncSandboxClient, agents_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    agent = client.agent("cc", harness="claude-code", model="anthropic/claude-sonnet-4-5")
    async with await agent.create_session() as session:
        ends = []
        async for event in session.stream("hello"):
            if isinstance(event, TurnEndEvent):
                ends.append(event)
        assert [(end.reason, end.error) for end in ends] == [
            ("error", "no API key for 'anthropic': set ANTHROPIC_API_KEY or pass api_key")]
        (_, answer) = await session.get_messages()
        assert isinstance(answer, AssistantMessage)
        assert answer.error == ends[0].error

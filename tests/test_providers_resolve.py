"""`resolve_provider`: from `provider/model` names to providers; and what the package exports."""

from __future__ import annotations

import httpx
import pytest
from servers import Canned, CannedServer, sse_data

from sandbox_sessions import InvalidArgument, providers
from sandbox_sessions.providers import (
    AnthropicProvider,
    ModelMessage,
    ModelRequest,
    OpenAIProvider,
    ScriptedProvider,
    TextContent,
    TextDelta,
    resolve_provider,
)
from sandbox_sessions.providers import base as providers_base
from sandbox_sessions.providers._resolve import resolve_endpoint

ENV_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_openai_with_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    provider, name = resolve_provider("openai/gpt-4.1")

    assert isinstance(provider, OpenAIProvider)
    assert name == "gpt-4.1"
    assert provider.base_url == "https://api.openai.com/v1"


def test_anthropic_with_a_key_and_url_given() -> None:
    provider, name = resolve_provider(
        "anthropic/claude-sonnet-4-5",
        api_keys={"anthropic": "sk-ant"},
        base_urls={"anthropic": "http://127.0.0.1:9/"},
    )

    assert isinstance(provider, AnthropicProvider)
    assert name == "claude-sonnet-4-5"
    assert provider.base_url == "http://127.0.0.1:9"


def test_the_model_name_keeps_its_own_slashes() -> None:
    provider, name = resolve_provider(
        "openai/Qwen/Qwen3-8B", base_urls={"openai": "http://localhost:8000/v1"}
    )

    assert isinstance(provider, OpenAIProvider)
    assert name == "Qwen/Qwen3-8B"


def test_openai_needs_no_key_for_a_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    provider, name = resolve_provider("openai/llama3.2")

    assert isinstance(provider, OpenAIProvider)
    assert provider.base_url == "http://localhost:11434/v1"
    assert name == "llama3.2"


@pytest.mark.parametrize(
    ("model", "variable"),
    [("openai/gpt-4.1", "OPENAI_API_KEY"), ("anthropic/claude-opus-4-1", "ANTHROPIC_API_KEY")],
)
def test_a_missing_key_names_the_variable_to_set(model: str, variable: str) -> None:
    with pytest.raises(InvalidArgument, match=variable):
        resolve_provider(model)


def test_anthropic_needs_a_key_even_with_a_base_url() -> None:
    with pytest.raises(InvalidArgument, match="ANTHROPIC_API_KEY"):
        resolve_provider("anthropic/claude", base_urls={"anthropic": "http://localhost:1"})


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4.1", "must be named 'provider/model'"),
        ("openai/", "must be named 'provider/model'"),
        ("/gpt-4.1", "must be named 'provider/model'"),
        ("", "must be named 'provider/model'"),
        ("gemini/gemini-2.5-pro", "unknown provider 'gemini'"),
        ("openai-chat/gpt-4.1", "unknown provider 'openai-chat'"),
    ],
)
def test_bad_names_are_refused(model: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        resolve_provider(model, api_keys={"openai": "k"})


def test_scripted_models() -> None:
    provider, name = resolve_provider("scripted", script=[{"text": "hi"}])
    assert isinstance(provider, ScriptedProvider)
    assert name == "scripted"

    provider, name = resolve_provider("scripted/demo-1", script=[])
    assert isinstance(provider, ScriptedProvider)
    assert name == "demo-1"

    with pytest.raises(InvalidArgument, match="needs a script"):
        resolve_provider("scripted")


@pytest.mark.anyio
async def test_the_shared_client_is_used(http_server: CannedServer) -> None:
    stream = sse_data(
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]},
        "[DONE]",
    )
    http_server.enqueue(Canned(chunks=stream))
    async with httpx.AsyncClient(headers={"x-shared": "yes"}) as client:
        provider, name = resolve_provider(
            "openai/local", base_urls={"openai": http_server.url}, http_client=client
        )
        request = ModelRequest(
            model=name, system=None,
            messages=(ModelMessage(role="user", content=(TextContent("Hi"),)),),
        )
        events = [event async for event in provider.stream(request)]

    assert events[0] == TextDelta("ok")
    assert http_server.requests[0].headers["x-shared"] == "yes"
    assert "authorization" not in http_server.requests[0].headers


def test_the_package_exports_the_protocol_types_and_providers() -> None:
    names = providers.__all__

    assert names == sorted(names, key=lambda name: (not name[:1].isupper(), name))
    assert len(names) == len(set(names))
    assert set(providers_base.__all__) <= set(names)
    for name in names:
        assert getattr(providers, name) is not None, name
    assert {
        "OpenAIProvider", "ResponsesProvider", "AnthropicProvider", "ScriptedProvider",
        "resolve_provider",
    } <= set(names)


def test_the_model_proxy_s_key_and_base_url_are_chosen_as_the_providers_choose_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    assert resolve_endpoint("anthropic") == ("sk-ant-env", "https://api.anthropic.com")
    assert resolve_endpoint("anthropic", api_key="given", base_url="http://127.0.0.1:9/") == (
        "given", "http://127.0.0.1:9")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    assert resolve_endpoint("openai") == (None, "http://127.0.0.1:8/v1")  # a local server
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(InvalidArgument, match="OPENAI_API_KEY"):
        resolve_endpoint("openai")
    with pytest.raises(InvalidArgument, match="unknown provider"):
        resolve_endpoint("scripted")

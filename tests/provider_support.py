"""What the provider tests share: requests to send, and ways to read a provider's stream."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_sessions.providers.base import (
    ModelEvent,
    ModelMessage,
    ModelRequest,
    Provider,
    ProviderError,
    TextContent,
)

__all__ = ["collect", "drain", "fail", "request", "user"]


def user(text: str) -> ModelMessage:
    return ModelMessage(role="user", content=(TextContent(text),))


def request(*messages: ModelMessage, model: str = "test-model", **fields: Any) -> ModelRequest:
    """A request of `messages` (a "Hi" by default); `system` and the rest as given."""
    return ModelRequest(model=model, system=fields.pop("system", None),
                        messages=messages or (user("Hi"),), **fields)


async def collect(provider: Provider, req: ModelRequest | None = None) -> list[ModelEvent]:
    return [event async for event in provider.stream(req or request())]


async def drain(provider: Provider, seen: list[ModelEvent], req: ModelRequest | None = None
                ) -> None:
    """Collect events into `seen` until the stream ends or fails."""
    async for event in provider.stream(req or request()):
        seen.append(event)


async def fail(provider: Provider, seen: list[ModelEvent] | None = None,
               req: ModelRequest | None = None) -> ProviderError:
    """The error the stream raises; the events before it go into `seen`."""
    with pytest.raises(ProviderError) as caught:
        await drain(provider, [] if seen is None else seen, req)
    return caught.value

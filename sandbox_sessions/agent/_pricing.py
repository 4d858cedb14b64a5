"""Cost of tokens, per model. The table can be overridden per client (`prices=`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .._types import Tokens

__all__ = ["DEFAULT_PRICES", "Price", "cost_of"]


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

    input: float = 0.0
    output: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0


DEFAULT_PRICES: Mapping[str, Price] = {
    "openai/gpt-4.1": Price(input=2.0, output=8.0, cache_read=0.5),
    "openai/gpt-4.1-mini": Price(input=0.4, output=1.6, cache_read=0.1),
    "openai/gpt-4o": Price(input=2.5, output=10.0, cache_read=1.25),
    "openai/gpt-4o-mini": Price(input=0.15, output=0.6, cache_read=0.075),
    "anthropic/claude-sonnet-4-5": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "anthropic/claude-opus-4-1": Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "anthropic/claude-haiku-4-5": Price(input=1.0, output=5.0, cache_read=0.1, cache_write=1.25),
}
"""List prices as published when this table was written; override what you pay."""


_SAME_PRICES = {"openai-responses/": "openai/"}
"""Prefixes that name the same models through another API: `openai-responses/gpt-4.1` costs
what `openai/gpt-4.1` costs, unless the table names it itself."""


def _price(model: str, prices: Mapping[str, Price]) -> Price | None:
    price = prices.get(model)
    for prefix, same in _SAME_PRICES.items():
        if price is None and model.startswith(prefix):
            price = prices.get(same + model.removeprefix(prefix))
    return price


def cost_of(model: str, tokens: Tokens, prices: Mapping[str, Price]) -> float:
    """What `tokens` cost on `model` (`provider/model`); 0 for a model not in the table.

    An `openai-responses/<name>` model not in the table is priced as `openai/<name>`.

    `tokens.output` includes reasoning tokens (both APIs count them in their output);
    `tokens.reasoning` is the part of it spent thinking, shown, not billed twice.
    """
    price = _price(model, prices)
    if price is None:
        return 0.0
    return (tokens.input * price.input + tokens.output * price.output
            + tokens.cache_read * price.cache_read
            + tokens.cache_write * price.cache_write) / 1_000_000

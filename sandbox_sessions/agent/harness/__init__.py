"""Harnesses: an agent CLI (Claude Code, Codex, opencode) runs the turn inside the sandbox.

`run_harness` opens the model proxy in the sandbox (the CLI's model requests reach the host,
which adds the key), runs the harness's bridge, and sums what the proxy read into the turn's
tokens and cost. See `_base.py` for what a bridge reports and `_process.py` for how a CLI's
stdio reaches the host.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import httpx

from ..._exceptions import InvalidArgument, ProviderError
from ..._types import AgentConfig
from .._loop import Outcome, Rejected, Turn
from .._pricing import cost_of
from .._proxy import ModelProxy
from ._base import Harness, HarnessTurn

__all__ = ["HARNESSES", "check_harness_model", "harness", "run_harness"]

HARNESSES: Mapping[str, tuple[str, str]] = {
    "claude-code": ("._claude", "ClaudeCode"),
    "codex": ("._codex", "Codex"),
    "opencode": ("._opencode", "OpenCode"),
}
"""Each harness's bridge: its module and class."""


def harness(name: str) -> Harness:
    """The bridge of harness `name`; `InvalidArgument` for an unknown one."""
    found = HARNESSES.get(name)
    if found is None:
        raise InvalidArgument(f"unknown harness {name!r}: use builtin, "
                              + ", ".join(HARNESSES))
    module = importlib.import_module(found[0], __package__)
    made: Harness = getattr(module, found[1])()
    return made


def check_harness_model(config: AgentConfig, model: str | None = None) -> None:
    """`InvalidArgument` when `config`'s harness cannot use `model` (by default its own)."""
    chosen = model if model is not None else config.model
    if config.harness != "builtin" and chosen is not None:
        harness(config.harness).check_model(chosen)


async def run_harness(turn: Turn, outcome: Outcome, *, api_keys: Mapping[str, str],
                      http: httpx.AsyncClient) -> Outcome:
    """Run `turn` with its agent's harness; `outcome` is kept up to date as it goes."""
    bridge = harness(turn.config.harness)
    provider = bridge.provider
    try:
        proxy = ModelProxy(turn.sandbox, provider=provider,  # type: ignore[arg-type]
                           api_key=api_keys.get(provider), base_url=turn.config.base_url,
                           http_client=http)
    except InvalidArgument as exc:
        outcome.reason, outcome.error = "error", str(exc)
        return outcome
    async with proxy:
        state = HarnessTurn(turn=turn, prompt=turn.prompt, resume=turn.conversation,
                            proxy=proxy, outcome=outcome, tools=bridge.tools)
        try:
            await bridge.run(state)
        except Rejected:
            outcome.reason, outcome.error = "rejected", None
        except ProviderError as exc:
            outcome.reason, outcome.error = "error", str(exc)
        finally:
            for call_id in state.open_calls():
                state.tool_end(call_id, error="the turn ended before the call did")
            outcome.tokens = proxy.usage
            outcome.cost = cost_of(turn.model, proxy.usage, turn.prices)
    return outcome

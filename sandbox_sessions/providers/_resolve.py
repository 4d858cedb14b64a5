"""From a model name (`provider/model`) to a provider, on the host where the API keys live."""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx

from .._exceptions import InvalidArgument
from ._anthropic import DEFAULT_ANTHROPIC_BASE_URL, AnthropicProvider
from ._openai import DEFAULT_OPENAI_BASE_URL, OpenAIProvider
from ._responses import ResponsesProvider
from ._scripted import Script, ScriptedProvider
from .base import Provider

__all__ = ["resolve_endpoint", "resolve_provider"]

_KEY_VARS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_URL_VARS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
_KNOWN = ("openai", "openai-responses", "anthropic", "scripted")
_FAMILY = {"openai-responses": "openai"}
"""Providers that share another's key and base URL (their names, variables and settings)."""
_DEFAULT_URLS = {"openai": DEFAULT_OPENAI_BASE_URL, "anthropic": DEFAULT_ANTHROPIC_BASE_URL}


def _split(model: str) -> tuple[str, str]:
    if model.strip().lower() == "scripted":
        return "scripted", "scripted"
    provider, slash, name = model.partition("/")
    provider = provider.strip().lower()
    if not slash or not provider or not name.strip():
        raise InvalidArgument(
            f"model {model!r} must be named 'provider/model' (e.g. 'openai/gpt-4.1', "
            "'anthropic/claude-sonnet-4-5' or 'scripted')"
        )
    if provider not in _KNOWN:
        raise InvalidArgument(
            f"unknown provider {provider!r} in model {model!r}: use one of {', '.join(_KNOWN)}"
        )
    return provider, name.strip()


def _setting(provider: str, given: Mapping[str, str] | None, env: Mapping[str, str]) -> str | None:
    family = _FAMILY.get(provider, provider)
    given = given or {}
    return given.get(provider) or given.get(family) or os.environ.get(env[family]) or None


def resolve_provider(
    model: str,
    *,
    api_keys: Mapping[str, str] | None = None,
    base_urls: Mapping[str, str] | None = None,
    script: Script | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> tuple[Provider, str]:
    """The provider for `model` (`provider/model`) and the model's bare name at the provider.

    `openai/<name>` (Chat Completions) and `anthropic/<name>` take their API key from
    `api_keys` (keyed by provider name) or else `$OPENAI_API_KEY` / `$ANTHROPIC_API_KEY`, and
    their base URL from `base_urls` or else `$OPENAI_BASE_URL` / `$ANTHROPIC_BASE_URL`.
    `openai-responses/<name>` (the Responses API) follows the `openai` rules: `api_keys` and
    `base_urls` under `openai-responses`, else under `openai`, else the `OPENAI_` variables.
    The name after the first slash is kept whole (`openai/Qwen/Qwen3-8B` for vLLM).
    `scripted` or `scripted/<anything>` plays `script` (its bare name is `scripted` or
    `<anything>`). `http_client` is shared by the HTTP providers; its owner closes it.

    Raises `InvalidArgument` for a name without a slash, an unknown provider, a missing
    script, or a missing API key, except for the OpenAI ones with a base URL (a local server).
    """
    provider, name = _split(model)
    if provider == "scripted":
        if script is None:
            raise InvalidArgument(f"model {model!r} needs a script (a list or a file path)")
        return ScriptedProvider(script), name
    family = _FAMILY.get(provider, provider)
    api_key = _setting(provider, api_keys, _KEY_VARS)
    base_url = _setting(provider, base_urls, _URL_VARS)
    if api_key is None and not (family == "openai" and base_url):
        raise InvalidArgument(
            f"no API key for {provider!r}: set {_KEY_VARS[family]} or pass api_keys"
        )
    if provider == "openai-responses":
        return ResponsesProvider(api_key=api_key, base_url=base_url, client=http_client), name
    if provider == "openai":
        return OpenAIProvider(api_key=api_key, base_url=base_url, client=http_client), name
    return AnthropicProvider(api_key=api_key, base_url=base_url, client=http_client), name


def resolve_endpoint(
    provider: str, *, api_key: str | None = None, base_url: str | None = None
) -> tuple[str | None, str]:
    """The API key and base URL (no trailing slash) of `openai` or `anthropic`, chosen as
    `resolve_provider` chooses them: the given value, else `$..._API_KEY` / `$..._BASE_URL`,
    else the provider's public API. Raises `InvalidArgument` for a missing key, except for
    `openai` with a base URL (a local server)."""
    if provider not in _KEY_VARS:
        raise InvalidArgument(f"unknown provider {provider!r}: use openai or anthropic")
    key = _setting(provider, {provider: api_key} if api_key else None, _KEY_VARS)
    url = _setting(provider, {provider: base_url} if base_url else None, _URL_VARS)
    if key is None and not (provider == "openai" and url):
        raise InvalidArgument(
            f"no API key for {provider!r}: set {_KEY_VARS[provider]} or pass api_key")
    return key, (url or _DEFAULT_URLS[provider]).rstrip("/")

"""What the HTTP providers share: one streaming POST, Server-Sent Events, and error mapping.

`SSEDecoder` is pure (lines in, events out); `stream_sse` is the only code here that does I/O.
Every `httpx` error is wrapped into a `ProviderError` here, with the original as `__cause__`.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import httpx

from .base import ProviderError

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=600.0)
"""Without a client of the caller's: a long read timeout, as reasoning models can be silent for
minutes before their first token."""

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "server_error", "timeout_error"}
)
_SNIPPET = 300
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One Server-Sent Event: its `event` name (`message` when unnamed) and its `data`."""

    event: str
    data: str


@dataclass(slots=True)
class LineDecoder:
    """Splits UTF-8 bytes, in chunks cut anywhere, into lines on `\r\n`, `\n` or `\r`.

    Only those three end a line (not the other separators `str.splitlines` knows, which JSON
    strings may hold). Invalid UTF-8 is replaced, not raised.
    """

    _text: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _pending: str = ""

    def feed(self, data: bytes) -> list[str]:
        """The lines that `data` completes, without their line breaks."""
        text = self._pending + self._text.decode(data)
        # A final \r may be the first half of \r\n: it waits for the next chunk.
        held = "\r" if text.endswith("\r") else ""
        lines = _LINE_BREAK.split(text[: len(text) - len(held)])
        self._pending = lines.pop() + held
        return lines

    def flush(self) -> list[str]:
        """The last lines, at the end of the stream."""
        text = self._pending + self._text.decode(b"", final=True)
        self._pending = ""
        return [line for line in _LINE_BREAK.split(text) if line] if text else []


@dataclass(slots=True)
class SSEDecoder:
    """Turns the lines of an event stream into events, following the WHATWG rules.

    Comment lines (`: ping`) and unknown fields are skipped; multi-line `data` is joined with
    newlines; an event is dispatched on a blank line, or at the end of the stream by `flush`.
    """

    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line (without its line break); return the event it completes, if any."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> SSEEvent | None:
        """Dispatch what was collected so far, if there is data."""
        event = SSEEvent(self._event or "message", "\n".join(self._data)) if self._data else None
        self._event, self._data = "", []
        return event


def is_retryable_status(status: int) -> bool:
    """The statuses the official SDKs retry: 408, 409, 429 and every 5xx."""
    return status in _RETRYABLE_STATUS or status >= 500


def _message_of(payload: object) -> tuple[str | None, str | None]:
    """The (message, type) of an error body in the shapes servers use, tolerantly."""
    if not isinstance(payload, Mapping):
        return None, None
    error = payload.get("error")
    if isinstance(error, Mapping):
        message, kind = error.get("message"), error.get("type") or error.get("code")
        return (str(message) if message else None), (str(kind) if kind else None)
    if isinstance(error, str) and error:
        return error, None
    for key in ("message", "detail"):
        if isinstance(payload.get(key), str) and payload[key]:
            return str(payload[key]), None
    return None, None


def error_from_body(label: str, status: int, body: bytes, reason: str = "") -> ProviderError:
    """A `ProviderError` for an HTTP error answer, carrying the server's own message."""
    text = body.decode("utf-8", "replace").strip()
    try:
        message, _ = _message_of(json.loads(text))
    except ValueError:
        message = None
    shown = message or text[:_SNIPPET] or reason or "no details"
    return ProviderError(
        f"{label} answered HTTP {status}: {shown}",
        status=status,
        retryable=is_retryable_status(status),
    )


def error_from_event(label: str, payload: Mapping[str, Any]) -> ProviderError:
    """A `ProviderError` for an error the server sent inside the stream (`{"error": {...}}`)."""
    message, kind = _message_of(payload)
    error = payload.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    status = code if isinstance(code, int) else None
    retryable = kind in _RETRYABLE_ERROR_TYPES or (
        status is not None and is_retryable_status(status)
    )
    detail = f"{message} ({kind})" if kind and kind != message else message
    return ProviderError(
        f"{label} failed mid-stream: {detail or 'unknown error'}",
        status=status,
        retryable=retryable,
    )


def parse_json_object(label: str, data: str) -> dict[str, Any]:
    """Parse one event's data as a JSON object, or raise `ProviderError`."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ProviderError(f"{label} sent malformed JSON: {data[:_SNIPPET]!r}") from exc
    if not isinstance(value, dict):
        raise ProviderError(f"{label} sent JSON that is not an object: {data[:_SNIPPET]!r}")
    return value


def _wrap_transport_error(label: str, exc: Exception) -> ProviderError:
    retryable = isinstance(
        exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )
    kind = type(exc).__name__
    return ProviderError(f"{label} connection failed ({kind}): {exc}", retryable=retryable)


def _is_event_stream(content_type: str) -> bool:
    # Tolerant: some servers send no content type, or text/plain, for an event stream.
    kind = content_type.split(";")[0].strip().lower()
    return kind in ("", "text/event-stream", "text/plain")


@asynccontextmanager
async def _client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT) as owned:
        yield owned


async def _check(label: str, response: httpx.Response) -> None:
    """Raise `ProviderError` unless the response is a successful event stream."""
    if response.status_code >= 400:
        body = await response.aread()
        error = error_from_body(label, response.status_code, body, response.reason_phrase)
        should_retry = response.headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            error.retryable = should_retry == "true"
        raise error
    content_type = response.headers.get("content-type", "")
    if not _is_event_stream(content_type):
        body = await response.aread()
        message, _ = _message_of(_loads_or_none(body))
        shown = message or body.decode("utf-8", "replace").strip()[:_SNIPPET]
        raise ProviderError(
            f"{label} did not answer with an event stream ({content_type}): {shown}",
            status=response.status_code,
        )


def _loads_or_none(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


async def stream_sse(
    label: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    client: httpx.AsyncClient | None,
    timeout: httpx.Timeout | float | None,
) -> AsyncGenerator[SSEEvent, None]:
    """POST `body` as JSON to `url` and yield the events of the streamed answer, in order.

    Raises `ProviderError` for an HTTP error status (with the server's message, retryable for
    408, 409, 429 and 5xx), for an answer that is not an event stream, and for transport
    failures (retryable for timeouts, network errors and connections closed mid-stream).
    Without `client`, a client is opened for this call and closed when the stream ends. Closing
    the iterator early (or cancelling the task) closes the response.
    """
    per_call = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
    lines, decoder = LineDecoder(), SSEDecoder()
    # Identity encoding: the raw bytes read below are then the body itself.
    headers = {"accept-encoding": "identity", **headers}
    try:
        async with _client(client) as http, http.stream(
            "POST", url, headers=dict(headers), json=dict(body), timeout=per_call
        ) as response:
            await _check(label, response)
            # Our own line splitting, not `aiter_lines`, which also breaks lines on U+2028 and
            # the like: JSON strings may hold those raw.
            raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())  # it is one
            async with aclosing(raw) as chunks:
                async for chunk in chunks:
                    for line in lines.feed(chunk):
                        event = decoder.feed(line)
                        if event is not None:
                            yield event
            for line in lines.flush():
                event = decoder.feed(line)
                if event is not None:
                    yield event
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise _wrap_transport_error(label, exc) from exc
    last = decoder.flush()
    if last is not None:
        yield last


class HTTPProvider:
    """What the HTTP providers share: where requests go (`base_url`, else the environment
    variable `env_url`, else `default_url`), the key, an optional shared `httpx.AsyncClient`
    (its owner closes it), a timeout for each call, and extra headers; and their event
    stream (`events()`: a POST of a JSON body to `{base_url}{path}`, read as SSE)."""

    label: ClassVar[str]
    """The API's name in error messages."""
    env_url: ClassVar[str]
    default_url: ClassVar[str]
    path: ClassVar[str]

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        base = base_url or os.environ.get(self.env_url) or self.default_url
        self.base_url: str = base.rstrip("/")
        """Where requests go: `{base_url}{path}`."""
        self._api_key = api_key
        self._client = client
        self._timeout = timeout
        self._headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _request_headers(self) -> dict[str, str]:
        """SSE, the extra headers, and the key as a bearer token (where there is one)."""
        headers = {"accept": "text/event-stream", **self._headers}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    def events(self, body: Mapping[str, Any]) -> AsyncGenerator[SSEEvent, None]:
        """The SSE events of one call with `body`."""
        return stream_sse(self.label, f"{self.base_url}{self.path}",
                          headers=self._request_headers(), body=body, client=self._client,
                          timeout=self._timeout)

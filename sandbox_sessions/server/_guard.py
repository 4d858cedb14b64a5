"""The bridge's front door: a pure ASGI middleware that refuses a request before anything
else sees it.

In order: a `Host` that is not the server's own (DNS rebinding) and an `Origin` that was not
allowed are refused with 403; a missing or wrong bearer token with 401 (compared in constant
time); a declared body over the cap with 413, before a byte of it is read, and a streamed
body as soon as it goes over. A refused request changes nothing. No CORS header is ever a
wildcard: an allowed origin is echoed, with `Vary: Origin`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._exceptions import (
    HTTP_STATUS,
    RequestRefused,
    RequestTooLarge,
    SandboxSessionsError,
    Unauthorized,
    to_wire,
)
from ._config import ServerConfig

__all__ = ["Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_SUFFIX = "/files"
"""Requests whose path ends so (`PUT /sessions/{id}/files`) may carry a file: `max_upload`."""


class Guard:
    """Wraps the app: only requests from the server's own host, an allowed origin, with the
    token and within the size caps get through."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self._app = app
        self._config = config
        self._hosts = config.allowed_hosts()
        self._token = f"Bearer {config.token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        try:
            cap = self._check(scope, headers)
        except SandboxSessionsError as refused:
            await _refuse(send, refused, _cors(headers, self._config))
            return
        await self._app(scope, _capped(receive, cap), _with_cors(send, headers, self._config))

    def _check(self, scope: Scope, headers: dict[bytes, bytes]) -> int:
        """The request's body cap; raises when the request must be refused."""
        host = headers.get(b"host", b"").decode("latin-1")
        if host not in self._hosts:
            raise RequestRefused(f"Host {host!r} is not this server's; refused")
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in self._config.allowed_origins:
            raise RequestRefused(f"Origin {origin.decode('latin-1')!r} is not allowed")
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, self._token):
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        upload = scope["method"] == "PUT" and scope["path"].endswith(UPLOAD_SUFFIX)
        cap = self._config.max_upload if upload else self._config.max_body
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise RequestTooLarge(f"a body of {declared.decode('latin-1')} bytes is over the "
                                  f"cap of {cap} bytes")
        return cap


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _cors(headers: dict[bytes, bytes], config: ServerConfig) -> list[tuple[bytes, bytes]]:
    origin = headers.get(b"origin")
    if origin is None or origin.decode("latin-1") not in config.allowed_origins:
        return []
    return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]


def _with_cors(send: Send, headers: dict[bytes, bytes], config: ServerConfig) -> Send:
    extra = _cors(headers, config)
    if not extra:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _capped(receive: Receive, cap: int) -> Receive:
    """`receive`, failing the request once its body goes over `cap` bytes."""
    seen = 0

    async def receiving() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise RequestTooLarge(f"the body went over the cap of {cap} bytes")
        return message

    return receiving


async def _refuse(send: Send, error: SandboxSessionsError,
                  extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(to_wire(error)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]
    if isinstance(error, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": HTTP_STATUS[error.code],
                "headers": headers})
    await send({"type": "http.response.body", "body": body})

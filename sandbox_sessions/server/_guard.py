"""The bridge's front door: a pure ASGI middleware that refuses a request before anything
else sees it.

In order: a `Host` that is not the server's own (DNS rebinding) and an `Origin` that was not
allowed are refused with 403; a missing or wrong bearer token with 401 (compared in constant
time); a declared body over the cap with 413, before a byte of it is read, and a streamed
body as soon as it goes over (the guard answers 413 itself). A refused request changes
nothing. No CORS header is ever a wildcard: an allowed origin is echoed, with `Vary: Origin`;
its preflight (`OPTIONS` with `Access-Control-Request-Method`, which browsers send without
the token) is answered here and reaches no route. Headers that could be read two ways (two
`Host`s, two tokens, two lengths) and absolute-form targets are refused.

The session viewer's cookie (`_viewer.COOKIE`) is taken in place of the bearer header, never
beside a wrong one. A browser sends it on every request to this host, so a request it
authenticates that changes something (any method but GET and HEAD) must also carry an
`Origin`, the server's own (`http://` and the `Host`) or an allowed one: a page of another
site, or of another port of this host, is refused with 403 (the cross-site request forgery
defence, besides SameSite=Strict). The viewer's own static page, login and logout are served
without a credential, after the same Host and Origin checks. Every response without headers
of its own on the matter (the viewer has its own) says `nosniff`, no referrer, no framing,
and has a Content-Security-Policy that lets nothing run: a file or an artifact opened in the
browser is never sniffed as a page, framed or run.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from .._exceptions import (
    HTTP_STATUS,
    BridgeUnavailable,
    RequestRefused,
    RequestTooLarge,
    SandboxSessionsError,
    Unauthorized,
    to_wire,
)
from ._config import ServerConfig
from ._viewer import COOKIE, PUBLIC

__all__ = ["Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_SUFFIX = "/files"
"""Requests whose path ends so (`PUT /sessions/{id}/files`) may carry a file: `max_upload`."""


PREFLIGHT_METHODS = b"GET, POST, PUT, PATCH, DELETE"
PREFLIGHT_HEADERS = b"authorization, content-type, last-event-id"
SAFE_METHODS = frozenset({"GET", "HEAD"})
"""Methods that change nothing: a cookie request of any other kind needs an `Origin`."""
BASELINE = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"))
"""Headers every response gets unless it has its own (see the module's docstring)."""
SINGLE = (b"host", b"origin", b"authorization", b"content-length", b"transfer-encoding")
"""Headers a request may carry once at most: two of them could be read two ways."""


class Guard:
    """Wraps the app: only requests from the server's own host, an allowed origin, with the
    token and within the size caps get through."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self._app = app
        self._config = config
        self._hosts = config.allowed_hosts()
        self._token = f"Bearer {config.token}".encode()
        self._cookie_token = config.token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        cors = _cors(headers, self._config)
        try:
            if cors and _is_preflight(scope, headers):
                self._check_host(scope, headers)
                await _preflight(send, cors)  # browsers send no token with it
                return
            cap = self._check(scope, headers)
        except SandboxSessionsError as refused:
            await _refuse(send, refused, cors)
            return
        exchange = _Exchange(receive, send, cap=cap, cors=cors)
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except anyio.get_cancelled_exc_class():
            # the server shuts down and cancels what still runs: say so in our body (else
            # uvicorn answers a bare 500), then let the cancellation go on
            with anyio.CancelScope(shield=True):
                await exchange.answer(BridgeUnavailable(
                    "the server shut down before the request finished"))
            raise
        except Exception:
            if not exchange.over:  # else: the app only failed to read what was cut off
                raise

    def _check_host(self, scope: Scope, headers: dict[bytes, list[bytes]]) -> None:
        """Raises unless the request is for this server, told one way only."""
        for name in SINGLE:
            if len(headers.get(name, ())) > 1:
                raise RequestRefused(f"more than one {name.decode()} header; refused")
        host = _one(headers, b"host") or b""
        if host.decode("latin-1") not in self._hosts:
            raise RequestRefused(f"Host {host.decode('latin-1')!r} is not this server's; "
                                 "refused")
        if not scope["path"].startswith("/"):  # absolute-form: its authority is not checked
            raise RequestRefused("only origin-form request targets (/path) are served")

    def _check(self, scope: Scope, headers: dict[bytes, list[bytes]]) -> int:
        """The request's body cap; raises when the request must be refused."""
        self._check_host(scope, headers)
        origin = _one(headers, b"origin")
        own = b"http://" + (_one(headers, b"host") or b"")
        if origin is not None and origin != own \
                and origin.decode("latin-1") not in self._config.allowed_origins:
            raise RequestRefused(f"Origin {origin.decode('latin-1')!r} is not allowed")
        if (scope["method"], scope["path"]) in PUBLIC:
            _need_origin(scope, origin, "the viewer's login and logout")
        else:
            self._authorize(scope, headers, origin)
        upload = scope["method"] == "PUT" and scope["path"].endswith(UPLOAD_SUFFIX)
        cap = self._config.max_upload if upload else self._config.max_body
        declared = _one(headers, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise RequestTooLarge(f"a body of {declared.decode('latin-1')[:40]} bytes is over "
                                  f"the cap of {cap} bytes")
        return cap

    def _authorize(self, scope: Scope, headers: dict[bytes, list[bytes]],
                   origin: bytes | None) -> None:
        """Raises unless the request carries the token: in the bearer header, or (without
        one) in the viewer's cookie, with an `Origin` when it changes something."""
        authorization = _one(headers, b"authorization")
        cookies = _cookie_values(headers)
        if authorization is not None or not cookies:
            if not hmac.compare_digest(authorization or b"", self._token):
                raise Unauthorized("a bearer token is required (Authorization: Bearer "
                                   "<token>)")
            return
        # any of them: a page of another port of this host can set a cookie of this name
        # too (cookies ignore ports), but it cannot know the token
        if not any([hmac.compare_digest(value, self._cookie_token) for value in cookies]):
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>); "
                               "the viewer's cookie is not this server's token")
        _need_origin(scope, origin, "a request authenticated by the viewer's cookie")


def _need_origin(scope: Scope, origin: bytes | None, what: str) -> None:
    """Raises when a browser's request that changes something says not where it comes
    from (the Origin, when there is one, was checked already)."""
    if origin is None and scope["method"] not in SAFE_METHODS:
        raise RequestRefused(f"{what} must carry an Origin header when it changes "
                             "something (a page of this server sends it); refused")


def _cookie_values(headers: dict[bytes, list[bytes]]) -> list[bytes]:
    """Every value of the viewer's cookie the request carries."""
    name = COOKIE.encode() + b"="
    return [pair.strip()[len(name):] for header in headers.get(b"cookie", [])
            for pair in header.split(b";") if pair.strip().startswith(name)]


def _with_baseline(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` and each `BASELINE` header they lack."""
    present = {name.lower() for name, _ in headers}
    return [*headers, *(header for header in BASELINE if header[0] not in present)]


def _headers(scope: Scope) -> dict[bytes, list[bytes]]:
    headers: dict[bytes, list[bytes]] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _one(headers: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = headers.get(name)
    return values[0] if values else None


def _cors(headers: dict[bytes, list[bytes]], config: ServerConfig) -> list[tuple[bytes, bytes]]:
    origin = _one(headers, b"origin")
    if origin is None or origin.decode("latin-1") not in config.allowed_origins:
        return []
    return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]


def _is_preflight(scope: Scope, headers: dict[bytes, list[bytes]]) -> bool:
    return scope["method"] == "OPTIONS" and b"access-control-request-method" in headers


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]]) -> None:
    """The answer to an allowed origin's CORS preflight: what it may send, with the token.
    It reaches no route, so it changes nothing."""
    headers = [*cors, (b"access-control-allow-methods", PREFLIGHT_METHODS),
               (b"access-control-allow-headers", PREFLIGHT_HEADERS),
               (b"access-control-max-age", b"600"), (b"content-length", b"0")]
    headers = _with_baseline(headers)
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


class _Exchange:
    """One request let through: its body counted against `cap` as it streams in (a chunked
    body declares no length), the CORS headers added to its response.

    A body that goes over the cap is answered 413 here, and the app is told the client left
    (so whatever it was writing is abandoned, as when a client goes away); what the app sends
    after that is dropped."""

    def __init__(self, receive: Receive, send: Send, *, cap: int,
                 cors: list[tuple[bytes, bytes]]) -> None:
        self._receive = receive
        self._send = send
        self._cap = cap
        self._cors = cors
        self._seen = 0
        self._started = False
        self.over = False
        """Whether the body went over the cap (and the guard answered)."""

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._cap:
                self.over = True
                await self.answer(RequestTooLarge(
                    f"the body went over the cap of {self._cap} bytes"))
                return {"type": "http.disconnect"}
        return message

    async def answer(self, error: SandboxSessionsError) -> None:
        """Answer with `error`, unless a response has started already."""
        if not self._started:
            self._started = True
            await _refuse(self._send, error, self._cors)

    async def send(self, message: Message) -> None:
        if self.over:
            return
        if message["type"] == "http.response.start":
            self._started = True
            message = {**message, "headers": _with_baseline(
                [*message.get("headers", []), *self._cors])}
        await self._send(message)


async def _refuse(send: Send, error: SandboxSessionsError,
                  extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(to_wire(error)).encode()
    headers = _with_baseline([(b"content-type", b"application/json"),
                              (b"content-length", str(len(body)).encode()), *extra])
    if isinstance(error, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": HTTP_STATUS[error.code],
                "headers": headers})
    await send({"type": "http.response.body", "body": body})

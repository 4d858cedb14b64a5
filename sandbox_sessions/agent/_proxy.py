"""`ModelProxy`: an agent CLI in the container reaches its model API; the key stays on the host.

The helper listens on 127.0.0.1 inside the container (`sandbox._tunnel`); each connection
made there is carried over the session's channel to the host, where this module serves it as
HTTP/1.1 (h11). A request is forwarded only when it is one of the provider's model endpoints
(`ENDPOINTS`), only to the configured `base_url`, with whatever credentials the client sent
removed and the real key added here. The answer streams back as it comes (SSE chunk by
chunk), and its token usage is read on the way (`on_usage`).

The container sees only `base_url` (`http://127.0.0.1:<port>`) and `placeholder_key`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Literal, Self

import anyio
import anyio.abc
import h11
import httpx

from .._exceptions import InvalidArgument
from .._types import Tokens
from ..providers._anthropic import ANTHROPIC_VERSION
from ..providers._http import DEFAULT_TIMEOUT
from ..providers._resolve import resolve_endpoint
from ..sandbox._channel import ChannelClosed
from ..sandbox._tunnel import Listener, Listening, TunnelStream
from ._proxy_usage import UsageReader

__all__ = ["ENDPOINTS", "PLACEHOLDER_KEY", "ModelProxy", "ProxyProvider"]

log: logging.Logger = logging.getLogger("sandbox_sessions.proxy")

ProxyProvider = Literal["anthropic", "openai"]
PLACEHOLDER_KEY = "sandbox-sessions-proxy"
"""The key the CLIs in the container are given: a name, not a secret."""
ENDPOINTS: Mapping[str, frozenset[tuple[str, str]]] = {
    "anthropic": frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
                            ("GET", "/v1/models")}),
    "openai": frozenset({("POST", "/v1/responses"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/models")}),
}
"""(method, path) pairs forwarded for each provider; every other request is refused."""
MAX_REQUEST_BODY = 8 << 20
MAX_RESPONSE = 64 << 20
MAX_HEAD = 64 << 10
"""Bytes of a request's line and headers."""
IDLE_TIMEOUT = 300.0
"""Seconds a connection may take to send its next request's head, and then its body, before
it is closed."""
DROPPED_REQUEST_HEADERS = frozenset({
    "authorization", "x-api-key", "api-key", "proxy-authorization", "cookie", "host",
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "expect", "accept-encoding", "forwarded", "x-forwarded-for",
    "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "proxy-connection",
})
"""Credentials, hop-by-hop and routing headers: never forwarded."""
KEPT_RESPONSE_HEADERS = frozenset({"content-type", "retry-after", "request-id", "x-request-id",
                                   "x-should-retry"})
KEPT_RESPONSE_PREFIXES = ("anthropic-", "openai-", "x-ratelimit-")
UsageCallback = Callable[[Tokens], object]


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class ModelProxy:
    """Serves a model API inside a sandbox, on a loopback port, with the key added on the host.

        async with ModelProxy(sandbox, provider="anthropic", api_key=key) as proxy:
            env = {"ANTHROPIC_BASE_URL": proxy.base_url, "ANTHROPIC_API_KEY": proxy.placeholder_key}

    `base_url` and `api_key` default as for the builtin loop's providers (`api_keys=`,
    `$ANTHROPIC_API_KEY`, `$ANTHROPIC_BASE_URL`...). `on_usage` is called with each proxied
    response's tokens, once the response has ended; `usage` is their running sum. Leaving
    the block (`aclose`) closes the listener in the sandbox and every connection.
    """

    def __init__(
        self,
        sandbox: Listening,
        *,
        provider: ProxyProvider,
        api_key: str | None = None,
        base_url: str | None = None,
        port: int = 0,
        on_usage: UsageCallback | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_request_body: int = MAX_REQUEST_BODY,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        if provider not in ENDPOINTS:
            raise InvalidArgument(f"the model proxy serves {' or '.join(ENDPOINTS)}, "
                                  f"not {provider!r}")
        key, upstream = resolve_endpoint(provider, api_key=api_key, base_url=base_url)
        self.provider: ProxyProvider = provider
        self.upstream: str = upstream
        """Where requests go: the configured base URL, and only it."""
        self._key = key
        self._sandbox = sandbox
        self._port = port
        self._on_usage = on_usage
        self._client = http_client
        self.max_request_body, self.max_response = max_request_body, max_response
        self.usage: Tokens = Tokens()
        """The tokens of every proxied response so far."""
        self._listener: Listener | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def port(self) -> int:
        """The port inside the sandbox."""
        if self._listener is None:
            raise InvalidArgument("the model proxy is not open: use `async with ModelProxy(...)`")
        return self._listener.port

    @property
    def base_url(self) -> str:
        """The base URL a client in the sandbox is given: `/v1` included for OpenAI's
        clients, which expect it there, and not for Anthropic's."""
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.provider == "openai" else root

    @property
    def placeholder_key(self) -> str:
        """The API key a client in the sandbox is given; the proxy replaces it."""
        return PLACEHOLDER_KEY

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            if self._client is None:
                self._client = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=DEFAULT_TIMEOUT))
            self._listener = await stack.enter_async_context(self._sandbox.listen(self._port))
            stack.callback(setattr, self, "_listener", None)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)  # runs first: the connections end
            group.start_soon(self._accept, self._listener, group)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving: the connections are cut and the listener in the sandbox is closed
        (confirmed by the helper, or after about a second when it does not answer)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _accept(self, listener: Listener, group: anyio.abc.TaskGroup) -> None:
        while (sid := await listener.accept()) is not None:
            group.start_soon(self._connection, listener, sid)

    async def _connection(self, listener: Listener, sid: int) -> None:
        try:
            async with listener.connection(sid) as stream:
                await _Connection(self, stream).serve()
                await stream.aclose()
        except ChannelClosed:
            pass  # the container or its helper went away: nothing to answer
        except Exception:  # one bad connection must not end the proxy
            log.exception("model proxy connection failed")

    def _record(self, tokens: Tokens) -> None:
        self.usage = self.usage + tokens
        if self._on_usage is not None:
            self._on_usage(tokens)


class _Connection:
    """One tunnelled connection, served as HTTP/1.1 until either side closes it."""

    def __init__(self, proxy: ModelProxy, stream: TunnelStream) -> None:
        self._proxy = proxy
        self._stream = stream
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def serve(self) -> None:
        while True:
            try:
                with anyio.fail_after(IDLE_TIMEOUT):
                    request = await self._next_event()
                if not isinstance(request, h11.Request):
                    return
                if not await self._serve(request):
                    return
            except _Refused as refused:
                await self._refuse(refused)
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(_Refused(exc.error_status_hint, "bad_request", str(exc)))
                return
            except TimeoutError:
                return
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                return
            self._h11.start_next_cycle()

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._h11.receive_data(await self._stream.receive())

    async def _send(self, *events: h11.Event) -> None:
        """Send the events in one write: a head and its first bytes travel as one frame."""
        data = b"".join(self._h11.send(event) or b"" for event in events)
        if data:
            await self._stream.send(data)

    async def _refuse(self, refused: _Refused) -> None:
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # an answer already began: the connection is just cut
        body = json.dumps({"type": "error", "error": {
            "type": refused.code, "code": refused.code,
            "message": f"sandbox-sessions model proxy: {refused}"}}).encode()
        await self._send(h11.Response(status_code=refused.status, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body))),
            ("connection", "close")]), h11.Data(data=body), h11.EndOfMessage())

    async def _serve(self, request: h11.Request) -> bool:
        """Forward one request and stream its answer back; False to close the connection."""
        path, query = self._check(request)
        with anyio.fail_after(IDLE_TIMEOUT):  # a body trickling in holds no task for ever
            body = await self._body(request)
        proxy = self._proxy
        url = httpx.URL(proxy.upstream + _upstream_path(proxy.provider, path))
        if query:
            url = url.copy_with(query=query)
        headers = self._headers(request)
        assert proxy._client is not None
        try:
            upstream = proxy._client.build_request(
                request.method.decode(), url, headers=headers, content=body)
            response = await proxy._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise _Refused(502, "upstream_error",
                           f"the model API did not answer ({type(exc).__name__})") from None
        try:
            return await self._relay(response)
        finally:
            await response.aclose()

    def _check(self, request: h11.Request) -> tuple[str, bytes]:
        target = bytes(request.target)
        if not target.startswith(b"/"):
            raise _Refused(403, "forbidden", "only origin-form targets (a path) are served; "
                           "the proxy forwards to its configured model API only")
        raw_path, _, query = target.partition(b"?")
        path, method = raw_path.decode("ascii", "replace"), request.method.decode()
        if (method, path) not in ENDPOINTS[self._proxy.provider]:
            allowed = ", ".join(sorted(f"{m} {p}" for m, p in ENDPOINTS[self._proxy.provider]))
            raise _Refused(404, "not_found",
                           f"{method} {path} is not a model endpoint (served: {allowed})")
        return path, query

    async def _body(self, request: h11.Request) -> bytes:
        cap = self._proxy.max_request_body
        declared = dict(request.headers).get(b"content-length")
        if declared is not None and int(declared) > cap:
            raise _Refused(413, "request_too_large", f"the request body is over {cap} bytes")
        if self._h11.client_is_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        parts, size = [], 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > cap:
                    raise _Refused(413, "request_too_large",
                                   f"the request body is over {cap} bytes")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:  # the client went away mid-body
                raise ChannelClosed()

    def _headers(self, request: h11.Request) -> list[tuple[str, str]]:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in request.headers
                   if name.decode("latin-1").lower() not in DROPPED_REQUEST_HEADERS]
        proxy = self._proxy
        if proxy.provider == "anthropic":
            if not any(name.lower() == "anthropic-version" for name, _ in headers):
                headers.append(("anthropic-version", ANTHROPIC_VERSION))
            if proxy._key is not None:
                headers.append(("x-api-key", proxy._key))
        elif proxy._key is not None:
            headers.append(("authorization", f"Bearer {proxy._key}"))
        return headers

    async def _relay(self, response: httpx.Response) -> bool:
        cap = self._proxy.max_response
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise _Refused(502, "response_too_large", f"the model's answer is over {cap} bytes")
        headers = [(name, value) for name, value in response.headers.items()
                   if name in KEPT_RESPONSE_HEADERS or name.startswith(KEPT_RESPONSE_PREFIXES)]
        reader = UsageReader(response.headers.get("content-type", ""))
        size, started = 0, False
        chunks = response.aiter_bytes()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except httpx.HTTPError as exc:  # the model API broke off its answer
                if not started:
                    raise _Refused(502, "upstream_error", "the model API broke off its answer "
                                   f"({type(exc).__name__})") from None
                return False  # the client sees its answer cut short
            size += len(chunk)
            if size > cap:
                if not started:
                    raise _Refused(502, "response_too_large",
                                   f"the model's answer is over {cap} bytes")
                log.warning("a model answer went over %d bytes: connection cut", cap)
                return False
            reader.feed(chunk)
            head = () if started else (h11.Response(status_code=response.status_code,
                                                    headers=headers),)
            started = True
            await self._send(*head, h11.Data(data=chunk))
        if not started:
            await self._send(h11.Response(status_code=response.status_code, headers=headers))
        await self._send(h11.EndOfMessage())
        tokens = reader.finish()
        if tokens is not None:
            self._proxy._record(tokens)
        return True


def _upstream_path(provider: str, path: str) -> str:
    # OpenAI's base URLs end in /v1 (`https://api.openai.com/v1`, `http://localhost:8080/v1`);
    # Anthropic's do not.
    return path.removeprefix("/v1") if provider == "openai" else path

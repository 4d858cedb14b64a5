"""`HTTPTransport`: the `Transport` over HTTP, against `sandbox-sessions serve`.

Built on httpx; server-sent events are read with httpx-sse. Every error the server answers
is raised again as the class its `code` names (the same classes as in-process); a server that
cannot be reached, or a connection that breaks mid-call, is `BridgeUnavailable`. An event
stream that drops is reconnected with `Last-Event-ID`, so a reader loses nothing and sees
nothing twice; it gives up with `BridgeUnavailable` after `RECONNECT_FOR` seconds without a
connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import TypeAdapter, ValidationError

from .._exceptions import BridgeUnavailable, ProtocolError, SandboxSessionsError, from_wire
from .._types import (
    ArtifactEntry,
    ArtifactInfo,
    CommandCall,
    CreateSessionRequest,
    Event,
    FileDiff,
    ImportedMessages,
    ImportMessagesRequest,
    Message,
    Metrics,
    PathEntries,
    PermissionAnswerRequest,
    QuestionAnswerRequest,
    RevertInfo,
    RevertRequest,
    SessionInfo,
    SessionStatus,
    ShellChunk,
    ShellCommand,
    ShellOutput,
    ShellResult,
    Todo,
    TurnRequest,
    TurnStarted,
    UpdateSessionRequest,
)
from ._transport import OutputSink

__all__ = ["HTTPTransport"]

log: logging.Logger = logging.getLogger("sandbox_sessions.http")

T = TypeVar("T")
RECONNECT_FOR = 30.0
"""Seconds an event stream keeps trying to reconnect before it gives up."""
STREAM_SILENCE = 45.0
"""Seconds without a byte (the server sends a heartbeat every 15) before a stream is
taken as dead and reconnected."""
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=30.0)
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
_CHUNK: TypeAdapter[ShellChunk] = TypeAdapter(ShellChunk)
_TRANSPORT_ERRORS = (httpx.TransportError, SSEError)


class HTTPTransport:
    """The session API over HTTP: `base_url` of a bridge, and its bearer `token`."""

    def __init__(self, base_url: str, token: str, *, client: httpx.AsyncClient | None = None
                 ) -> None:
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT)
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def aclose(self) -> None:
        """See `Transport.aclose`."""
        await self._client.aclose()

    # --- plumbing ------------------------------------------------------------------------

    def _url(self, *parts: str) -> str:
        return self._base + "/" + "/".join(quote(part, safe="") for part in parts)

    async def _call(self, method: str, url: str, kind: TypeAdapter[T] | None = None,
                    **options: Any) -> T | None:
        try:
            response = await self._client.request(method, url, headers=self._headers,
                                                   **options)
        except httpx.TransportError as exc:
            raise BridgeUnavailable(f"the bridge at {self._base} does not answer: {exc}") from exc
        if response.is_error:
            raise _error(response.status_code, response.content)
        return None if kind is None else _parse(kind, response.content)

    async def _json(self, method: str, kind: TypeAdapter[T], *parts: str,
                    **options: Any) -> T:
        result = await self._call(method, self._url(*parts), kind, **options)
        assert result is not None
        return result

    # --- sessions ------------------------------------------------------------------------

    async def create_session(self, request: CreateSessionRequest) -> SessionInfo:
        """See `Transport.create_session`."""
        return await self._json("POST", _INFO, "sessions", json=_body(request))

    async def get_session(self, session_id: str) -> SessionInfo:
        """See `Transport.get_session`."""
        return await self._json("GET", _INFO, "sessions", session_id)

    async def list_sessions(
        self, *, include_ended: bool = False, archived: bool | None = False,
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """See `Transport.list_sessions`."""
        given = {"include_ended": include_ended, "archived": archived, "agent": agent,
                 "status": status, "parent_id": parent_id}
        params = {key: value for key, value in given.items() if value is not None}
        params["archived"] = "any" if archived is None else archived
        return await self._json("GET", _INFOS, "sessions", params=params)

    async def update_session(self, session_id: str, request: UpdateSessionRequest
                             ) -> SessionInfo:
        """See `Transport.update_session`."""
        return await self._json("PATCH", _INFO, "sessions", session_id, json=_body(request))

    async def end_session(self, session_id: str) -> SessionInfo:
        """See `Transport.end_session`."""
        return await self._json("DELETE", _INFO, "sessions", session_id)

    async def gc(self) -> list[str]:
        """See `Transport.gc`."""
        return await self._json("POST", _STRS, "gc")

    # --- the sandbox ---------------------------------------------------------------------

    async def shell(self, session_id: str, command: ShellCommand, *,
                    on_output: OutputSink | None = None) -> ShellResult:
        """See `Transport.shell`: output lines are read as they come; leaving the call
        closes the connection, and the server kills the command."""
        url = self._url("sessions", session_id, "shell")
        result: ShellResult | None = None
        async with self._stream("POST", url, json=_body(command)) as response:
            # Read on past the result line to the body's end (it follows at once), so that
            # the connection goes back to the pool instead of being closed: a new TCP
            # connection per command cost ~0.6 ms.
            async for line in _lines(response):
                if result is not None:
                    break  # nothing follows a result: don't wait for more
                chunk = _chunk(line)
                if isinstance(chunk, ShellOutput):
                    if on_output is not None:
                        on_output(chunk)
                else:
                    result = chunk.result
        if result is None:
            raise BridgeUnavailable("the command's stream ended before its result")
        return result

    async def put_file(self, session_id: str, path: str,
                       content: bytes | AsyncIterable[bytes], *, mode: int | None = None
                       ) -> None:
        """See `Transport.put_file`: the content is streamed in the request body."""
        params: dict[str, Any] = {"path": path}
        if mode is not None:
            params["mode"] = mode
        await self._call("PUT", self._url("sessions", session_id, "files"), params=params,
                         content=content)

    def read_file(self, session_id: str, path: str, *, max_bytes: int) -> AsyncIterator[bytes]:
        """See `Transport.read_file`."""
        url = self._url("sessions", session_id, "files")
        return self._bytes(url, {"path": path, "max_bytes": max_bytes})

    async def list_artifacts(self, session_id: str) -> list[ArtifactInfo]:
        """See `Transport.list_artifacts`."""
        return await self._json("GET", _ARTIFACTS, "sessions", session_id, "artifacts")

    async def artifact_entries(self, session_id: str) -> list[ArtifactEntry]:
        """See `Transport.artifact_entries`."""
        return await self._json("GET", _ENTRIES, "sessions", session_id, "artifact-entries")

    async def path_entries(self, session_id: str, path: str) -> PathEntries:
        """See `Transport.path_entries`."""
        return await self._json("GET", _PATH_ENTRIES, "sessions", session_id, "entries",
                                params={"path": path})

    def read_artifact(self, session_id: str, key: str, *, max_bytes: int
                      ) -> AsyncIterator[bytes]:
        """See `Transport.read_artifact`."""
        url = self._url("sessions", session_id, "artifacts") + "/" + quote(key, safe="/")
        return self._bytes(url, {"max_bytes": max_bytes})

    async def _bytes(self, url: str, params: Mapping[str, Any]) -> AsyncIterator[bytes]:
        async with self._stream("GET", url, params=params) as response:
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            except httpx.TransportError as exc:
                raise BridgeUnavailable(f"the download broke off: {exc}") from exc

    # --- turns and the log ---------------------------------------------------------------

    async def start_turn(
        self, session_id: str, prompt: str, *, model: str | None = None,
        command: CommandCall | None = None,
    ) -> TurnStarted:
        """See `Transport.start_turn`."""
        return await self._json("POST", _STARTED, "sessions", session_id, "turns",
                                json=_body(TurnRequest(prompt=prompt, model=model,
                                                           command=command)))

    async def summarize(self, session_id: str) -> TurnStarted:
        """See `Transport.summarize`."""
        return await self._json("POST", _STARTED, "sessions", session_id, "summarize")

    async def abort(self, session_id: str, *, message_id: str | None = None) -> bool:
        """See `Transport.abort`."""
        params = {} if message_id is None else {"message_id": message_id}
        return await self._json("POST", _BOOL, "sessions", session_id, "abort", params=params)

    async def reply_permission(self, session_id: str, request_id: str,
                               answer: PermissionAnswerRequest) -> None:
        """See `Transport.reply_permission`."""
        await self._call("POST", self._url("sessions", session_id, "permissions", request_id),
                         json=_body(answer))

    async def revert(self, session_id: str, request: RevertRequest) -> RevertInfo:
        """See `Transport.revert`."""
        return await self._json("POST", _REVERT, "sessions", session_id, "revert",
                                json=_body(request))

    async def unrevert(self, session_id: str) -> RevertInfo:
        """See `Transport.unrevert`."""
        return await self._json("POST", _REVERT, "sessions", session_id, "unrevert")

    async def diff(self, session_id: str, *, message_id: str | None = None) -> list[FileDiff]:
        """See `Transport.diff`."""
        params = {} if message_id is None else {"message_id": message_id}
        return await self._json("GET", _DIFFS, "sessions", session_id, "diff", params=params)

    async def import_messages(self, session_id: str, request: ImportMessagesRequest) -> int:
        """See `Transport.import_messages`."""
        done = await self._json("POST", _IMPORTED, "sessions", session_id, "messages",
                                json=_body(request))
        return done.imported

    async def reply_question(self, session_id: str, request_id: str,
                             answer: QuestionAnswerRequest) -> None:
        """See `Transport.reply_question`."""
        await self._call("POST", self._url("sessions", session_id, "questions", request_id),
                         json=_body(answer))

    async def messages(self, session_id: str, *, after: int = 0, hidden: bool = False
                       ) -> list[Message]:
        """See `Transport.messages`."""
        return await self._json("GET", _MESSAGES, "sessions", session_id, "messages",
                                params={"after": after, "hidden": hidden})

    async def metrics(self, session_id: str) -> Metrics:
        """See `Transport.metrics`."""
        return await self._json("GET", _METRICS, "sessions", session_id, "metrics")

    async def todos(self, session_id: str) -> list[Todo]:
        """See `Transport.todos`."""
        return await self._json("GET", _TODOS, "sessions", session_id, "todos")

    async def events(self, session_id: str, *, after: int = 0, strict: bool = False
                     ) -> AsyncIterator[Event]:
        """See `Transport.events`: reconnects with `Last-Event-ID` when the stream drops."""
        url = self._url("sessions", session_id, "events")
        last = after
        while True:
            try:
                async for event in self._event_stream(url, last, strict):
                    last = event.seq
                    yield event
            except _TRANSPORT_ERRORS as exc:
                log.info("event stream of %s dropped (%s); reconnecting after %d",
                         session_id, exc, last)
                await self._wait_for_server()

    async def _event_stream(self, url: str, after: int, strict: bool
                            ) -> AsyncIterator[Event]:
        async for _, event in self._sse(url, str(after), {"strict": strict}):
            if event is not None:
                yield event

    async def all_events(self, *, after: str | None = None
                         ) -> AsyncIterator[tuple[str, Event]]:
        """See `Transport.all_events`: reconnects with `Last-Event-ID` when the stream drops
        (from the cursor the server gave when the stream opened, if no event came yet)."""
        url = self._url("events")
        last = after
        while True:
            try:
                async for cursor, event in self._sse(url, last, {}):
                    last = cursor or last
                    if event is not None:
                        yield cursor, event
            except _TRANSPORT_ERRORS as exc:
                log.info("the global event stream dropped (%s); reconnecting after %s",
                         exc, last)
                await self._wait_for_server()

    async def _sse(self, url: str, after: str | None, params: dict[str, Any]
                   ) -> AsyncIterator[tuple[str, Event | None]]:
        """Each frame's `id:` and event (None for a frame with an id and no event)."""
        headers = dict(self._headers)
        if after is not None:
            headers["Last-Event-ID"] = after
        timeout = httpx.Timeout(connect=10.0, read=STREAM_SILENCE, write=60.0, pool=30.0)
        async with aconnect_sse(self._client, "GET", url, headers=headers, timeout=timeout,
                                params=params) as source:
            if source.response.is_error:
                raise _error(source.response.status_code, await source.response.aread())
            async for sse in source.aiter_sse():
                if not sse.data:  # a heartbeat (httpx-sse makes a data-less event of it)
                    yield sse.id, None  # or the start cursor of a stream
                elif sse.event == "error":
                    raise _error(503, sse.data.encode())
                else:
                    yield sse.id, _parse(_EVENT, sse.data.encode())

    async def _wait_for_server(self) -> None:
        """Back off until the server answers again; `BridgeUnavailable` after
        `RECONNECT_FOR` seconds."""
        delay = 0.05
        with anyio.move_on_after(RECONNECT_FOR):
            while True:
                await anyio.sleep(delay)
                try:
                    await self._client.get(self._url("openapi.json"), headers=self._headers)
                    return
                except httpx.TransportError:
                    delay = min(delay * 2, 2.0)
        raise BridgeUnavailable(f"the bridge at {self._base} did not come back within "
                                f"{RECONNECT_FOR:g} s")

    def _stream(self, method: str, url: str, **options: Any) -> _Streamed:
        return _Streamed(self._client, method, url, headers=self._headers, **options)


class _Streamed:
    """A streamed request: errors (ours, or the connection's) raised as ours on entry."""

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, **options: Any
                 ) -> None:
        self._request = client.stream(method, url, **options)

    async def __aenter__(self) -> httpx.Response:
        try:
            response = await self._request.__aenter__()
        except httpx.TransportError as exc:
            raise BridgeUnavailable(f"the bridge does not answer: {exc}") from exc
        if response.is_error:
            body = await response.aread()
            await self._request.__aexit__(None, None, None)
            raise _error(response.status_code, body)
        return response

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._request.__aexit__(*exc_info)


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            if line:
                yield line
    except httpx.TransportError as exc:
        raise BridgeUnavailable(f"the stream broke off: {exc}") from exc


def _chunk(line: str) -> ShellChunk:
    try:
        return _CHUNK.validate_json(line)
    except ValidationError:
        body = _error_line(line)
        if body is None:
            raise ProtocolError(f"the bridge sent a line we cannot read: {line[:200]!r}"
                                ) from None
        raise from_wire(body, status=500) from None


def _error_line(line: str) -> dict[str, Any] | None:
    try:
        body = json.loads(line)
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("type") == "error" else None


def _error(status: int, content: bytes) -> SandboxSessionsError:
    try:
        body: object = json.loads(content)
    except ValueError:
        body = content[:200].decode(errors="replace")
    return from_wire(body, status=status)


def _parse(kind: TypeAdapter[T], content: bytes) -> T:
    try:
        return kind.validate_json(content)
    except ValidationError as exc:
        raise ProtocolError(f"the bridge sent what we cannot read: {exc}") from None


def _body(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_unset=False)


_INFO: TypeAdapter[SessionInfo] = TypeAdapter(SessionInfo)
_INFOS: TypeAdapter[list[SessionInfo]] = TypeAdapter(list[SessionInfo])
_STRS: TypeAdapter[list[str]] = TypeAdapter(list[str])
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_STARTED: TypeAdapter[TurnStarted] = TypeAdapter(TurnStarted)
_ARTIFACTS: TypeAdapter[list[ArtifactInfo]] = TypeAdapter(list[ArtifactInfo])
_ENTRIES: TypeAdapter[list[ArtifactEntry]] = TypeAdapter(list[ArtifactEntry])
_PATH_ENTRIES: TypeAdapter[PathEntries] = TypeAdapter(PathEntries)
_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
_IMPORTED: TypeAdapter[ImportedMessages] = TypeAdapter(ImportedMessages)
_METRICS: TypeAdapter[Metrics] = TypeAdapter(Metrics)
_TODOS: TypeAdapter[list[Todo]] = TypeAdapter(list[Todo])
_REVERT: TypeAdapter[RevertInfo] = TypeAdapter(RevertInfo)
_DIFFS: TypeAdapter[list[FileDiff]] = TypeAdapter(list[FileDiff])

"""The bridge's ASGI app: REST and SSE over one `SessionService`, a thin adapter.

Every route calls one method of the facade with the same pydantic models the in-process
transport uses, so the OpenAPI document (`GET /openapi.json`) describes exactly what the HTTP
transport sends and receives. Errors are our error body with a real status (see
`_exceptions.HTTP_STATUS`); the `Guard` in front refuses foreign hosts and origins, missing
tokens and oversized bodies before a route runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .._exceptions import InvalidArgument, SandboxSessionsError, to_wire
from .._types import (
    ArtifactEntry,
    ArtifactInfo,
    CreateSessionRequest,
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
    SendResult,
    SessionInfo,
    SessionStatus,
    ShellCommand,
    Todo,
    TurnRequest,
    TurnStarted,
    UpdateSessionRequest,
)
from ..service._projection import send_result
from ..service._service import SessionService
from ._config import ServerConfig
from ._guard import Guard
from ._streams import NDJSON, ByteStream, CommandStream, EventStream, error_response

__all__ = ["Bridge", "create_app"]

log: logging.Logger = logging.getLogger("sandbox_sessions.server")

ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": 'Our error: `{"error": {"code", "message", "retryable"}}`'},
    "5XX": {"description": 'Our error: `{"error": {"code", "message", "retryable"}}`'},
}
STREAMED = {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}}}
Path = Annotated[str, Query(min_length=1, description="A path in the sandbox (relative ones "
                                                      "from the workdir).")]
MaxBytes = Annotated[int, Query(ge=0, description="Refuse a file larger than this.")]
MAX_SEQ = (1 << 63) - 1
"""The largest seq SQLite can hold: a larger `after` would overflow the query."""


class Bridge:
    """The routes' shared state: the service, the settings, and the shutdown signal."""

    def __init__(self, service: SessionService, config: ServerConfig) -> None:
        self.service = service
        self.config = config
        self.closing = anyio.Event()
        """Set when the server shuts down: event streams end."""
        self.app = FastAPI(title="sandbox_sessions bridge", version="1", responses=ERRORS,
                           openapi_url="/openapi.json", docs_url=None, redoc_url=None)
        """The routes, behind the `Guard` that `create_app` returns."""


def create_app(service: SessionService, config: ServerConfig) -> tuple[Guard, Bridge]:
    """The ASGI app serving `service` (wrapped in its `Guard`), and its shared state."""
    bridge = Bridge(service, config)
    app = bridge.app
    app.add_exception_handler(SandboxSessionsError, _our_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _session_routes(app, bridge)
    _sandbox_routes(app, bridge)
    _turn_routes(app, bridge)
    _event_routes(app, bridge)
    _declare_the_token(app)
    return Guard(app, config), bridge


def _declare_the_token(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation needs the bearer token (the `Guard`
    checks it, so no route declares it)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = plain()
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The token in the server's token file (mode 0600)"}}
            document["security"] = [{"bearer": []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _our_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxSessionsError)
    return error_response(exc)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
                         for item in exc.errors())
    return error_response(InvalidArgument(f"invalid request: {problems}"))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method the route lacks), in our body with
    their status: the client raises an `InvalidArgument`."""
    assert isinstance(exc, StarletteHTTPException)
    error = InvalidArgument(f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(to_wire(error), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug of ours: a 500 in our body, the traceback logged and never sent."""
    if isinstance(exc, ClientDisconnect):  # the client left (or the Guard cut its body)
        log.debug("%s %s: the client went away", request.method, request.url.path)
    else:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    body = {"error": {"code": "internal_error", "retryable": False,
                      "message": f"internal error ({type(exc).__name__}); see the server log"}}
    return JSONResponse(body, status_code=500)


def _session_routes(app: FastAPI, bridge: Bridge) -> None:
    service = bridge.service

    @app.post("/sessions", status_code=201, tags=["sessions"])
    async def create_session(request: CreateSessionRequest) -> SessionInfo:
        """Create a session and start its container."""
        return await service.create_session(request)

    @app.get("/sessions", tags=["sessions"])
    async def list_sessions(
        include_ended: bool = False, archived: Literal["true", "false", "any"] = "false",
        agent: str | None = None, status: SessionStatus | None = None,
        parent_id: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions, newest first: usable ones (`include_ended`: every record), not archived
        (`archived=true`: only those, `any`: both), of `agent`, in `status`, forked from
        `parent_id`."""
        flag = None if archived == "any" else archived == "true"
        return await service.list_sessions(include_ended=include_ended, archived=flag,
                                           agent=agent, status=status, parent_id=parent_id)

    @app.get("/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str) -> SessionInfo:
        """The session's record (`busy` while a turn runs)."""
        return await service.get_session(session_id)

    @app.patch("/sessions/{session_id}", tags=["sessions"])
    async def update_session(session_id: str, request: UpdateSessionRequest) -> SessionInfo:
        """Change the title, the permission rules, `archived`, `pinned` or the metadata."""
        return await service.update_session(session_id, request)

    @app.delete("/sessions/{session_id}", tags=["sessions"])
    async def end_session(session_id: str) -> SessionInfo:
        """End the session: its container is removed."""
        return await service.end_session(session_id)

    @app.post("/gc", tags=["sessions"])
    async def gc() -> list[str]:
        """Remove orphaned containers; their ids."""
        return await service.gc()


def _sandbox_routes(app: FastAPI, bridge: Bridge) -> None:
    service = bridge.service

    # status_code: FastAPI cannot find one on these Response classes (and /openapi.json
    # failed without it)
    @app.post("/sessions/{session_id}/shell", tags=["sandbox"], response_class=CommandStream,
              status_code=200,
              responses={200: {"content": {NDJSON: {"schema": {
                  "$ref": "#/components/schemas/ShellChunk"}}},
                  "description": "NDJSON: output lines as they come, then one result line "
                                 "(or an error line)"}})
    async def shell(session_id: str, command: ShellCommand) -> CommandStream:
        """Run a command; its output streams as it comes. Leaving kills it."""
        return CommandStream(lambda sink: service.shell(session_id, command, on_output=sink))

    @app.put("/sessions/{session_id}/files", status_code=204, tags=["sandbox"],
             openapi_extra={"requestBody": {"required": True, "content": STREAMED["content"]}})
    async def put_file(session_id: str, path: Path, request: Request,
                       mode: Annotated[int | None, Query(ge=0, le=0o7777)] = None) -> None:
        """Write a file atomically from the streamed body."""
        await service.put_file(session_id, path, request.stream(), mode=mode)

    @app.get("/sessions/{session_id}/files", tags=["sandbox"], response_class=ByteStream,
             status_code=200,
             responses={200: STREAMED})
    async def read_file(session_id: str, path: Path, max_bytes: MaxBytes) -> ByteStream:
        """A regular file's bytes, streamed."""
        return ByteStream(service.read_file(session_id, path, max_bytes=max_bytes))

    @app.get("/sessions/{session_id}/artifacts", tags=["sandbox"])
    async def list_artifacts(session_id: str) -> list[ArtifactInfo]:
        """The regular files under `/artifacts`."""
        return await service.list_artifacts(session_id)

    @app.get("/sessions/{session_id}/artifact-entries", tags=["sandbox"])
    async def artifact_entries(session_id: str) -> list[ArtifactEntry]:
        """Every entry under `/artifacts`, for a download."""
        return await service.artifact_entries(session_id)

    @app.get("/sessions/{session_id}/entries", tags=["sandbox"])
    async def path_entries(session_id: str, path: Path) -> PathEntries:
        """A folder and every entry below it (links not followed), or a regular file, for a
        download."""
        return await service.path_entries(session_id, path)

    @app.get("/sessions/{session_id}/artifacts/{key:path}", tags=["sandbox"],
             response_class=ByteStream, status_code=200, responses={200: STREAMED})
    async def read_artifact(session_id: str, key: str, max_bytes: MaxBytes) -> ByteStream:
        """An artifact's bytes, streamed."""
        return ByteStream(service.read_artifact(session_id, key, max_bytes=max_bytes))


def _turn_routes(app: FastAPI, bridge: Bridge) -> None:
    service = bridge.service

    @app.post("/sessions/{session_id}/turns", status_code=202, tags=["turns"])
    async def start_turn(session_id: str, request: TurnRequest) -> TurnStarted:
        """Start a turn in the background; follow it on the event stream."""
        return await service.start_turn(session_id, request.prompt, model=request.model,
                                        command=request.command)

    @app.post("/sessions/{session_id}/summarize", status_code=202, tags=["turns"])
    async def summarize(session_id: str) -> TurnStarted:
        """Start a compaction in the background; follow it on the event stream."""
        return await service.summarize(session_id)

    @app.post("/sessions/{session_id}/send", tags=["turns"])
    async def send(session_id: str, request: TurnRequest) -> SendResult:
        """Run a turn and answer once it ended. Permission requests wait for a reply on
        `/permissions/{request_id}` (or the session's timeout policy)."""
        start = await service.start_turn(session_id, request.prompt, model=request.model,
                                         command=request.command)
        async for event in service.events(session_id, after=start.after, strict=True):
            if event.type == "turn-end" and event.message_id == start.message_id:
                return send_result(await service.messages(session_id, after=start.after), event)
        raise AssertionError("the event log ended")  # pragma: no cover

    @app.post("/sessions/{session_id}/abort", tags=["turns"])
    async def abort(session_id: str, message_id: str | None = None) -> bool:
        """Stop the running turn (only that of `message_id`, when given); whether one ran."""
        return await service.abort(session_id, message_id=message_id)

    @app.post("/sessions/{session_id}/permissions/{request_id}", status_code=204,
              tags=["turns"])
    async def reply_permission(session_id: str, request_id: str,
                               answer: PermissionAnswerRequest) -> None:
        """Answer a pending permission request: once, always or reject."""
        await service.reply_permission(session_id, request_id, answer)

    @app.post("/sessions/{session_id}/messages", tags=["turns"])
    async def import_messages(session_id: str, request: ImportMessagesRequest
                              ) -> ImportedMessages:
        """Append an exported history's messages (new ids, parents mapped)."""
        return ImportedMessages(imported=await service.import_messages(session_id, request))

    @app.post("/sessions/{session_id}/revert", tags=["turns"])
    async def revert(session_id: str, request: RevertRequest) -> RevertInfo:
        """Put the workspace back as the user message was sent, and hide it and every later
        message (the log keeps them)."""
        return await service.revert(session_id, request)

    @app.post("/sessions/{session_id}/unrevert", tags=["turns"])
    async def unrevert(session_id: str) -> RevertInfo:
        """Undo the pending revert: its messages and the workspace before it come back."""
        return await service.unrevert(session_id)

    @app.get("/sessions/{session_id}/diff", tags=["turns"])
    async def diff(session_id: str, message_id: str | None = None) -> list[FileDiff]:
        """The files changed since the user message (the session's first snapshot by
        default)."""
        return await service.diff(session_id, message_id=message_id)

    @app.post("/sessions/{session_id}/questions/{request_id}", status_code=204,
              tags=["turns"])
    async def reply_question(session_id: str, request_id: str,
                             answer: QuestionAnswerRequest) -> None:
        """Answer the agent's pending question."""
        await service.reply_question(session_id, request_id, answer)

    @app.get("/sessions/{session_id}/messages", tags=["turns"])
    async def messages(session_id: str, after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
                       hidden: bool = False) -> list[Message]:
        """The session's messages (with `after`, those created after that seq); with
        `hidden`, those reverts hide as well: every message of the log, in order."""
        return await service.messages(session_id, after=after, hidden=hidden)

    @app.get("/sessions/{session_id}/metrics", tags=["turns"])
    async def metrics(session_id: str) -> Metrics:
        """Messages, steps, tool calls, tokens and cost so far."""
        return await service.metrics(session_id)

    @app.get("/sessions/{session_id}/todos", tags=["turns"])
    async def todos(session_id: str) -> list[Todo]:
        """The agent's todo list."""
        return await service.todos(session_id)


def _event_routes(app: FastAPI, bridge: Bridge) -> None:
    service = bridge.service
    sse: dict[int | str, dict[str, Any]] = {200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "SSE: `id:` the event's seq, `event:` its type, `data:` the Event as JSON"}}
    every: dict[int | str, dict[str, Any]] = {200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "SSE: first an `id:` frame alone (the cursor the stream starts after), "
                       "then per event `id:` a cursor that resumes right after it, `event:` "
                       "its type, `data:` the Event as JSON (with its `session_id`)"}}

    @app.get("/sessions/{session_id}/events", tags=["events"], response_class=EventStream,
             status_code=200,
             responses=sse)
    async def events(
        session_id: str,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
        strict: bool = False,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> EventStream:
        """The session's events after `after` (or `Last-Event-ID`), stored then live; from
        its start with neither."""
        start = _cursor(last_event_id) if after is None else after
        return EventStream(_session_events(service, session_id, start, strict),
                           heartbeat=bridge.config.heartbeat, closing=bridge.closing)


    @app.get("/events", tags=["events"], status_code=200, response_class=EventStream,
             responses=every)
    async def all_events(
        after: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> EventStream:
        """Every session's events stored after the cursor `after` (or `Last-Event-ID`;
        `after` wins when both are given), then live; from now on with neither."""
        start = after if after is not None else (last_event_id or "").strip() or None
        return EventStream(_global_events(service, start),
                           heartbeat=bridge.config.heartbeat, closing=bridge.closing)


def _cursor(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > MAX_SEQ:  # not "²"
        raise InvalidArgument(f"Last-Event-ID {value[:40]!r} is not a seq")
    return int(value)


async def _session_events(service: SessionService, session_id: str, after: int,
                          strict: bool) -> AsyncIterator[tuple[str, str, str]]:
    await service.get_session(session_id)
    yield "", "ready", ""
    async for event in service.events(session_id, after=after, strict=strict):
        yield str(event.seq), event.type, event.model_dump_json()



async def _global_events(service: SessionService, after: str | None
                         ) -> AsyncIterator[tuple[str, str, str]]:
    start = after if after is not None else await service.events_cursor()
    events = service.all_events(after=start)  # a malformed cursor fails here, with a 400
    yield start, "ready", ""
    async for cursor, event in events:
        yield cursor, event.type, event.model_dump_json()

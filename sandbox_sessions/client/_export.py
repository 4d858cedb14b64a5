"""Exporting a session to one JSON Lines file, and importing it as a new session.

The file, one JSON object per line:

1. the header: `{"format": "sandbox-sessions.session", "version": 1, "exported_at",
   "session": {"id", "title", "agent", "config", "sandbox", "metadata"}}`;
2. one entry per message of the log, in the order they were created, those a revert hid
   included: `{"type": "message", "id", "parent_id", "hidden", "message"}`. `hidden` says
   whether a revert hid it (a dead branch: kept, not shown, never sent to the model; a revert
   still pending is written as final; an entry without it, from an older file, is shown).
   `parent_id` is the message before it on its branch: an assistant message's is the user
   message it answers; a shown user message's, the shown message before it; a hidden user
   message's, the message before it in the log (a revert hides a suffix, so a hidden run
   starts right after its branch point), or null for the first. A branch starts at an entry
   whose `parent_id` is not the line before: after `revert(m)` and a new prompt, `m` and the
   new prompt share a parent;
3. with the workspace: `{"type": "workspace", "index", "data"}` lines (base64 of a tar of the
   workdir, in chunks), then `{"type": "workspace-end", "chunks", "bytes", "sha256"}`.

An import makes the messages in order and hides the hidden ones again (a `messages-hidden`
event, final as a sent-on revert is). The tree is exact for one revert at a branch point;
after revert, resend, revert again, the second run's hidden prompt names the last answer of
the first run (which message was shown when a prompt was sent is not kept in the log).

Both ends go through the transport's public calls only (messages, commands, file reads and
writes), so they work alike in-process and over HTTP. The workspace's tar is made and
unpacked inside the containers, by `tar`; the host never parses it.

An import reads hostile input: every line is checked against its model before anything is
made, lines are capped, and a file of another format or version is an `InvalidArgument`. A
torn last line (a crash while writing) is left out with a warning: the messages before it
are imported, and a workspace whose end line is missing or whose hash differs is not
restored (with a warning).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._exceptions import InvalidArgument, SandboxError, SnapshotError
from .._types import (
    AgentConfig,
    AssistantMessage,
    CreateSessionRequest,
    ImportMessagesRequest,
    Message,
    Metadata,
    SandboxOptions,
    SessionInfo,
    ShellCommand,
    SnapshotPart,
    UserMessage,
)
from ..agent._snapshots import archive_command
from ._transport import Transport

__all__ = ["FORMAT", "VERSION", "export_session", "fork_session", "import_session"]

log = logging.getLogger("sandbox_sessions.export")

FORMAT = "sandbox-sessions.session"
VERSION = 1
MAX_LINE = 16 * 1024 * 1024
"""Longest line an import reads (16 MiB); a longer one is an error."""
CHUNK = 768 * 1024
"""Bytes of the workspace's tar per line (about 1 MiB of base64)."""
MAX_WORKSPACE = 4 * 1024 * 1024 * 1024
"""Largest workspace tar exported (4 GiB)."""
BATCH = 512 * 1024
"""Bytes of messages' JSON sent per import call (the bridge caps a JSON body at 1 MiB)."""
_TAR = "/tmp/.sandbox-sessions-export.tar"


class _Line(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class _Session(_Line):
    id: str
    title: str
    agent: str
    config: AgentConfig
    sandbox: SandboxOptions
    metadata: Metadata = Field(default_factory=dict)


class _Header(_Line):
    format: Literal["sandbox-sessions.session"]
    version: int
    exported_at: datetime
    session: _Session


class _MessageEntry(_Line):
    type: Literal["message"]
    id: str
    parent_id: str | None
    hidden: bool = False
    message: Message


class _WorkspaceChunk(_Line):
    type: Literal["workspace"]
    index: int
    data: str


class _WorkspaceEnd(_Line):
    type: Literal["workspace-end"]
    chunks: int
    bytes: int
    sha256: str


# --- export ----------------------------------------------------------------------------------


async def export_session(transport: Transport, session_id: str, path: str | os.PathLike[str],
                         *, workspace: bool = True) -> Path:
    """Write the session's export to `path` (made anew, atomically: a temporary file renamed
    into place once complete)."""
    target = Path(path)
    info = await transport.get_session(session_id)
    # every message first: one made in between is left out, rather than taken as hidden
    messages = await transport.messages(session_id, hidden=True)
    shown = {message.id for message in await transport.messages(session_id)}
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            file.write(_dump(_header_of(info)))
            for entry in _message_entries(messages, shown):
                file.write(_dump(entry))
            if workspace:
                await _export_workspace(transport, info, file)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _message_entries(messages: list[Message], shown: set[str]) -> Iterator[dict[str, Any]]:
    """The messages' entries, each with its branch parent (see the module's docstring)."""
    before: str | None = None
    shown_before: str | None = None
    for message in messages:
        hidden = message.id not in shown
        parent = message.parent_id if isinstance(message, AssistantMessage) \
            else before if hidden else shown_before
        yield {"type": "message", "id": message.id, "parent_id": parent, "hidden": hidden,
               "message": message.model_dump(mode="json")}
        before = message.id
        if not hidden:
            shown_before = message.id


def _header_of(info: SessionInfo) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION,
            "exported_at": datetime.now(UTC).isoformat(),
            "session": {"id": info.id, "title": info.title, "agent": info.agent,
                        "config": info.config.model_dump(mode="json"),
                        "sandbox": info.sandbox.model_dump(mode="json"),
                        "metadata": info.metadata}}


def _dump(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"


async def _export_workspace(transport: Transport, info: SessionInfo, file: Any) -> None:
    workdir = shlex.quote(info.sandbox.workdir)
    made = await transport.shell(info.id, ShellCommand(
        command=f"tar -cf {_TAR} -C {workdir} .", timeout=600.0, cwd="/"))
    try:
        if made.exit_code != 0:
            raise SandboxError(f"the workspace could not be archived: {made.stderr[-500:]}")
        digest, size, index = hashlib.sha256(), 0, 0
        async for data in _chunks(transport.read_file(info.id, _TAR, max_bytes=MAX_WORKSPACE)):
            digest.update(data)
            size += len(data)
            file.write(_dump({"type": "workspace", "index": index,
                              "data": base64.b64encode(data).decode("ascii")}))
            index += 1
        file.write(_dump({"type": "workspace-end", "chunks": index, "bytes": size,
                          "sha256": digest.hexdigest()}))
    finally:
        with anyio.CancelScope(shield=True):
            await transport.shell(info.id, ShellCommand(command=f"rm -f {_TAR}", cwd="/"))


async def _chunks(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream in pieces of `CHUNK` bytes (the last one shorter)."""
    pending = b""
    async for data in stream:
        pending += data
        while len(pending) >= CHUNK:
            yield pending[:CHUNK]
            pending = pending[CHUNK:]
    if pending:
        yield pending


# --- import ----------------------------------------------------------------------------------


class _Parsed:
    def __init__(self, header: _Header) -> None:
        self.header = header
        self.messages: list[Message] = []
        self.hidden: set[str] = set()
        self.workspace: _WorkspaceEnd | None = None
        self.chunks = 0


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Each line with its number and whether it is the file's last (a last line without a
    newline may be torn)."""
    with path.open("rb") as file:
        number = 0
        line = file.readline(MAX_LINE + 1)
        while line:
            number += 1
            following = file.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise InvalidArgument(f"{path}: line {number} is over {MAX_LINE} bytes")
            yield number, line, not following
            line = following


def _entry(path: Path, number: int, line: bytes, last: bool) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if last and not line.endswith(b"\n"):
            log.warning("%s: its last line is torn (%s): left out", path, exc)
            return None
        raise InvalidArgument(f"{path}: line {number} is not JSON") from None
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{path}: line {number} is not a JSON object")
    return entry


def _parse(path: Path) -> _Parsed:
    """Check the whole file and collect its history (the workspace is only counted)."""
    parsed: _Parsed | None = None
    digest, size = hashlib.sha256(), 0
    users: set[str] = set()
    for number, line, last in _lines(path):
        entry = _entry(path, number, line, last)
        if entry is None:
            break
        if parsed is None:
            parsed = _Parsed(_checked_header(path, entry))
            continue
        try:
            if entry.get("type") == "message":
                _add_message(parsed, _MessageEntry.model_validate(entry), users,
                             f"{path}: line {number}")
            elif entry.get("type") == "workspace":
                chunk = _WorkspaceChunk.model_validate(entry)
                if chunk.index != parsed.chunks or parsed.workspace is not None:
                    raise InvalidArgument(f"{path}: line {number}: workspace chunk out of order")
                data = base64.b64decode(chunk.data, validate=True)
                digest.update(data)
                size += len(data)
                parsed.chunks += 1
            elif entry.get("type") == "workspace-end":
                parsed.workspace = _WorkspaceEnd.model_validate(entry)
            else:
                raise InvalidArgument(f"{path}: line {number}: unknown entry type "
                                      f"{str(entry.get('type'))[:40]!r}")
        except (ValidationError, binascii.Error) as exc:
            raise InvalidArgument(f"{path}: line {number} is not a valid entry: "
                                  f"{str(exc)[:300]}") from None
    if parsed is None:
        raise InvalidArgument(f"{path}: empty, not a sandbox-sessions export")
    end = parsed.workspace
    if parsed.chunks and end is None:
        log.warning("%s: the workspace is incomplete (no end line): not restored", path)
    elif end is not None and (end.chunks, end.bytes, end.sha256) != (
            parsed.chunks, size, digest.hexdigest()):
        log.warning("%s: the workspace does not match its end line: not restored", path)
        parsed.workspace = None
    return parsed


def _add_message(parsed: _Parsed, entry: _MessageEntry, users: set[str], where: str) -> None:
    """Take a message entry, checked as the server will: an answer follows its prompt, and
    is hidden exactly when its prompt is (a revert hides a prompt with its answers)."""
    message = entry.message
    if isinstance(message, AssistantMessage):
        if message.parent_id not in users:
            raise InvalidArgument(f"{where}: the assistant message answers no user message "
                                  "before it")
        if entry.hidden != (message.parent_id in parsed.hidden):
            raise InvalidArgument(f"{where}: the assistant message is hidden and the user "
                                  "message it answers is not, or the reverse")
    else:
        users.add(message.id)
    if entry.hidden:
        parsed.hidden.add(message.id)
    parsed.messages.append(message)


def _checked_header(path: Path, entry: dict[str, Any]) -> _Header:
    if entry.get("format") != FORMAT:
        raise InvalidArgument(f"{path}: not a sandbox-sessions export (format "
                              f"{str(entry.get('format'))[:60]!r})")
    if entry.get("version") != VERSION:
        raise InvalidArgument(f"{path}: export version {str(entry.get('version'))[:20]} is "
                              f"not supported (this library reads version {VERSION})")
    try:
        return _Header.model_validate(entry)
    except ValidationError as exc:
        raise InvalidArgument(f"{path}: its header is not valid: {str(exc)[:300]}") from None


async def import_session(transport: Transport, path: str | os.PathLike[str], *,
                         title: str | None = None) -> SessionInfo:
    """Make a new session from an export (same agent, config, sandbox options, metadata),
    with its history and, when the file holds a complete one, its workspace."""
    source = Path(path)
    parsed = await anyio.to_thread.run_sync(_parse, source)
    session = parsed.header.session
    info = await transport.create_session(CreateSessionRequest(
        agent=session.agent, title=title or session.title, sandbox=session.sandbox,
        config=session.config, metadata=session.metadata))
    restore = None if parsed.workspace is None else partial(_import_workspace, transport, info,
                                                            source)
    await _fill(transport, info, parsed.messages, parsed.hidden, restore)
    return info


async def _fill(transport: Transport, info: SessionInfo, messages: list[Message],
                hidden: set[str], workspace: Callable[[], Awaitable[None]] | None) -> None:
    """Import `messages` into the new session `info`, hiding those of `hidden` again, then
    run `workspace`; end the session if either fails."""
    try:
        for batch in _batches(messages):
            await transport.import_messages(info.id, ImportMessagesRequest(
                messages=batch, hidden=[m.id for m in batch if m.id in hidden]))
        if workspace is not None:
            await workspace()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await transport.end_session(info.id)
        raise


def _batches(messages: list[Message]) -> Iterator[list[Message]]:
    """The messages in batches of about `BATCH` bytes, cut only before a user message: the
    server maps an answer's `parent_id`, and checks what is hidden, within one call."""
    batch: list[Message] = []
    size = 0
    for message in messages:
        length = len(message.model_dump_json())
        if batch and size + length > BATCH and isinstance(message, UserMessage):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += length
    if batch:
        yield batch


async def _workspace_bytes(path: Path) -> AsyncIterator[bytes]:
    """The workspace's tar, decoded line by line (the file was checked by `_parse`)."""
    with path.open("rb") as file:
        while line := await anyio.to_thread.run_sync(file.readline, MAX_LINE + 1):
            try:
                entry = json.loads(line)
            except ValueError:  # the torn last line `_parse` left out
                return
            if isinstance(entry, dict) and entry.get("type") == "workspace":
                yield base64.b64decode(entry["data"], validate=True)


async def _import_workspace(transport: Transport, info: SessionInfo, path: Path) -> None:
    await transport.put_file(info.id, _TAR, _workspace_bytes(path))
    await _unpack(transport, info)


async def _unpack(transport: Transport, info: SessionInfo) -> None:
    """Unpack `_TAR` into the session's workdir, inside its container, and remove it."""
    workdir = shlex.quote(info.sandbox.workdir)
    done = await transport.shell(info.id, ShellCommand(
        command=f"tar -xf {_TAR} -C {workdir} --no-same-owner; status=$?; rm -f {_TAR}; "
                "exit $status", timeout=600.0, cwd="/"))
    if done.exit_code != 0:
        raise SandboxError(f"the workspace could not be restored: {done.stderr[-500:]}")


# --- fork ------------------------------------------------------------------------------------


async def fork_session(transport: Transport, session_id: str, *, message_id: str | None,
                       workspace: bool, title: str | None) -> SessionInfo:
    """A new session whose `parent_id` is `session_id`: the same agent, config, sandbox options
    and metadata, the history before `message_id` (all of it when None) and, with
    `workspace`, a copy of the workdir (streamed container to container): as it is now, or
    at `message_id` as its snapshot holds it (see `agent/_snapshots.py`)."""
    info = await transport.get_session(session_id)
    messages = await transport.messages(session_id)
    tree = None
    if message_id is not None:
        at = next((i for i, m in enumerate(messages) if m.id == message_id), None)
        if at is None:
            raise InvalidArgument(f"no message {message_id[:80]!r} in session {session_id}")
        if workspace:
            tree = _snapshot_at(messages[:at + 1])
            if tree is None:
                raise SnapshotError(f"message {message_id[:80]!r} has no snapshot of the "
                                    "workspace (snapshots were off): fork(message_id, "
                                    "workspace=False) copies the history alone")
        messages = messages[:at]
    child = await transport.create_session(CreateSessionRequest(
        agent=info.agent, title=title or f"{info.title} (fork)", sandbox=info.sandbox,
        config=info.config, metadata=info.metadata, parent_id=info.id))
    copy = partial(_copy_workspace, transport, info, child, tree) if workspace else None
    await _fill(transport, child, messages, set(), copy)
    return child


def _snapshot_at(messages: list[Message]) -> str | None:
    """The snapshot of the last user message of `messages`: the workspace as that turn
    began."""
    user = next((m for m in reversed(messages) if isinstance(m, UserMessage)), None)
    parts = [] if user is None else user.parts
    return next((p.snapshot for p in parts if isinstance(p, SnapshotPart)), None)


async def _copy_workspace(transport: Transport, source: SessionInfo, target: SessionInfo,
                          tree: str | None) -> None:
    """Copy the source's workdir (or its snapshot `tree`) into the target's, as a tar made
    in the source's container and unpacked in the target's."""
    workdir = source.sandbox.workdir
    command = f"tar -cf {_TAR} -C {shlex.quote(workdir)} ." if tree is None \
        else archive_command(tree, workdir, _TAR)
    made = await transport.shell(source.id, ShellCommand(command=command, timeout=600.0,
                                                         cwd="/"))
    try:
        if made.exit_code != 0:
            raise SandboxError(f"the workspace could not be archived: {made.stderr[-500:]}")
        await transport.put_file(target.id, _TAR, transport.read_file(
            source.id, _TAR, max_bytes=MAX_WORKSPACE))
    finally:
        with anyio.CancelScope(shield=True):
            await transport.shell(source.id, ShellCommand(command=f"rm -f {_TAR}", cwd="/"))
    await _unpack(transport, target)

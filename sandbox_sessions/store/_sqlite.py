"""SQLite store: WAL, `synchronous=FULL`, a busy timeout. The only module that imports sqlite3."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from .._exceptions import StoreError
from .._types import SessionInfo
from .base import EventChunk

__all__ = ["SQLiteStore", "default_store_path"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    time_created REAL NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (session_id, first_seq)
) WITHOUT ROWID;
"""


def _head(db: sqlite3.Connection, session_id: str) -> int:
    query = "SELECT COALESCE(MAX(last_seq), 0) FROM events WHERE session_id=?"
    return int(db.execute(query, (session_id,)).fetchone()[0])


def default_store_path() -> Path:
    """`$SANDBOX_SESSIONS_DB`, else `$XDG_STATE_HOME/sandbox-sessions/sessions.db`."""
    explicit = os.environ.get("SANDBOX_SESSIONS_DB")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "sandbox-sessions" / "sessions.db"


class SQLiteStore:
    """Sessions in one SQLite file. Calls run in a worker thread, one at a time."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else default_store_path()
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, check_same_thread=False, timeout=10,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            with self._db:
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('owner_id', ?)", (uuid.uuid4().hex,)
                )
            row = self._db.execute("SELECT value FROM meta WHERE key='owner_id'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the session store at {self._path}: {exc}") from exc
        self._owner_id = str(row[0])

    @property
    def owner_id(self) -> str:
        return self._owner_id

    @property
    def location(self) -> str:
        return str(self._path.resolve())

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self._path}: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, work)

    async def put_session(self, info: SessionInfo) -> None:
        """See `Store.put_session`."""
        def put(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                    (info.id, info.status, info.time_created.timestamp(),
                     info.model_dump_json()),
                )

        await self._run(put)

    async def delete_session(self, session_id: str) -> None:
        """See `Store.delete_session`."""
        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM sessions WHERE id=?", (session_id,))

        await self._run(delete)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """See `Store.get_session`."""
        def get(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT info FROM sessions WHERE id=?", (session_id,)).fetchone()
            return None if row is None else str(row[0])

        raw = await self._run(get)
        return None if raw is None else SessionInfo.model_validate_json(raw)

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """See `Store.list_sessions`."""
        query = "SELECT info FROM sessions"
        if not include_ended:
            query += " WHERE status != 'ended'"
        query += " ORDER BY time_created DESC"
        rows = await self._run(lambda db: db.execute(query).fetchall())
        return [SessionInfo.model_validate_json(row[0]) for row in rows]

    async def append_events(self, chunks: Sequence[EventChunk]) -> dict[str, int]:
        """See `Store.append_events`."""

        def append(db: sqlite3.Connection) -> dict[str, int]:
            first: dict[str, int] = {}
            for chunk in chunks:
                first.setdefault(chunk.session_id, chunk.first_seq)
            with db:
                db.execute("BEGIN IMMEDIATE")  # the heads cannot move until we commit
                heads = {sid: _head(db, sid) for sid in first}
                behind = {sid: head for sid, head in heads.items() if head != first[sid] - 1}
                if not behind:
                    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)",
                                   [(c.session_id, c.first_seq, c.last_seq, c.data)
                                    for c in chunks])
            return behind

        return await self._run(append)

    async def read_events(
        self, session_id: str, *, after: int = 0, upto: int | None = None
    ) -> list[bytes]:
        """See `Store.read_events`."""
        query = "SELECT data FROM events WHERE session_id=? AND last_seq>?"
        args: tuple[object, ...] = (session_id, after)
        if upto is not None:
            query, args = query + " AND first_seq<=?", (*args, upto)
        rows = await self._run(
            lambda db: db.execute(query + " ORDER BY first_seq", args).fetchall())
        return [bytes(row[0]) for row in rows]

    async def last_seq(self, session_id: str) -> int:
        """See `Store.last_seq`."""
        return await self._run(lambda db: _head(db, session_id))

    async def aclose(self) -> None:
        """See `Store.aclose`."""
        await self._run(lambda db: db.close())

"""SQLite store: WAL, `synchronous=FULL`, a busy timeout. The only module that imports sqlite3."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import ValidationError

from .._exceptions import StoreError
from .._types import SessionInfo, SessionStatus, Tokens
from ._fold import ChunkError, Folded, fold_chunk
from .base import EventChunk, Lease

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
    pos INTEGER,
    PRIMARY KEY (session_id, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    session_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    holder TEXT NOT NULL,
    after INTEGER NOT NULL
);
"""
_POSITIONS = """
CREATE UNIQUE INDEX IF NOT EXISTS events_by_pos ON events (pos);
"""
"""The global order of the store's chunks (`pos`, given in the append transaction)."""
_FOLDS = """
CREATE TABLE IF NOT EXISTS folds (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS folded (session_id TEXT PRIMARY KEY, upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_by_session ON replies (session_id, kind);
"""
"""Folded deltas: each folded event with the first seq of the run it stands for, and per
session the last seq of the chunks folded so far (made on open, in stores older than them).
Replies: answers left by one process for a request that waits in another (`post_reply`)."""
FOLD_CHUNKS = 64
"""Chunks folded in one transaction at most (a long unfolded log is folded a part at a time,
so no write holds the store for long)."""
_COLUMNS = "session_id, first_seq, last_seq, data, pos"
_UNLISTED = "('ended', 'creating')"
_SAME_HOLDER = "session_id=? AND kind=? AND owner=? AND holder=?"


class _Corrupt(Exception):
    """A stored row that cannot be read back; turned into a `StoreError` naming it."""


def _head(db: sqlite3.Connection, session_id: str) -> int:
    query = "SELECT COALESCE(MAX(last_seq), 0) FROM events WHERE session_id=?"
    value = db.execute(query, (session_id,)).fetchone()[0]
    if not isinstance(value, int):
        raise _Corrupt(f"session {session_id}: a stored events row has a corrupt last_seq "
                       f"({value!r})")
    return value


def _info(session_id: str, raw: Any) -> SessionInfo:
    text = raw if isinstance(raw, str | bytes) else str(raw)
    try:
        return SessionInfo.model_validate_json(text)
    except ValidationError as exc:
        detail = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise _Corrupt(f"session {session_id}: its stored record (row id={session_id!r} of "
                       f"table sessions) is corrupt: {detail}") from exc


def _lease(row: tuple[Any, ...] | None) -> Lease | None:
    if row is None:
        return None
    session_id, kind, owner, expires, holder, after = row
    if kind not in ("create", "turn") or not isinstance(expires, int | float) \
            or not isinstance(after, int):
        raise _Corrupt(f"session {session_id}: its stored lease (row session_id="
                       f"{session_id!r} of table leases) is corrupt")
    return Lease(session_id=str(session_id), kind=kind, owner=str(owner),
                 expires=float(expires), holder=str(holder), after=after)


def _get_lease(db: sqlite3.Connection, session_id: str) -> Lease | None:
    row = db.execute("SELECT * FROM leases WHERE session_id=?", (session_id,)).fetchone()
    return _lease(row)


def _put(db: sqlite3.Connection, info: SessionInfo) -> None:
    db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
               (info.id, info.status, info.time_created.timestamp(), info.model_dump_json()))


def _lease_values(lease: Lease) -> tuple[object, ...]:
    return (lease.session_id, lease.kind, lease.owner, lease.expires, lease.holder, lease.after)


def _chunk(row: tuple[Any, ...]) -> EventChunk:
    session_id, first, last, data, position = row
    if not isinstance(first, int) or not isinstance(last, int) \
            or not isinstance(position, int):
        raise _Corrupt(f"session {session_id}: a stored events row (first_seq={first!r}) has "
                       f"corrupt seq numbers or position")
    blob = data if isinstance(data, bytes) else str(data).encode()
    return EventChunk(session_id=str(session_id), first_seq=first, last_seq=last, data=blob,
                      position=position)


def _last_position(db: sqlite3.Connection) -> int:
    value = db.execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0]
    return value if isinstance(value, int) else 0


def _migrate(db: sqlite3.Connection) -> None:
    """Give a store made before chunks had a global position (`pos`) one, in place: its
    chunks are numbered in (session, seq) order, the only order they have."""
    def has_positions() -> bool:
        return "pos" in {row[1] for row in db.execute("PRAGMA table_info(events)")}

    if has_positions():
        db.executescript(_POSITIONS)
        return
    with db:
        db.execute("BEGIN IMMEDIATE")  # another process may be migrating it too
        if not has_positions():
            db.execute("ALTER TABLE events ADD COLUMN pos INTEGER")
            keys = db.execute(
                "SELECT session_id, first_seq FROM events ORDER BY session_id, first_seq"
            ).fetchall()
            db.executemany("UPDATE events SET pos=? WHERE session_id=? AND first_seq=?",
                           [(index, *key) for index, key in enumerate(keys, start=1)])
        db.execute(_POSITIONS)


def _owner_row(db: sqlite3.Connection) -> tuple[Any, ...] | None:
    """The store's owner id row, once every table exists; None before."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "sessions", "events", "leases"} <= tables:
        return None
    row: tuple[Any, ...] | None = db.execute(
        "SELECT value FROM meta WHERE key='owner_id'").fetchone()
    return row


def _folded_upto(db: sqlite3.Connection, session_id: str) -> int:
    row = db.execute("SELECT upto FROM folded WHERE session_id=?", (session_id,)).fetchone()
    return row[0] if row is not None and isinstance(row[0], int) else 0


_Row = tuple[int, int, bytes]


def _unfolded(db: sqlite3.Connection, session_id: str, upto: int) -> tuple[int, list[_Row]]:
    """Where the session's folded chunks end, and the next chunks (`FOLD_CHUNKS` at most)
    that end at or before `upto`."""
    with db:  # one read transaction: the mark and the rows agree
        db.execute("BEGIN")
        start = _folded_upto(db, session_id)
        rows = db.execute(
            "SELECT first_seq, last_seq, data FROM events WHERE session_id=? AND first_seq>? "
            "AND last_seq<=? ORDER BY first_seq LIMIT ?",
            (session_id, start, upto, FOLD_CHUNKS)).fetchall()
    return start, [(first, last, data if isinstance(data, bytes) else str(data).encode())
                   for first, last, data in rows]


def _fold_rows(session_id: str, rows: list[_Row]) -> list[tuple[int, Folded]]:
    """The chunks among `rows` that change when folded, by first seq."""
    changed: list[tuple[int, Folded]] = []
    for first, _, data in rows:
        try:
            folded = fold_chunk(data)
        except ChunkError as exc:
            raise StoreError(f"session {session_id}: its stored events row first_seq={first} "
                             f"cannot be folded: {exc}") from exc
        if folded is not None:
            changed.append((first, folded))
    return changed


def _store_folds(db: sqlite3.Connection, session_id: str, start: int, end: int,
                 folds: list[tuple[int, Folded]]) -> bool:
    """Write folded chunks and move the session's fold mark from `start` to `end`, unless it
    moved meanwhile (False: nothing written).

    Without an fsync of its own (`synchronous=NORMAL` for this transaction): a fold lost to a
    power cut leaves the chunks as they were, which project to the same messages, and the WAL
    keeps the transaction whole or absent. The next durable commit makes it durable too."""
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            if _folded_upto(db, session_id) != start:
                return False
            db.executemany("UPDATE events SET data=? WHERE session_id=? AND first_seq=?",
                           [(folded.data, session_id, first) for first, folded in folds])
            db.executemany("INSERT OR REPLACE INTO folds VALUES (?, ?, ?)",
                           [(session_id, seq, run_first) for _, folded in folds
                            for run_first, seq in folded.runs])
            db.execute("INSERT OR REPLACE INTO folded VALUES (?, ?)", (session_id, end))
        return True
    finally:
        db.execute("PRAGMA synchronous=FULL")


def default_store_path() -> Path:
    """`$SANDBOX_SESSIONS_DB`, else `$XDG_STATE_HOME/sandbox-sessions/sessions.db`."""
    explicit = os.environ.get("SANDBOX_SESSIONS_DB")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "sandbox-sessions" / "sessions.db"


class SQLiteStore:
    """Sessions in one SQLite file. Calls run in a worker thread, one at a time.

    A write waits up to `busy_timeout` seconds for another connection's transaction, then
    fails with `StoreError`.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, busy_timeout: float = 10.0
    ) -> None:
        self._path = Path(path) if path is not None else default_store_path()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, check_same_thread=False,
                                       timeout=busy_timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            row = _owner_row(self._db)
            if row is None:  # a new store (or an older schema): the only write of an open
                with self._db:
                    self._db.executescript(_SCHEMA)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('owner_id', ?)",
                                     (uuid.uuid4().hex,))
                row = _owner_row(self._db)
            assert row is not None
            _migrate(self._db)
            self._db.executescript(_FOLDS)
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
            if self._closed:
                raise StoreError(f"the session store {self._path} is closed")
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self._path}: {exc}") from exc
            except _Corrupt as exc:
                raise StoreError(f"session store {self._path}: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, work)

    async def put_session(self, info: SessionInfo) -> None:
        """See `Store.put_session`."""
        def put(db: sqlite3.Connection) -> None:
            with db:
                _put(db, info)

        await self._run(put)

    async def update_session(self, info: SessionInfo, *, expect: SessionStatus) -> bool:
        """See `Store.update_session`."""
        def update(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(
                    "UPDATE sessions SET status=?, info=? WHERE id=? AND status=?",
                    (info.status, info.model_dump_json(), info.id, expect))
                return cursor.rowcount == 1

        return await self._run(update)

    async def add_usage(self, session_id: str, tokens: Tokens, cost: float) -> None:
        """See `Store.add_usage`."""
        def add(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")  # no other writer between the read and the write
                row = db.execute("SELECT info FROM sessions WHERE id=?",
                                 (session_id,)).fetchone()
                if row is None:
                    return
                info = _info(session_id, row[0])
                _put(db, info.model_copy(update={"tokens": info.tokens + tokens,
                                                 "cost": info.cost + cost}))

        await self._run(add)

    async def post_reply(self, session_id: str, kind: str, request_id: str, body: str) -> None:
        """See `Store.post_reply`."""
        def post(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO replies (session_id, kind, request_id, body) "
                           "VALUES (?, ?, ?, ?)", (session_id, kind, request_id, body))

        await self._run(post)

    async def take_replies(self, session_id: str, kind: str) -> list[tuple[str, str]]:
        """See `Store.take_replies`."""
        def take(db: sqlite3.Connection) -> list[tuple[str, str]]:
            if db.execute("SELECT 1 FROM replies WHERE session_id=? AND kind=? LIMIT 1",
                          (session_id, kind)).fetchone() is None:
                return []  # the usual case, without a write transaction
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute("SELECT id, request_id, body FROM replies WHERE "
                                  "session_id=? AND kind=? ORDER BY id",
                                  (session_id, kind)).fetchall()
                db.executemany("DELETE FROM replies WHERE id=?", [(row[0],) for row in rows])
            return [(str(row[1]), str(row[2])) for row in rows]

        return await self._run(take)

    async def delete_session(self, session_id: str) -> None:
        """See `Store.delete_session`."""
        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
                db.execute("DELETE FROM leases WHERE session_id=?", (session_id,))
                db.execute("DELETE FROM replies WHERE session_id=?", (session_id,))

        await self._run(delete)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """See `Store.get_session`."""
        def get(db: sqlite3.Connection) -> SessionInfo | None:
            row = db.execute("SELECT info FROM sessions WHERE id=?", (session_id,)).fetchone()
            return None if row is None else _info(session_id, row[0])

        return await self._run(get)

    async def list_sessions(self, *, include_ended: bool = False) -> list[SessionInfo]:
        """See `Store.list_sessions`."""
        query = "SELECT id, info FROM sessions"
        if not include_ended:
            query += f" WHERE status NOT IN {_UNLISTED}"
        query += " ORDER BY time_created DESC"

        def select(db: sqlite3.Connection) -> list[SessionInfo]:
            return [_info(str(row[0]), row[1]) for row in db.execute(query).fetchall()]

        return await self._run(select)

    async def create_session(self, info: SessionInfo, lease: Lease) -> None:
        """See `Store.create_session`."""
        def create(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                _put(db, info)
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                           _lease_values(lease))

        await self._run(create)

    async def finish_create(self, lease: Lease, info: SessionInfo | None) -> bool:
        """See `Store.finish_create`."""
        session_id = lease.session_id

        def finish(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("BEGIN IMMEDIATE")  # the lease and status cannot change meanwhile
                if _get_lease(db, session_id) != lease:
                    return False
                db.execute("DELETE FROM leases WHERE session_id=?", (session_id,))
                row = db.execute("SELECT status FROM sessions WHERE id=?",
                                 (session_id,)).fetchone()
                if row is None or row[0] != "creating":
                    return False
                if info is None:
                    db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
                else:
                    _put(db, info)
                return True

        return await self._run(finish)

    async def take_lease(self, lease: Lease, *, replacing: Lease | None = None) -> Lease | None:
        """See `Store.take_lease`."""
        def take(db: sqlite3.Connection) -> Lease | None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                current = _get_lease(db, lease.session_id)
                if current != replacing:
                    return current
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                           _lease_values(lease))
                return None

        return await self._run(take)

    async def renew_lease(self, lease: Lease) -> bool:
        """See `Store.renew_lease`."""
        def renew(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(f"UPDATE leases SET expires=? WHERE {_SAME_HOLDER}",
                                    (lease.expires, *_lease_values(lease)[:3], lease.holder))
                return cursor.rowcount == 1

        return await self._run(renew)

    async def release_lease(self, lease: Lease) -> bool:
        """See `Store.release_lease`."""
        def release(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(f"DELETE FROM leases WHERE {_SAME_HOLDER}",
                                    (*_lease_values(lease)[:3], lease.holder))
                return cursor.rowcount == 1

        return await self._run(release)

    async def get_lease(self, session_id: str) -> Lease | None:
        """See `Store.get_lease`."""
        return await self._run(lambda db: _get_lease(db, session_id))

    async def list_leases(self) -> list[Lease]:
        """See `Store.list_leases`."""
        def select(db: sqlite3.Connection) -> list[Lease]:
            rows = db.execute("SELECT * FROM leases ORDER BY session_id").fetchall()
            return [lease for lease in map(_lease, rows) if lease is not None]

        return await self._run(select)

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
                if not behind:  # positions follow commit order: writers are serialized
                    start = _last_position(db) + 1
                    db.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                                   [(c.session_id, c.first_seq, c.last_seq, c.data, start + i)
                                    for i, c in enumerate(chunks)])
            return behind

        return await self._run(append)

    async def read_events(
        self, session_id: str, *, after: int = 0, upto: int | None = None
    ) -> list[EventChunk]:
        """See `Store.read_events`."""
        # From the chunk that may hold `after` on: one seek, not a scan of the session's rows.
        query = (f"SELECT {_COLUMNS} FROM events WHERE session_id=? AND last_seq>? AND "
                 "first_seq>=(SELECT COALESCE(MAX(first_seq), 0) FROM events "
                 "WHERE session_id=? AND first_seq<=?)")
        args: tuple[object, ...] = (session_id, after, session_id, after)
        if upto is not None:
            query, args = query + " AND first_seq<=?", (*args, upto)

        def select(db: sqlite3.Connection) -> list[EventChunk]:
            rows = db.execute(query + " ORDER BY first_seq", args).fetchall()
            return [_chunk(row) for row in rows]

        return await self._run(select)

    async def read_all_events(self, *, after: int = 0, limit: int = 1000
                              ) -> list[EventChunk]:
        """See `Store.read_all_events`."""
        query = f"SELECT {_COLUMNS} FROM events WHERE pos>? ORDER BY pos LIMIT ?"

        def select(db: sqlite3.Connection) -> list[EventChunk]:
            return [_chunk(row) for row in db.execute(query, (after, limit)).fetchall()]

        return await self._run(select)

    async def last_position(self) -> int:
        """See `Store.last_position`."""
        return await self._run(_last_position)

    async def last_seq(self, session_id: str) -> int:
        """See `Store.last_seq`."""
        return await self._run(lambda db: _head(db, session_id))

    async def fold_deltas(self, session_id: str, *, upto: int) -> int:
        """See `Store.fold_deltas`. The chunks are read and folded outside any write
        transaction; the write then goes through only if nobody folded the session meanwhile
        (appends never change a stored chunk)."""
        removed = 0
        while True:
            start, rows = await self._run(partial(_unfolded, session_id=session_id, upto=upto))
            if not rows:
                return removed
            folds = await anyio.to_thread.run_sync(_fold_rows, session_id, rows)
            store = partial(_store_folds, session_id=session_id, start=start, end=rows[-1][1],
                            folds=folds)
            if not await self._run(store):
                return removed  # another process is folding this session
            removed += sum(folded.removed for _, folded in folds)
            if len(rows) < FOLD_CHUNKS:
                return removed

    async def folded_from(self, session_id: str, seq: int) -> int | None:
        """See `Store.folded_from`."""
        def select(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT first_seq FROM folds WHERE session_id=? AND seq=?",
                             (session_id, seq)).fetchone()
            return None if row is None or not isinstance(row[0], int) else row[0]

        return await self._run(select)

    async def aclose(self) -> None:
        """See `Store.aclose`."""
        def close(db: sqlite3.Connection) -> None:
            self._closed = True
            db.close()

        if not self._closed:
            await self._run(close)

"""`sqlite:///path` (or `sqlite:///:memory:`): the embedded default.

One connection per store, serialised by a lock; WAL mode so readers in other
processes are not blocked. Writes that must be atomic (`insert` with the owner
limit, `modify`) run in `BEGIN IMMEDIATE`, which also holds across processes
sharing the file. The record is a JSON document; the columns beside it exist
for filtering and for `touch`. `keyguard_meta.schema_version` drives migrations.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..exceptions import ConfigurationError, KeyLimitExceeded, KeyNotFound, StoreError
from ..models import KeyRecord
from .base import (
    INSERT_COLUMNS,
    SELECT_COLUMNS,
    UPDATE_SET,
    Store,
    Use,
    decode,
    decode_all,
    insert_row,
    live_sql,
    migrate,
    newly_counted,
    update_row,
)

_LIVE_OTHERS = f"SELECT count(*) FROM keyguard_keys WHERE owner = ? AND id != ? AND {live_sql('?')}"

# MIGRATIONS[n] brings a schema at version n to version n + 1.
MIGRATIONS = {
    0: [
        """CREATE TABLE IF NOT EXISTS keyguard_keys (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            last_used_at REAL,
            data TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS keyguard_keys_owner ON keyguard_keys (owner, created_at)",
    ],
    1: [
        "ALTER TABLE keyguard_keys ADD COLUMN suspended_at REAL",
        "ALTER TABLE keyguard_keys ADD COLUMN last_used_from TEXT",
    ],
}


BUSY_SECONDS = 10.0  # how long a statement waits for another connection's lock (busy timeout)


def _wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL. While another connection holds a write lock on
    a file still in rollback mode (several guards or processes opening one new
    database together), SQLite answers "database is locked" at once, without the
    busy timeout: retry, within the same bound as other statements."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # or a BUSY_* variant
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _record(row: tuple[str, str, float | None, str | None]) -> KeyRecord:
    return decode(row[0], row[1], (row[2], row[3]))


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        path = url.removeprefix("sqlite://")
        if path.startswith("/"):
            path = path[1:] or ":memory:"
        if not path:
            raise ConfigurationError(
                "store: a sqlite URL needs a path, as in sqlite:///keyguard.db"
            )
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if write:
                        conn.rollback()
                    raise
                if write:
                    conn.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.path!r}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        if self.path != ":memory:":
            _wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def setup(self) -> None:
        with self._db(write=True) as db:
            migrate(
                db,
                f"sqlite store {self.path!r}",
                MIGRATIONS,
                "INSERT OR REPLACE INTO keyguard_meta (name, value) VALUES ('schema_version', ?)",
            )

    def get(self, key_id: str) -> KeyRecord | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM keyguard_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return None if row is None else _record(row)

    @staticmethod
    def _check_limit(
        db: sqlite3.Connection, record: KeyRecord, limit: int | None, now: float
    ) -> None:
        # Inside BEGIN IMMEDIATE: no other writer (thread or process) runs meanwhile.
        if limit is not None:
            (live,) = db.execute(_LIVE_OTHERS, (record.owner, record.id, now)).fetchone()
            if live >= limit:
                raise KeyLimitExceeded(limit)

    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        with self._db(write=True) as db:
            self._check_limit(db, record, max_live_per_owner, now)
            db.execute(
                f"INSERT INTO keyguard_keys ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                insert_row(record),
            )

    def modify(
        self,
        key_id: str,
        change: Callable[[KeyRecord], KeyRecord],
        max_live_per_owner: int | None = None,
        now: float = 0.0,
    ) -> KeyRecord:
        with self._db(write=True) as db:
            row = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM keyguard_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise KeyNotFound(key_id)
            old = _record(row)
            new = change(old)
            if newly_counted(old, new, now):
                self._check_limit(db, new, max_live_per_owner, now)
            db.execute(
                f"UPDATE keyguard_keys SET {UPDATE_SET.format('?')} WHERE id = ?",
                (*update_row(new), key_id),
            )
            return new

    def delete(self, key_id: str) -> bool:
        with self._db(write=True) as db:
            return db.execute("DELETE FROM keyguard_keys WHERE id = ?", (key_id,)).rowcount > 0

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        sql = f"SELECT {SELECT_COLUMNS} FROM keyguard_keys WHERE 1 = 1"
        args: list[object] = []
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return decode_all((r[0], r[1], (r[2], r[3])) for r in rows)

    def touch(self, last_used: Mapping[str, Use]) -> None:
        if not last_used:
            return
        with self._db(write=True) as db:
            db.executemany(
                "UPDATE keyguard_keys SET last_used_at = ?, last_used_from = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                [(ts, ip, key_id, ts) for key_id, (ts, ip) in last_used.items()],
            )

    def get_meta(self, name: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM keyguard_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta_default(self, name: str, value: str) -> str:
        with self._db(write=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO keyguard_meta (name, value) VALUES (?, ?)", (name, value)
            )
            (stored,) = db.execute(
                "SELECT value FROM keyguard_meta WHERE name = ?", (name,)
            ).fetchone()
        return str(stored)

    def set_meta(self, name: str, value: str) -> None:
        with self._db(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO keyguard_meta (name, value) VALUES (?, ?)", (name, value)
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

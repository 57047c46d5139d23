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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..exceptions import ConfigurationError, StoreError
from .base import Use
from .sql import SQLStore

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


class SQLiteStore(SQLStore):
    # BEGIN IMMEDIATE (every write) excludes other writers, threads and processes alike.
    MARK = "?"
    UPSERT_META = "INSERT OR REPLACE INTO keyguard_meta (name, value) VALUES (?, ?)"
    INSERT_META = "INSERT OR IGNORE INTO keyguard_meta (name, value) VALUES (?, ?)"
    MIGRATIONS = MIGRATIONS

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
        self.where = f"sqlite store {path!r}"
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
                raise StoreError(f"{self.where}: {exc}") from exc

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

    def touch(self, last_used: Mapping[str, Use]) -> None:
        if not last_used:
            return
        with self._db(write=True) as db:
            db.executemany(
                "UPDATE keyguard_keys SET last_used_at = ?, last_used_from = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                [(ts, ip, key_id, ts) for key_id, (ts, ip) in last_used.items()],
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

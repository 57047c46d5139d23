"""What the SQL stores (SQLite, PostgreSQL) share: one table of JSON records with
the columns beside them that filtering and `touch` need, and every statement
but the few where the two dialects differ.

A dialect gives `_db(write)` (a DB-API connection, inside a transaction when
`write`), its placeholder `MARK`, `FOR_UPDATE` (how `modify` locks the row it
reads), `UPSERT_META`/`INSERT_META` (the meta table's upsert and insert-if-absent),
`_lock_owner` (what serialises an owner's creates across processes, when the
transaction alone does not) and `touch`. Statements are written with `?` and
turned into the dialect's placeholder once, at class creation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from ..exceptions import KeyLimitExceeded, KeyNotFound
from ..models import KeyRecord
from .base import (
    INSERT_COLUMNS,
    SELECT_COLUMNS,
    UPDATE_SET,
    Store,
    decode,
    decode_all,
    insert_row,
    live_sql,
    migrate,
    newly_counted,
    update_row,
)

_STATEMENTS = {
    "GET": f"SELECT {SELECT_COLUMNS} FROM keyguard_keys WHERE id = ?",
    "LIVE_OTHERS": "SELECT count(*) FROM keyguard_keys WHERE owner = ? AND id != ? AND "
    + live_sql("?"),
    "INSERT": f"INSERT INTO keyguard_keys ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "UPDATE": f"UPDATE keyguard_keys SET {UPDATE_SET.format('?')} WHERE id = ?",
    "DELETE": "DELETE FROM keyguard_keys WHERE id = ?",
    "LIST": f"SELECT {SELECT_COLUMNS} FROM keyguard_keys WHERE 1 = 1",
    "OF_OWNER": " AND owner = ?",
    "GET_META": "SELECT value FROM keyguard_meta WHERE name = ?",
}


class SQLStore(Store):
    MARK: ClassVar[str]  # the driver's placeholder
    FOR_UPDATE: ClassVar[str] = ""  # appended to `modify`'s read
    UPSERT_META: ClassVar[str]  # (name, value): insert or replace
    INSERT_META: ClassVar[str]  # (name, value): insert unless the name is there
    MIGRATIONS: ClassVar[dict[int, list[str]]]  # MIGRATIONS[n] brings version n to n + 1
    where: str  # for messages: the database, never a password
    sql: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.sql = {name: text.replace("?", cls.MARK) for name, text in _STATEMENTS.items()}

    def _db(self, write: bool = False) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _lock_owner(self, db: Any, owner: str) -> None:
        """Before counting an owner's live keys (nothing where the transaction
        already excludes every other writer)."""

    def setup(self) -> None:
        with self._db(write=True) as db:
            self._before_migrate(db)
            migrate(db, self.where, self.MIGRATIONS, self.UPSERT_META)

    def _before_migrate(self, db: Any) -> None:
        """Serialise racing instances' migrations where the transaction does not."""

    def get(self, key_id: str) -> KeyRecord | None:
        with self._db() as db:
            row = db.execute(self.sql["GET"], (key_id,)).fetchone()
        return None if row is None else _record(row)

    def _check_limit(self, db: Any, record: KeyRecord, limit: int | None, now: float) -> None:
        if limit is None:
            return
        self._lock_owner(db, record.owner)
        (live,) = db.execute(self.sql["LIVE_OTHERS"], (record.owner, record.id, now)).fetchone()
        if live >= limit:
            raise KeyLimitExceeded(limit)

    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        with self._db(write=True) as db:
            self._check_limit(db, record, max_live_per_owner, now)
            db.execute(self.sql["INSERT"], insert_row(record))

    def modify(
        self,
        key_id: str,
        change: Callable[[KeyRecord], KeyRecord],
        max_live_per_owner: int | None = None,
        now: float = 0.0,
    ) -> KeyRecord:
        with self._db(write=True) as db:
            row = db.execute(self.sql["GET"] + self.FOR_UPDATE, (key_id,)).fetchone()
            if row is None:
                raise KeyNotFound(key_id)
            old = _record(row)
            new = change(old)
            if newly_counted(old, new, now):
                self._check_limit(db, new, max_live_per_owner, now)
            db.execute(self.sql["UPDATE"], (*update_row(new), key_id))
            return new

    def delete(self, key_id: str) -> bool:
        with self._db(write=True) as db:
            return bool(db.execute(self.sql["DELETE"], (key_id,)).rowcount > 0)

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        sql = self.sql["LIST"]
        args: list[object] = []
        if owner is not None:
            sql += self.sql["OF_OWNER"]
            args.append(owner)
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return decode_all(((r[0], r[1], (r[2], r[3])) for r in rows), owner)

    def get_meta(self, name: str) -> str | None:
        with self._db() as db:
            row = db.execute(self.sql["GET_META"], (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta_default(self, name: str, value: str) -> str:
        with self._db(write=True) as db:
            db.execute(self.INSERT_META, (name, value))
            (stored,) = db.execute(self.sql["GET_META"], (name,)).fetchone()
        return str(stored)

    def set_meta(self, name: str, value: str) -> None:
        with self._db(write=True) as db:
            db.execute(self.UPSERT_META, (name, value))


def _record(row: tuple[str, str, float | None, str | None]) -> KeyRecord:
    return decode(row[0], row[1], (row[2], row[3]))

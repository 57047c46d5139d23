"""The store contract every backend implements (and the shared test suite checks).

Invariants a backend must keep, also across processes:
- `insert` counts the owner's live keys and inserts in one atomic step, so
  `max_keys_per_owner` holds under concurrent creates. `modify` does the same
  when its change makes a key count again (`newly_counted`: an expired key
  given a later expiry, a suspended one resumed), so no change escapes the limit.
- `modify` is an atomic read-modify-write, so concurrent rotate/revoke/update
  never lose each other's changes.
- `touch` only moves `last_used_at` (and its `last_used_from`) forward.
- A stored row that does not decode (bad JSON, a missing field, a wrong type:
  see `KeyRecord.from_json`) is a `StoreError` naming the key id, never its
  content, from `get` and `modify`; `list` logs it and leaves it out, so one bad
  row cannot hide every other key.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..exceptions import StoreError
from ..models import KeyRecord, is_time

logger = logging.getLogger("keyguard")

# 2: `suspended_at` and `last_used_from` (SQL: two columns; Redis: a hash).
SCHEMA_VERSION = 2

Use = tuple[float, str | None]  # a buffered last use: (time, client IP)


def migrate(db: Any, where: str, migrations: Mapping[int, Sequence[str]], upsert: str) -> None:
    """Bring a SQL store's schema to SCHEMA_VERSION, inside the caller's transaction.
    `db` is a DB-API connection (sqlite3, psycopg); `upsert` sets a meta (name, value)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS keyguard_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    row = db.execute("SELECT value FROM keyguard_meta WHERE name = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {version}; "
            f"this keyguard knows up to {SCHEMA_VERSION}: upgrade keyguard"
        )
    for step in range(version, SCHEMA_VERSION):
        for sql in migrations[step]:
            db.execute(sql)
    db.execute(upsert, ("schema_version", str(SCHEMA_VERSION)))


# The columns of a SQL store's INSERT, in the order of `insert_row`.
INSERT_COLUMNS = "id, owner, created_at, expires_at, revoked_at, suspended_at, last_used_at, data"
# The columns a SQL `modify` writes back: the record's own, by `update_row`.
UPDATE_SET = "owner = {0}, expires_at = {0}, revoked_at = {0}, suspended_at = {0}, data = {0}"
# The columns a SQL store reads, for `decode_row`.
SELECT_COLUMNS = "id, data, last_used_at, last_used_from"


def insert_row(record: KeyRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.owner,
        record.created_at,
        record.expires_at,
        record.revoked_at,
        record.suspended_at,
        record.last_used_at,
        record.to_json(),
    )


def update_row(record: KeyRecord) -> tuple[object, ...]:
    return (
        record.owner,
        record.expires_at,
        record.revoked_at,
        record.suspended_at,
        record.to_json(),
    )


def live_sql(mark: str) -> str:
    """`is_live` as a WHERE clause over the columns; `mark` is the driver's
    placeholder, bound to `now`."""
    return (
        "revoked_at IS NULL AND suspended_at IS NULL"
        f" AND (expires_at IS NULL OR expires_at > {mark})"
    )


def is_live(record: KeyRecord, now: float) -> bool:
    """Counts toward the owner's key limit: not revoked, not suspended, not expired."""
    return (
        record.revoked_at is None
        and record.suspended_at is None
        and (record.expires_at is None or record.expires_at > now)
    )


def newly_counted(old: KeyRecord, new: KeyRecord, now: float) -> bool:
    """A change after which the key counts toward its owner's limit where it did
    not (revived, resumed, or moved to another owner): `modify` checks the limit."""
    return is_live(new, now) and (not is_live(old, now) or new.owner != old.owner)


def decode(key_id: str, doc: str | bytes, used: tuple[Any, Any] | None = None) -> KeyRecord:
    """A stored record, with the last use kept beside it; StoreError naming the
    key id (and a log line) when the row is corrupt. Never quotes the row."""
    try:
        record = KeyRecord.from_json(doc)
        if record.id != key_id:
            raise ValueError("its id is not the one it is stored under")
        if used is not None and used[0] is not None:
            ts, ip = used
            if not is_time(ts) or not (ip is None or isinstance(ip, str)):
                raise ValueError("its last use is malformed")
            record = record.replace(last_used_at=float(ts), last_used_from=ip)
    except (ValueError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "corrupt"  # fixed texts only
        logger.error("keyguard: the stored record of key %s is unreadable (%s)", key_id, reason)
        raise StoreError(f"the stored record of key {key_id} is unreadable ({reason})") from None
    return record


def decode_all(
    rows: Iterable[tuple[str, str | bytes, tuple[Any, Any] | None]], owner: str | None = None
) -> list[KeyRecord]:
    """`decode` for a listing: a corrupt row is logged (by `decode`) and left out,
    and so is a row found under `owner` (an index, a column) whose record names
    another owner: a listing shows what `get` would let that owner manage."""
    out = []
    for key_id, doc, used in rows:
        try:
            record = decode(key_id, doc, used)
        except StoreError:
            continue
        if owner is not None and record.owner != owner:
            logger.error("keyguard: key %s is indexed under another owner than its own", key_id)
            continue
        out.append(record)
    return out


class Store(ABC):
    url: str

    @abstractmethod
    def setup(self) -> None:
        """Create or migrate the schema; idempotent, called before first use."""

    @abstractmethod
    def get(self, key_id: str) -> KeyRecord | None: ...

    @abstractmethod
    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        """Insert, refusing with KeyLimitExceeded if the owner is at the limit."""

    @abstractmethod
    def modify(
        self,
        key_id: str,
        change: Callable[[KeyRecord], KeyRecord],
        max_live_per_owner: int | None = None,
        now: float = 0.0,
    ) -> KeyRecord:
        """Atomically replace a record by `change(record)`; KeyNotFound if absent.
        When the change is `newly_counted` and the owner already holds
        `max_live_per_owner` other live keys: KeyLimitExceeded, nothing changed."""

    @abstractmethod
    def delete(self, key_id: str) -> bool: ...

    @abstractmethod
    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        """Records sorted by (created_at, id)."""

    @abstractmethod
    def touch(self, last_used: Mapping[str, Use]) -> None:
        """Record last uses, `{key id: (time, client IP or None)}`, in one batch;
        never moves a time backwards."""

    @abstractmethod
    def get_meta(self, name: str) -> str | None: ...

    @abstractmethod
    def set_meta_default(self, name: str, value: str) -> str:
        """Set `name` if unset; return the value now stored (first writer wins)."""

    def set_meta(self, name: str, value: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

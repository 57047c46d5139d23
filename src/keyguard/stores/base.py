"""The store contract every backend implements (and the shared test suite checks).

Invariants a backend must keep, also across processes:
- `insert` counts the owner's live keys and inserts in one atomic step, so
  `max_keys_per_owner` holds under concurrent creates.
- `modify` is an atomic read-modify-write, so concurrent rotate/revoke/update
  never lose each other's changes.
- `touch` only moves `last_used_at` forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..exceptions import StoreError
from ..models import KeyRecord

SCHEMA_VERSION = 1


def migrate(db: Any, where: str, migrations: Mapping[int, Sequence[str]], record: str) -> None:
    """Bring a SQL store's schema to SCHEMA_VERSION, inside the caller's transaction.
    `db` is a DB-API connection (sqlite3, psycopg); `record` upserts the version."""
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
    db.execute(record, (str(SCHEMA_VERSION),))


def insert_row(record: KeyRecord) -> tuple[object, ...]:
    """The values of a SQL store's INSERT, in its column order:
    (id, owner, created_at, expires_at, revoked_at, last_used_at, data)."""
    return (
        record.id,
        record.owner,
        record.created_at,
        record.expires_at,
        record.revoked_at,
        record.last_used_at,
        record.to_json(),
    )


def is_live(record: KeyRecord, now: float) -> bool:
    """Counts toward the owner's key limit: not revoked and not expired."""
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > now)


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
    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Atomically replace a record by `change(record)`; KeyNotFound if absent."""

    @abstractmethod
    def delete(self, key_id: str) -> bool: ...

    @abstractmethod
    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        """Records sorted by (created_at, id)."""

    @abstractmethod
    def touch(self, last_used: Mapping[str, float]) -> None:
        """Record last use times in one batch; never moves a time backwards."""

    @abstractmethod
    def get_meta(self, name: str) -> str | None: ...

    @abstractmethod
    def set_meta_default(self, name: str, value: str) -> str:
        """Set `name` if unset; return the value now stored (first writer wins)."""

    def set_meta(self, name: str, value: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

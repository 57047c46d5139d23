"""`memory://`: a dict behind a lock. One process only; gone when it exits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ..exceptions import KeyLimitExceeded, KeyNotFound
from ..models import KeyRecord
from .base import Store, is_live


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._records: dict[str, KeyRecord] = {}
        self._meta: dict[str, str] = {}
        self._lock = threading.RLock()

    def setup(self) -> None:
        pass

    def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        with self._lock:
            if max_live_per_owner is not None:
                live = sum(
                    1 for r in self._records.values() if r.owner == record.owner and is_live(r, now)
                )
                if live >= max_live_per_owner:
                    raise KeyLimitExceeded(max_live_per_owner)
            self._records[record.id] = record

    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        with self._lock:
            record = self._records.get(key_id)
            if record is None:
                raise KeyNotFound(key_id)
            self._records[key_id] = new = change(record)
            return new

    def delete(self, key_id: str) -> bool:
        with self._lock:
            return self._records.pop(key_id, None) is not None

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        with self._lock:
            records = [
                r
                for r in self._records.values()
                if (owner is None or r.owner == owner) and (include_revoked or r.revoked_at is None)
            ]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def touch(self, last_used: Mapping[str, float]) -> None:
        with self._lock:
            for key_id, ts in last_used.items():
                record = self._records.get(key_id)
                if record is not None and (record.last_used_at or 0) < ts:
                    self._records[key_id] = record.replace(last_used_at=ts)

    def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    def set_meta_default(self, name: str, value: str) -> str:
        with self._lock:
            return self._meta.setdefault(name, value)

    def set_meta(self, name: str, value: str) -> None:
        self._meta[name] = value

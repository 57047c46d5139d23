"""`memory://`: a dict behind a lock. One process only; gone when it exits.

Records are kept as the JSON documents every backend stores, so this store
decodes (and refuses corrupt rows) exactly as the others do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ..exceptions import KeyLimitExceeded, KeyNotFound
from ..models import KeyRecord
from .base import Store, Use, decode, decode_all, is_live, newly_counted


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._docs: dict[str, str] = {}  # id -> KeyRecord.to_json()
        self._used: dict[str, Use] = {}
        self._meta: dict[str, str] = {}
        self._lock = threading.RLock()

    def setup(self) -> None:
        pass

    def _get(self, key_id: str) -> KeyRecord | None:
        doc = self._docs.get(key_id)
        return None if doc is None else decode(key_id, doc, self._used.get(key_id))

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._get(key_id)

    def _check_limit(self, owner: str, limit: int | None, now: float, skip: str) -> None:
        if limit is None:
            return
        others = (r for r in self._all() if r.owner == owner and r.id != skip)
        if sum(1 for r in others if is_live(r, now)) >= limit:
            raise KeyLimitExceeded(limit)

    def _all(self) -> list[KeyRecord]:
        return decode_all((i, d, self._used.get(i)) for i, d in self._docs.items())

    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        with self._lock:
            self._check_limit(record.owner, max_live_per_owner, now, record.id)
            self._docs[record.id] = record.replace(last_used_at=None, last_used_from=None).to_json()
            if record.last_used_at is not None:
                self._used[record.id] = (record.last_used_at, record.last_used_from)

    def modify(
        self,
        key_id: str,
        change: Callable[[KeyRecord], KeyRecord],
        max_live_per_owner: int | None = None,
        now: float = 0.0,
    ) -> KeyRecord:
        with self._lock:
            record = self._get(key_id)
            if record is None:
                raise KeyNotFound(key_id)
            new = change(record)
            if newly_counted(record, new, now):
                self._check_limit(new.owner, max_live_per_owner, now, key_id)
            self._docs[key_id] = new.replace(last_used_at=None, last_used_from=None).to_json()
            return new

    def delete(self, key_id: str) -> bool:
        with self._lock:
            self._used.pop(key_id, None)
            return self._docs.pop(key_id, None) is not None

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        with self._lock:
            records = [
                r
                for r in self._all()
                if (owner is None or r.owner == owner) and (include_revoked or r.revoked_at is None)
            ]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def touch(self, last_used: Mapping[str, Use]) -> None:
        with self._lock:
            for key_id, (ts, ip) in last_used.items():
                current = self._used.get(key_id)
                if key_id in self._docs and (current is None or current[0] < ts):
                    self._used[key_id] = (ts, ip)

    def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    def set_meta_default(self, name: str, value: str) -> str:
        with self._lock:
            return self._meta.setdefault(name, value)

    def set_meta(self, name: str, value: str) -> None:
        self._meta[name] = value

"""`redis://host:6379/0?prefix=kg:`: persistent Redis as the durable store.

Layout under the prefix (default `keyguard:`): `key:<id>` the record as JSON,
`owner:<owner>` and `all` sorted sets (score `created_at`, member id; equal
scores sort by id, which is the listing order), `used` a hash of
`last_used_at`, `meta` a hash. Atomicity: `insert` (with the owner limit),
`delete` and `touch` are Lua scripts; `modify` runs the caller's function
between WATCH and MULTI/EXEC and retries when another writer got there first,
so no update is lost. The scripts touch keys they compute from the prefix, so
this store is for a single Redis (or a primary with replicas), not Redis
Cluster. Durability is Redis's: run it with AOF (`appendonly yes`).

Timeouts default to 2 s (override with `socket_timeout`/`socket_connect_timeout`
in the query); every driver error becomes `StoreError`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from ..exceptions import KeyLimitExceeded, KeyNotFound, StoreError
from ..models import KeyRecord
from ..redis import connect, parse_url
from .base import SCHEMA_VERSION, Store

DEFAULT_PREFIX = "keyguard:"
_MODIFY_ATTEMPTS = 200

# KEYS: record, owner set, all set. ARGV: json, created_at, id, limit (-1: none), now, prefix.
_INSERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local limit = tonumber(ARGV[4])
if limit >= 0 then
  local now = tonumber(ARGV[5])
  local live = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local doc = redis.call('GET', ARGV[6] .. 'key:' .. id)
    if doc then
      local r = cjson.decode(doc)
      if r.revoked_at == cjson.null and (r.expires_at == cjson.null or r.expires_at > now) then
        live = live + 1
      end
    end
  end
  if live >= limit then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
"""

# KEYS: record, all set, used hash. ARGV: id, prefix.
_DELETE = """
local doc = redis.call('GET', KEYS[1])
if not doc then return 0 end
local owner = cjson.decode(doc).owner
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. 'owner:' .. owner, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: used hash. ARGV: prefix, then id, ts pairs. Only moves times forward.
_TOUCH = """
for i = 2, #ARGV, 2 do
  local id, ts = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', ARGV[1] .. 'key:' .. id) == 1 then
    local cur = redis.call('HGET', KEYS[1], id)
    if (not cur) or tonumber(cur) < tonumber(ts) then redis.call('HSET', KEYS[1], id, ts) end
  end
end
return 0
"""


def client_from_url(url: str, timeout: float) -> tuple[redis.Redis, str]:
    """A redis-py client for `url` (redis://, rediss://, or redis+sentinel://, which
    follows a failover by itself) and its `prefix` query parameter, parsed as the
    cache's tier parses it (keyguard.redis)."""
    parsed = parse_url(url)
    client: redis.Redis = connect(parsed, timeout)
    return client, parsed.prefix


class RedisStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self._client, self.prefix = client_from_url(url, 2.0)
        self._where = parse_url(url).where  # hosts (several, under Sentinel), no password
        c = self._client
        self._insert = c.register_script(_INSERT)
        self._delete = c.register_script(_DELETE)
        self._touch = c.register_script(_TOUCH)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _fail(self, exc: redis.RedisError) -> StoreError:
        return StoreError(f"redis store {self._where}: {type(exc).__name__}")

    def setup(self) -> None:
        try:
            self._client.hsetnx(self._k("meta"), "schema_version", str(SCHEMA_VERSION))
            version = int(self._client.hget(self._k("meta"), "schema_version") or 0)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"redis store {self._where} has schema version {version}; "
                f"this keyguard knows up to {SCHEMA_VERSION}: upgrade keyguard"
            )

    def _read(self, key_id: str) -> KeyRecord | None:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._k("key", key_id))
        pipe.hget(self._k("used"), key_id)
        doc, used = pipe.execute()
        if doc is None:
            return None
        record = KeyRecord.from_json(doc)
        return record if used is None else record.replace(last_used_at=float(used))

    def get(self, key_id: str) -> KeyRecord | None:
        try:
            return self._read(key_id)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def insert(self, record: KeyRecord, max_live_per_owner: int | None, now: float) -> None:
        limit = -1 if max_live_per_owner is None else max_live_per_owner
        try:
            done = self._insert(
                keys=[self._k("key", record.id), self._k("owner", record.owner), self._k("all")],
                args=[
                    record.to_json(),
                    repr(record.created_at),
                    record.id,
                    limit,
                    repr(now),
                    self.prefix,
                ],
            )
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        if done == 0:
            raise KeyLimitExceeded(limit)
        if done == -1:
            raise StoreError(f"redis store {self._where}: duplicate key id")

    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        key = self._k("key", key_id)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for _ in range(_MODIFY_ATTEMPTS):
                    try:
                        pipe.watch(key)  # type: ignore[no-untyped-call]
                        doc = pipe.get(key)
                        if doc is None:
                            raise KeyNotFound(key_id)
                        old = KeyRecord.from_json(doc)
                        new = change(old)
                        pipe.multi()
                        pipe.set(key, new.to_json())
                        if new.owner != old.owner:
                            pipe.zrem(self._k("owner", old.owner), key_id)
                            pipe.zadd(self._k("owner", new.owner), {key_id: new.created_at})
                        pipe.execute()
                    except redis.WatchError:
                        time.sleep(random.uniform(0, 0.002))  # noqa: S311 - jitter, not crypto
                        continue
                    used = self._client.hget(self._k("used"), key_id)
                    return new if used is None else new.replace(last_used_at=float(used))
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        raise StoreError(f"redis store {self._where}: too much contention on one key")

    def delete(self, key_id: str) -> bool:
        try:
            return bool(
                self._delete(
                    keys=[self._k("key", key_id), self._k("all"), self._k("used")],
                    args=[key_id, self.prefix],
                )
            )
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        index = self._k("all") if owner is None else self._k("owner", owner)
        try:
            ids = [i.decode() for i in self._client.zrange(index, 0, -1)]  # type: ignore[union-attr]
            if not ids:
                return []
            pipe = self._client.pipeline(transaction=False)
            pipe.mget([self._k("key", i) for i in ids])
            pipe.hmget(self._k("used"), ids)
            docs, used = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        out: list[KeyRecord] = []
        for doc, ts in zip(docs, used, strict=True):
            if doc is None:  # deleted between the two reads
                continue
            record = KeyRecord.from_json(doc)
            if ts is not None:
                record = record.replace(last_used_at=float(ts))
            if include_revoked or record.revoked_at is None:
                out.append(record)
        return out

    def touch(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        args: list[Any] = [self.prefix]
        for key_id, ts in last_used.items():
            args += [key_id, repr(float(ts))]
        try:
            self._touch(keys=[self._k("used")], args=args)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def get_meta(self, name: str) -> str | None:
        try:
            value = self._client.hget(self._k("meta"), name)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        return None if value is None else value.decode()  # type: ignore[union-attr]

    def set_meta_default(self, name: str, value: str) -> str:
        try:
            self._client.hsetnx(self._k("meta"), name, value)
            stored = self._client.hget(self._k("meta"), name)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        return value if stored is None else stored.decode()  # type: ignore[union-attr]

    def set_meta(self, name: str, value: str) -> None:
        try:
            self._client.hset(self._k("meta"), name, value)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        self._client.close()

"""`redis://host:6379/0?prefix=kg:`: persistent Redis as the durable store.

Layout under the prefix (default `keyguard:`): `key:<id>` the record as JSON,
`owner:<owner>` and `all` sorted sets (score `created_at`, member id; equal
scores sort by id, which is the listing order), `used` a hash of
`last_used_at` and `from` one of `last_used_from`, `meta` a hash.
Atomicity: `insert` (with the owner limit), `delete` and `touch` are Lua
scripts; `modify` reads the record, runs the caller's function, and writes
with a compare-and-set script (which also counts the owner's live keys when
the change makes the key count again), retrying when another writer got
there first, so no update is lost and no revival escapes the limit. The
scripts touch keys they compute from the prefix, so this store is for a
single Redis (or a primary with replicas), not Redis Cluster.
Durability is Redis's: run it with AOF (`appendonly yes`).

Timeouts default to 2 s (override with `socket_timeout`/`socket_connect_timeout`
in the query); every driver error becomes `StoreError`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from ..exceptions import KeyLimitExceeded, KeyNotFound, StoreError
from ..models import KeyRecord
from ..redis import connect, parse_url
from .base import SCHEMA_VERSION, Store, Use, decode, decode_all, logger, newly_counted

DEFAULT_PREFIX = "keyguard:"
_MODIFY_ATTEMPTS = 200

# `base.is_live`, in Lua, over the owner's set (less one id). A document that does
# not decode counts as live: a corrupt row never makes room for one more key.
_LIVE_OTHERS = """
local function is_live(doc, now)
  local ok, r = pcall(cjson.decode, doc)
  if not ok or type(r) ~= 'table' then return true end
  local exp = r.expires_at
  return r.revoked_at == cjson.null
    and (r.suspended_at == nil or r.suspended_at == cjson.null)
    and (exp == cjson.null or type(exp) ~= 'number' or exp > now)
end
local function live_others(owner_set, prefix, now, skip)
  local live = 0
  for _, id in ipairs(redis.call('ZRANGE', owner_set, 0, -1)) do
    if id ~= skip then
      local doc = redis.call('GET', prefix .. 'key:' .. id)
      if doc and is_live(doc, now) then live = live + 1 end
    end
  end
  return live
end
"""

# KEYS: record, owner set, all set. ARGV: json, created_at, id, limit (-1: none), now, prefix.
_INSERT = (
    _LIVE_OTHERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local limit = tonumber(ARGV[4])
if limit >= 0 and live_others(KEYS[2], ARGV[6], tonumber(ARGV[5]), ARGV[3]) >= limit then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
"""
)

# Compare-and-set of one record: -2 when it changed since it was read (read again).
# KEYS: record, new owner set, old owner set.
# ARGV: old json, new json, limit (-1: none), now, prefix, id, created_at.
_REPLACE = (
    _LIVE_OTHERS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
local limit = tonumber(ARGV[3])
if limit >= 0 and live_others(KEYS[2], ARGV[5], tonumber(ARGV[4]), ARGV[6]) >= limit then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
if KEYS[2] ~= KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
end
return 1
"""
)

# KEYS: record, all set, used hash, from hash. ARGV: id, prefix.
_DELETE = """
local doc = redis.call('GET', KEYS[1])
if not doc then return 0 end
local ok, r = pcall(cjson.decode, doc)
if ok and type(r) == 'table' and type(r.owner) == 'string' then
  redis.call('ZREM', ARGV[2] .. 'owner:' .. r.owner, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

# KEYS: used hash, from hash. ARGV: prefix, then id, ts, ip ('' for none) triples.
# Only moves times forward; the address moves with its time.
_TOUCH = """
for i = 2, #ARGV, 3 do
  local id, ts, ip = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', ARGV[1] .. 'key:' .. id) == 1 then
    local cur = tonumber(redis.call('HGET', KEYS[1], id))
    if (not cur) or cur < tonumber(ts) then
      redis.call('HSET', KEYS[1], id, ts)
      if ip == '' then redis.call('HDEL', KEYS[2], id) else redis.call('HSET', KEYS[2], id, ip) end
    end
  end
end
return 0
"""


def _use(ts: bytes | None, ip: bytes | None) -> Use | None:
    """A last use as the hashes hold it; a malformed time becomes NaN, which
    `decode` refuses."""
    if ts is None:
        return None
    try:
        when = float(ts)
    except ValueError:
        when = math.nan
    return when, None if ip is None else ip.decode("utf-8", "replace")


def _ids(members: Any) -> list[str]:
    """The key ids an index holds; a member that is not text (written behind
    keyguard's back) is logged and passed over, so it cannot break a listing."""
    ids = []
    for member in members:
        try:
            ids.append(member.decode())
        except UnicodeDecodeError:
            logger.error("keyguard: a redis store index holds a member that is not a key id")
    return ids


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
        self._replace = c.register_script(_REPLACE)
        self._delete = c.register_script(_DELETE)
        self._touch = c.register_script(_TOUCH)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _fail(self, exc: redis.RedisError) -> StoreError:
        return StoreError(f"redis store {self._where}: {type(exc).__name__}")

    def setup(self) -> None:
        meta = self._k("meta")
        try:
            self._client.hsetnx(meta, "schema_version", str(SCHEMA_VERSION))
            version = int(self._client.hget(meta, "schema_version") or 0)
            # 1 -> 2: records without `suspended_at` read as not suspended, and the
            # `from` hash starts empty. Nothing to rewrite.
            if version < SCHEMA_VERSION:
                self._client.hset(meta, "schema_version", str(SCHEMA_VERSION))
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"redis store {self._where} has schema version {version}; "
                f"this keyguard knows up to {SCHEMA_VERSION}: upgrade keyguard"
            )

    def _read(self, key_id: str) -> tuple[bytes | None, Use | None]:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._k("key", key_id))
        pipe.hget(self._k("used"), key_id)
        pipe.hget(self._k("from"), key_id)
        doc, used, ip = pipe.execute()
        return doc, _use(used, ip)

    def get(self, key_id: str) -> KeyRecord | None:
        try:
            doc, used = self._read(key_id)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        return None if doc is None else decode(key_id, doc, used)

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

    def modify(
        self,
        key_id: str,
        change: Callable[[KeyRecord], KeyRecord],
        max_live_per_owner: int | None = None,
        now: float = 0.0,
    ) -> KeyRecord:
        key = self._k("key", key_id)
        try:
            for _ in range(_MODIFY_ATTEMPTS):
                doc, used = self._read(key_id)
                if doc is None:
                    raise KeyNotFound(key_id)
                old = decode(key_id, doc, used)
                new = change(old)
                limit = max_live_per_owner
                if limit is None or not newly_counted(old, new, now):
                    limit = -1
                done = self._replace(
                    keys=[key, self._k("owner", new.owner), self._k("owner", old.owner)],
                    args=[
                        doc,
                        new.to_json(),
                        limit,
                        repr(now),
                        self.prefix,
                        key_id,
                        repr(new.created_at),
                    ],
                )
                if done == 1:
                    return new
                if done == 0:
                    raise KeyLimitExceeded(limit)
                time.sleep(random.uniform(0, 0.002))  # noqa: S311 - jitter, not crypto
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        raise StoreError(f"redis store {self._where}: too much contention on one key")

    def delete(self, key_id: str) -> bool:
        try:
            return bool(
                self._delete(
                    keys=[self._k("key", key_id), self._k("all"), self._k("used"), self._k("from")],
                    args=[key_id, self.prefix],
                )
            )
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        index = self._k("all") if owner is None else self._k("owner", owner)
        try:
            ids = _ids(self._client.zrange(index, 0, -1))
            if not ids:
                return []
            pipe = self._client.pipeline(transaction=False)
            pipe.mget([self._k("key", i) for i in ids])
            pipe.hmget(self._k("used"), ids)
            pipe.hmget(self._k("from"), ids)
            docs, used, ips = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        rows = zip(ids, docs, used, ips, strict=True)
        records = decode_all(
            (
                (i, doc, _use(ts, ip))
                for i, doc, ts, ip in rows
                if doc is not None  # deleted between the two reads
            ),
            owner,
        )
        return [r for r in records if include_revoked or r.revoked_at is None]

    def touch(self, last_used: Mapping[str, Use]) -> None:
        if not last_used:
            return
        args: list[Any] = [self.prefix]
        for key_id, (ts, ip) in last_used.items():
            args += [key_id, repr(float(ts)), ip or ""]
        try:
            self._touch(keys=[self._k("used"), self._k("from")], args=args)
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

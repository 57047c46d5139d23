"""The shared cache tier (`cache: "redis://..."`) between the in-process cache and the store.

Owns: the record JSON cached in Redis for `cache_ttl` (unknown ids for a few
seconds), the change channel every instance subscribes to, and what happens
when Redis is away. It must never decide a request and never fail one: any
Redis error trips a short circuit breaker and the caller is answered from the
store, so a dead Redis costs at most one short timeout per breaker period.

Why a generation counter: a loader that read the store just before another
instance changed the key must not put the old record back into Redis after the
change deleted it. Every change bumps `gen:<id>`; a loader stores its result
only if the generation is still the one it saw before reading the store.

The listener thread (one per process, started lazily on the first miss so a
forking server starts it in each worker) drops local copies named on the
channel. It resubscribes by itself after an outage and then drops every local
copy, since messages sent meanwhile were lost. Changes made while Redis was
unreachable are re-published once it answers again.

Changes that never reach Redis (a guard without the Redis cache, such as the
CLI, or one whose Redis was down) are caught through the store: such a guard
writes a new random `changed` marker in the store's meta table after its
change (`KeyGuard.forget`). Every record put in Redis carries the marker its
writer last read, and a reader uses a Redis copy only when it carries the
marker the reader knows. A reader reads the marker again at least every
`local_cache_ttl / 2`, and what it takes from Redis lives in its in-process
cache only until `local_cache_ttl` after that read: so a change made anywhere
is seen everywhere within `local_cache_ttl`, as SPEC section 7 promises.

Sync only: the guard runs misses in a worker thread, so async callers never
block on this module.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from .exceptions import StoreError
from .models import KeyRecord
from .stores.redis import client_from_url

log = logging.getLogger("keyguard.shared")

SOCKET_TIMEOUT = 0.25  # loopback/LAN Redis answers in well under a millisecond
BREAKER_SECONDS = 1.0  # after an error, leave Redis alone this long
NEGATIVE_TTL = 5.0  # unknown ids
GEN_TTL = 3600  # far longer than any store read may take
_NEGATIVE = b""

# KEYS: entry, generation. ARGV: generation seen before the store read, value, ttl ms.
_SET_IF_SAME_GEN = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class SharedCache:
    def __init__(
        self,
        url: str,
        ttl: float,
        on_change: Callable[[str], None],
        on_reset: Callable[[], None],
        changed: Callable[[], str | None] = lambda: None,
        local_ttl: float = 5.0,
    ) -> None:
        self._client, prefix = client_from_url(url, SOCKET_TIMEOUT)
        self._entry = prefix + "cache:"
        self._gen = prefix + "gen:"
        self.channel = prefix + "changes"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._negative_ms = max(1, int(min(ttl, NEGATIVE_TTL) * 1000))
        self._set = self._client.register_script(_SET_IF_SAME_GEN)
        self._on_change = on_change
        self._on_reset = on_reset
        self._down_until = 0.0
        self._pending: set[str] = set()  # changes not yet published (Redis was away)
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._pid = 0
        self._closed = threading.Event()
        self._changed = changed  # the store's `changed` marker (see the module docstring)
        self._local_ttl = local_ttl
        self._marker = b""
        self._marker_read = -float("inf")  # time.monotonic() of the last read

    # -- health -------------------------------------------------------------

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _trip(self, exc: Exception) -> None:
        if self._up():
            log.warning("redis cache unavailable, answering from the store: %s", type(exc).__name__)
        self._down_until = time.monotonic() + BREAKER_SECONDS

    # -- lookups ------------------------------------------------------------

    def _marker_now(self) -> tuple[bytes, float]:
        """(the store's `changed` marker as last read, until when a copy taken from
        Redis under it may be kept in process), read again when half the local TTL
        has passed. A store that cannot answer leaves the old reading in place."""
        now = time.monotonic()
        if now - self._marker_read >= self._local_ttl / 2:
            try:
                self._marker = (self._changed() or "").encode()
                self._marker_read = now
            except StoreError:
                pass
        return self._marker, self._marker_read + self._local_ttl

    def load(
        self, key_id: str, fetch: Callable[[str], KeyRecord | None]
    ) -> tuple[KeyRecord | None, float]:
        """The record from Redis, else from `fetch` (the store), then shared in Redis;
        with the `time.monotonic()` until which it may be kept in process."""
        self._ensure_listener()
        if not self._up():
            return fetch(key_id), math.inf
        marker, keep_until = self._marker_now()
        entry, gen_key = self._entry + key_id, self._gen + key_id
        try:
            doc, gen = self._client.mget(entry, gen_key)
        except redis.RedisError as exc:
            self._trip(exc)
            return fetch(key_id), math.inf
        tag, _, body = cast(bytes, doc or b"").partition(b"|")  # redis-py gives bytes
        if doc is not None and tag == marker:  # written under the marker this reader knows
            if body == _NEGATIVE:
                return None, keep_until
            try:
                return KeyRecord.from_json(body), keep_until
            except (ValueError, TypeError, KeyError):
                pass  # not ours or corrupt: read the store and overwrite it
        record = fetch(key_id)
        value, ttl = (
            (_NEGATIVE, self._negative_ms)
            if record is None
            else (record.to_json().encode(), self._ttl_ms)
        )
        try:
            self._set(keys=[entry, gen_key], args=[gen or b"", marker + b"|" + value, ttl])
        except redis.RedisError as exc:
            self._trip(exc)
        return record, math.inf

    # -- changes ------------------------------------------------------------

    def publish(self, key_id: str) -> bool:
        """Drop the shared copy and tell every instance; queued if Redis is away.
        False when it could not be sent now."""
        self._ensure_listener()  # it re-publishes what could not be sent now
        with self._lock:
            self._pending.add(key_id)
        return self._up() and self._flush_pending()

    def _flush_pending(self) -> bool:
        with self._lock:
            ids, self._pending = self._pending, set()
        if not ids:
            return True
        try:
            pipe = self._client.pipeline(transaction=False)
            for key_id in ids:
                pipe.delete(self._entry + key_id)
                pipe.incr(self._gen + key_id)
                pipe.expire(self._gen + key_id, GEN_TTL)
                pipe.publish(self.channel, key_id)
            pipe.execute()
        except redis.RedisError as exc:
            self._trip(exc)
            with self._lock:
                self._pending |= ids
            return False
        return True

    # -- the listener -------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._pid == os.getpid() or self._closed.is_set():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._listener = threading.Thread(
                    target=self._listen, name="keyguard-invalidation", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        delay = 0.05
        while not self._closed.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._on_reset()  # whatever was published before now was missed
                delay = 0.05
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        data = message["data"]
                        self._on_change(data.decode() if isinstance(data, bytes) else str(data))
                    if self._pending:
                        self._flush_pending()
            except (redis.RedisError, OSError, ValueError) as exc:
                self._trip(exc)
                self._closed.wait(delay)
                delay = min(delay * 2, 1.0)
            finally:
                pubsub.close()

    def close(self) -> None:
        self._closed.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(2)
        self._client.close()

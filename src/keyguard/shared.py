"""The shared cache tier (`cache: "redis://..."`) between the in-process cache and the store.

Owns: the record JSON cached in Redis for `cache_ttl` (unknown ids for a few
seconds), the change channel every instance subscribes to, and what happens
when Redis is away. It must never decide a request and never fail one: it
talks to Redis only through the guard's `RedisTier` (keyguard.redis: one
client, one prefix, one breaker, whose docstring has the outage table), and
when the tier is unavailable the caller is answered from the store, so a dead
Redis costs at most one short timeout per breaker period.

Keys: `<prefix>cache:{<id>}` (the record) and `<prefix>gen:{<id>}` share the
hash tag `{<id>}`, so the scripts that touch both stay in one Cluster slot;
the channel is `<prefix>changes` (PUBLISH reaches every Cluster node).

Why a generation counter: a loader that read the store just before another
instance changed the key must not put the old record back into Redis after the
change deleted it. Every change bumps `gen:<id>`; a loader stores its result
only if the generation is still the one it saw before reading the store.

The listener thread (one per process, started lazily on the first miss so a
forking server starts it in each worker, on a subscription Redis confirmed
before that miss looked anything up) drops local copies named on the
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

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from .exceptions import StoreError
from .models import KeyRecord
from .redis import RedisTier, Unavailable

log = logging.getLogger("keyguard.shared")

NEGATIVE_TTL = 5.0  # unknown ids
GEN_TTL = 3600  # far longer than any store read may take
CONFIRM_SECONDS = 1.0  # Redis confirms a subscription in about a round trip
_NEGATIVE = b""

# KEYS: entry, generation. ARGV: generation seen before the store read, value, ttl ms.
_SET_IF_SAME_GEN = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: entry, generation. ARGV: channel, key id, generation ttl s. One change, told to all.
_CHANGED = """
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


class SharedCache:
    """`tier` is the guard's `RedisTier` (closed by its owner), or a URL for a tier
    of this cache's own (closed with it)."""

    def __init__(
        self,
        tier: RedisTier | str,
        ttl: float,
        on_change: Callable[[str], None],
        on_reset: Callable[[], None],
        changed: Callable[[], str | None] = lambda: None,
        local_ttl: float = 5.0,
    ) -> None:
        self._owns_tier = isinstance(tier, str)
        self._tier = RedisTier(tier) if isinstance(tier, str) else tier
        self.channel = self._tier.channel
        self._ttl_ms = max(1, int(ttl * 1000))
        self._negative_ms = max(1, int(min(ttl, NEGATIVE_TTL) * 1000))
        self._on_change = on_change
        self._on_reset = on_reset
        self._pending: set[str] = set()  # changes not yet published (Redis was away)
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # one subscription per process
        self._listener: threading.Thread | None = None
        self._pid = 0
        self._closed = threading.Event()
        self._changed = changed  # the store's `changed` marker (see the module docstring)
        self._local_ttl = local_ttl
        self._marker = b""
        self._marker_read = -float("inf")  # time.monotonic() of the last read

    def _keys(self, key_id: str) -> list[str]:
        return [self._tier.key("cache", key_id), self._tier.key("gen", key_id)]

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
        keys = self._keys(key_id)
        try:
            doc, gen = self._tier.call(lambda client: client.mget(keys))
        except Unavailable:
            return fetch(key_id), math.inf
        marker, keep_until = self._marker_now()
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
        with contextlib.suppress(Unavailable):
            self._tier.script(_SET_IF_SAME_GEN, keys, [gen or b"", marker + b"|" + value, ttl])
        return record, math.inf

    # -- changes ------------------------------------------------------------

    def publish(self, key_id: str) -> bool:
        """Drop the shared copy and tell every instance; queued if Redis is away.
        False when it could not be sent now."""
        self._ensure_listener()  # it re-publishes what could not be sent now
        with self._lock:
            self._pending.add(key_id)
        return self._flush_pending()

    def _flush_pending(self) -> bool:
        with self._lock:
            ids, self._pending = self._pending, set()
        unsent = set(ids)
        try:
            for key_id in ids:
                self._tier.script(_CHANGED, self._keys(key_id), [self.channel, key_id, GEN_TTL])
                unsent.discard(key_id)
        except Unavailable:
            with self._lock:
                self._pending |= unsent
            return False
        return True

    # -- the listener -------------------------------------------------------

    def _ensure_listener(self) -> None:
        """Subscribe (in this process, before its first lookup, so no change can be
        missed before it), then start the listener thread on that subscription."""
        if self._pid == os.getpid() or self._closed.is_set():
            return
        with self._starting:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                try:
                    first = self._tier.call(self._subscribe)
                except Unavailable:
                    first = None  # the listener subscribes when Redis answers
                self._listener = threading.Thread(
                    target=self._listen, args=(first,), name="keyguard-invalidation", daemon=True
                )
                self._listener.start()

    def _subscribe(self, client: Any) -> Any:
        """A subscription to the channel, confirmed by Redis (so it hears what is
        published from now on)."""
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            confirmed = pubsub.get_message(timeout=CONFIRM_SECONDS)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise TimeoutError("the subscription was not confirmed")
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def _listen(self, pubsub: Any) -> None:
        delay = 0.05
        tier = self._tier
        errors: tuple[type[BaseException], ...] = (*tier.errors, ValueError)
        while not self._closed.is_set():
            if pubsub is None:
                try:
                    pubsub = tier.call(self._subscribe)
                except Unavailable:
                    self._closed.wait(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                self._on_reset()  # whatever was published while unsubscribed was missed
            try:
                delay = 0.05
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        data = message["data"]
                        self._on_change(data.decode() if isinstance(data, bytes) else str(data))
                    if self._pending:
                        self._flush_pending()
            except errors as exc:
                tier.failed(exc)
                self._closed.wait(delay)
                delay = min(delay * 2, 1.0)
            finally:
                pubsub.close()
                pubsub = None

    def close(self) -> None:
        self._closed.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(2)
        if self._owns_tier:
            self._tier.close()

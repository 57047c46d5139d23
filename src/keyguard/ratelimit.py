"""Abuse resistance: per-key rate limits, failed-attempt throttling per client
IP, and usage quotas (SPEC section 4 step 8; settings `rate_limit`,
`abuse.max_failures`; the key field `max_uses`).

Owns the counting, on the `limits` library (fixed windows): `limits`'
MemoryStorage by default (with a leaner `incr`, see `_MemoryStorage`), its
Redis storage when the `cache` setting is a redis:// URL, so every instance
shares one budget.
Must not: decide anything of steps 1-7 (decision.py does), or ever turn a
counting failure into a 5xx.

- Rate limits run after steps 1-7 (only a proven key with the right scope
  spends its budget). Limit strings are parsed once per distinct string.
  Several windows ("10/second;1000/hour") are hit in order; the first window
  that is full refuses the request (windows hit before it keep the hit).
- Failed authentications (every 401 except `missing_credentials`, which is no
  guess) count per client IP (IPv6 per /64). Once an IP is over
  `abuse.max_failures`, this instance remembers it until the window resets
  and refuses it with 429 `too_many_failures` *before* parsing or looking up
  anything - a correct key from that IP too. The check is one dict lookup, so
  the warm path pays nothing for it. With Redis the count is shared; each
  instance starts refusing after it has itself seen one over-limit failure.
- Quotas (`max_uses`): with a Redis cache an INCR per use on
  `<prefix>:uses:<key id>` (atomic across instances; seeded once per process
  from the durable count with SET NX). Otherwise an in-process counter under a
  lock, seeded from the durable count. The durable count lives in the store's
  meta table (`uses:<key id>`) and is written with the `last_used_at` batch
  (every 60 s and on `close()`): after a crash of a process without Redis up
  to one batch of uses is forgotten, and several processes without Redis each
  count on their own. Configure a Redis cache where a quota must be exact.
- Redis unreachable: counting falls back to this process's memory for 5 s at
  a time (limits stay on, but per instance); never a 5xx, and a warning is
  logged once per outage.
- Async callers: memory counting is a few dict operations and runs inline;
  Redis counting (and the first, seeding use of a quota key) runs in a worker
  thread, so the event loop never waits on a socket.

Windows use the wall clock (`time.time`, as `limits` does), not the guard's
injected clock.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from .exceptions import TooManyRequests
from .network import IPAddress, parse_ip
from .settings import split_redis_url

if TYPE_CHECKING:
    from .decision import Entry
    from .models import KeyRecord
    from .settings import Settings
    from .stores import Store

log = logging.getLogger("keyguard.ratelimit")

REDIS_RETRY_SECONDS = 5.0
REDIS_TIMEOUT = 0.25
USES_TTL = 30 * 86_400  # a Redis use counter idle this long is reseeded from the store
MAX_BLOCKED = 100_000
MAX_PLANS = 100_000


class _MemoryStorage(MemoryStorage):
    """`limits`' in-process storage with a leaner `incr`, the call every counted
    request makes: `limits` takes a per-key lock, expires the key and checks (and
    often restarts) its 10 ms clean-up timer thread on every call, about 15,000
    CPU instructions, more than keyguard's whole warm check. Here one lock, the
    window reset on use, and expired windows swept at most once a second. The
    data stays `limits`' own (`storage`, `expirations`), so `get`, `get_expiry`
    and the limiter's `test` and window stats read it as before."""

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._counting = threading.Lock()
        self._next_sweep = 0.0

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        with self._counting:
            if self.expirations.get(key, 0.0) <= now:  # a new window starts with this hit
                self.storage[key] = 0
                self.expirations[key] = now + expiry
            value = self.storage[key] = self.storage[key] + amount
            if now >= self._next_sweep:
                self._next_sweep = now + self.SWEEP_SECONDS
                for stale in [k for k, until in self.expirations.items() if until <= now]:
                    self.storage.pop(stale, None)
                    self.expirations.pop(stale, None)
        return value


class QuotaExhausted(TooManyRequests):
    """429 quota_exhausted: waiting will not help, so no Retry-After."""

    code = "quota_exhausted"
    detail = "The API key has used up its quota."

    def headers(self) -> list[tuple[str, str]]:
        return list(self._headers)


def bucket(ip: IPAddress) -> str:
    """Whose failures these are: the address, or an IPv6 /64. A client with no
    address (a unix-socket peer that is not a trusted proxy, an `unknown` hop) has
    no bucket: such clients are never counted as one, or a few bad tokens from
    anyone would lock out everyone behind that socket."""
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class Abuse:
    """The counters of one guard. `admit` and `failed` may do I/O (Redis)."""

    def __init__(self, settings: Settings, store: Store, prefix: str = "keyguard") -> None:
        self._store = store
        url, url_prefix = split_redis_url(settings.cache or "")
        self._prefix = url_prefix + prefix
        self.default_limit = settings.rate_limit
        text = self._fail_text = settings.abuse.max_failures or ""
        self._fail_items: tuple[RateLimitItem, ...] = tuple(parse_many(text)) if text else ()
        self.throttling = bool(self._fail_items)
        self._memory = FixedWindowRateLimiter(_MemoryStorage())
        self._redis_url = url if url.startswith("redis") else None
        self.shared = self._redis_url is not None
        self._redis: FixedWindowRateLimiter | None = None
        self._redis_client: Any = None
        self._down_until = 0.0
        self._parsed: dict[str, tuple[RateLimitItem, ...]] = {}
        self._plans: dict[tuple[str, ...], tuple[tuple[RateLimitItem, str, int], ...]] = {}
        self.blocked: dict[str, float] = {}  # client bucket -> wall time it may try again
        self._lock = threading.Lock()
        self._uses: dict[str, int] = {}  # key id -> uses known to this process
        self._seeded: set[str] = set()  # key ids whose Redis counter this process seeded
        self._dirty: set[str] = set()
        self._warned_unknown = False

    # -- storage ----------------------------------------------------------

    def _limiter(self) -> FixedWindowRateLimiter:
        """Redis when configured and reachable, else this process's memory."""
        if self._redis_url is None or time.monotonic() < self._down_until:
            return self._memory
        if self._redis is None:
            storage: Storage = storage_from_string(  # type: ignore[assignment]
                self._redis_url,
                key_prefix=self._prefix,
                wrap_exceptions=True,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
            )
            self._redis = FixedWindowRateLimiter(storage)
        return self._redis

    def _down(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "keyguard: Redis unreachable for limits (%s); counting in this process for %.0f s",
                type(exc).__name__,
                REDIS_RETRY_SECONDS,
            )
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _hit(self, text: str, items: Sequence[RateLimitItem], *ids: str) -> RateLimitItem | None:
        """Hit every window of `items` (parsed from `text`) in order; the first full
        one, or None when all had room.

        This is `FixedWindowRateLimiter.hit` (`storage.incr(key, expiry) <= amount`)
        with each window's storage key built once per (limit, caller) instead of
        once per request: the warm path's largest saving. The plans are found by
        the limit's text (strings hash in C; `RateLimitItem`s hash in Python)."""
        limiter = self._limiter()
        name = (text, *ids)
        plan = self._plans.get(name)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[name] = tuple(
                (item, item.key_for(*ids), item.get_expiry()) for item in items
            )
        incr = limiter.storage.incr
        try:
            for item, key, expiry in plan:
                if incr(key, expiry) > item.amount:
                    return item
            return None
        except Exception as exc:  # a storage failure must never become a 5xx
            if limiter is self._memory:
                raise
            self._down(exc)
            return self._hit(text, items, *ids)

    def _full(self, items: Sequence[RateLimitItem], *ids: str) -> RateLimitItem | None:
        """The first window with no room left (without spending from it)."""
        limiter = self._limiter()
        try:
            return next((item for item in items if not limiter.test(item, *ids)), None)
        except Exception as exc:
            self._down(exc)
            return None

    def _reset_in(self, item: RateLimitItem, *ids: str) -> float:
        limiter = self._limiter()
        try:
            reset = limiter.get_window_stats(item, *ids).reset_time
        except Exception as exc:
            self._down(exc)
            reset = time.time() + item.get_expiry()
        return max(0.0, reset - time.time())

    # -- failed authentications, per client IP ------------------------------

    def check_client(self, ip: IPAddress | None) -> None:
        """Before any parsing or lookup: 429 when this client is throttled."""
        blocked = self.blocked
        if not blocked or ip is None:
            return
        key = bucket(ip)
        until = blocked.get(key)
        if until is None:
            return
        now = time.time()
        if now >= until:
            blocked.pop(key, None)
            return
        raise _too_many_failures(until - now)

    def throttles(self, peer: str | None) -> bool:
        """Is this socket peer, the client of a request with no forwarding header,
        among the throttled clients? (A lapsed block still counts until
        `check_client` clears it.) The warm path asks only while someone is."""
        ip = parse_ip(peer) if peer else None
        return ip is not None and bucket(ip) in self.blocked

    def failed(self, ip: IPAddress | None) -> None:
        """Count one failed authentication for this client."""
        if not self._fail_items:
            return
        if ip is None:
            if not self._warned_unknown:
                self._warned_unknown = True
                log.warning(
                    "keyguard: failed authentications from a client with no address (a unix "
                    "socket?) are not throttled; if a proxy forwards to this socket, add "
                    "'unix' to trusted_proxies so its X-Forwarded-For names the client"
                )
            return
        key = bucket(ip)
        # The failure that fills a window blocks at once: "30/minute" = 30 failures, then 429.
        items = self._fail_items
        full = self._hit(self._fail_text, items, "fail", key) or self._full(items, "fail", key)
        if full is None:
            return
        blocked = self.blocked
        if len(blocked) >= MAX_BLOCKED:
            now = time.time()
            for stale in [k for k, t in blocked.items() if t <= now]:
                blocked.pop(stale, None)
            if len(blocked) >= MAX_BLOCKED:
                blocked.pop(next(iter(blocked)), None)
        blocked[key] = time.time() + self._reset_in(full, "fail", key)

    async def afailed(self, ip: IPAddress | None) -> None:
        if self.shared and self._fail_items:
            await anyio.to_thread.run_sync(self.failed, ip)
        else:
            self.failed(ip)

    # -- per-key rate limit and quota ---------------------------------------

    def applies(self, record: KeyRecord) -> bool:
        """Does step 8 have work for this key (a rate limit or a use quota)?"""
        return (record.rate_limit or self.default_limit) is not None or record.max_uses is not None

    def admit(self, entry: Entry) -> None:
        """Step 8 for a key that passed steps 1-7: spend one request (and one use)."""
        record = entry.record
        text = record.rate_limit or self.default_limit
        if text is not None:
            items = self._parsed.get(text)
            if items is None:
                items = self._parsed[text] = _parse(text)
            if not items:
                raise TooManyRequests(
                    "rate_limited", "The API key's rate limit is not valid.", retry_after=60
                )
            full = self._hit(text, items, "key", record.id)
            if full is not None:
                self._refuse(full, record.id)
        if record.max_uses is not None:
            self._spend(record.id, record.max_uses)

    def admits_now(self, entry: Entry) -> bool:
        """Can `admit` run on an event loop: memory counters, the quota already seeded?"""
        return not self.shared and (entry.record.max_uses is None or entry.record.id in self._uses)

    async def aadmit(self, entry: Entry) -> None:
        if self.applies(entry.record) and not self.admits_now(entry):  # Redis, or the store's count
            await anyio.to_thread.run_sync(self.admit, entry)
        else:
            self.admit(entry)

    def _refuse(self, full: RateLimitItem, key_id: str) -> None:
        seconds = math.ceil(self._reset_in(full, "key", key_id)) or 1
        window = int(full.get_expiry())
        raise TooManyRequests(
            "rate_limited",
            "The API key's rate limit is exceeded.",
            retry_after=seconds,
            headers=[
                ("ratelimit-limit", str(full.amount)),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", str(seconds)),
                ("ratelimit-policy", f"{full.amount};w={window}"),
            ],
        )

    def _durable_uses(self, key_id: str) -> int:
        try:
            text = self._store.get_meta(f"uses:{key_id}")
            return int(text) if text else 0
        except Exception:  # a store without meta, or down: count from zero in memory
            return 0

    def _spend(self, key_id: str, max_uses: int) -> None:
        used = self._incr_shared(key_id) if self.shared else None
        if used is None:
            if key_id not in self._uses:
                seed = self._durable_uses(key_id)
                with self._lock:
                    self._uses.setdefault(key_id, seed)
            with self._lock:
                used = self._uses[key_id] + 1
                if used <= max_uses:
                    self._uses[key_id] = used
                    self._dirty.add(key_id)
        else:
            with self._lock:
                self._uses[key_id] = min(used, max_uses)
                self._dirty.add(key_id)
        if used > max_uses:
            raise QuotaExhausted()

    def _incr_shared(self, key_id: str) -> int | None:
        """INCR the shared use counter; None when Redis is down (count in memory)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            if self._redis_client is None:
                import redis

                self._redis_client = redis.Redis.from_url(
                    self._redis_url or "",
                    socket_timeout=REDIS_TIMEOUT,
                    socket_connect_timeout=REDIS_TIMEOUT,
                )
            name = f"{self._prefix}:uses:{key_id}"
            pipe = self._redis_client.pipeline(transaction=False)
            if key_id not in self._seeded:
                seed = self._uses.get(key_id) or self._durable_uses(key_id)
                pipe.set(name, seed, nx=True, ex=USES_TTL)
            pipe.incr(name)
            pipe.expire(name, USES_TTL)
            result = pipe.execute()
            self._seeded.add(key_id)
            return int(result[-2])
        except Exception as exc:
            self._down(exc)
            return None

    def flush(self) -> None:
        """Write the use counts of quota keys to the store (with the last-used batch)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            counts = {k: self._uses[k] for k in dirty if k in self._uses}
        for key_id, count in counts.items():
            try:
                self._store.set_meta(f"uses:{key_id}", str(count))
            except Exception:  # keep it for the next batch
                with self._lock:
                    self._dirty.add(key_id)

    def close(self) -> None:
        self.flush()
        if self._redis_client is not None:
            self._redis_client.close()


def _parse(text: str) -> tuple[RateLimitItem, ...]:
    try:
        return tuple(parse_many(text))
    except ValueError:
        return ()  # a corrupt stored limit fails closed (admit refuses)


def _too_many_failures(seconds: float) -> TooManyRequests:
    return TooManyRequests(
        "too_many_failures",
        "Too many failed authentications from this address; try again later.",
        retry_after=math.ceil(seconds) or 1,
    )

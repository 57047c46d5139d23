"""Abuse resistance: per-key rate limits, failed-attempt throttling per client
IP, and usage quotas (SPEC section 4 step 8; settings `rate_limit`,
`abuse.max_failures`; the key field `max_uses`).

Owns the counting: fixed windows that start with their first hit. `limits`
parses the limit strings (`parse_many`; each `RateLimitItem`'s `amount` and
`get_expiry()`, its public API only); the counters are keyguard's own: in
this process one small lock-protected dict, with the guard's `RedisTier` one
Lua script per request (INCR, PEXPIRE on a new window, PTTL for the reset)
over every window of the limit, whose keys `<prefix>rate:{<key id>}:<n>/<s>s`
share one Cluster hash tag. Every instance then shares one budget.
Must not: decide anything of steps 1-7 (decision.py does), or ever turn a
counting failure into a 5xx.

- Rate limits run after steps 1-7 (only a proven key with the right scope
  spends its budget). Limit strings are parsed once per distinct string.
  Several windows ("10/second;1000/hour") are hit in order; the first window
  that is full refuses the request (windows hit before it keep the hit).
- Failed authentications (every 401 except `missing_credentials`, which is no
  guess) count per client IP (IPv6 per /64; a client with no address is never
  counted). The failure that fills a window blocks at once ("30/minute" = 30
  failures, then 429): this instance remembers the client until the window
  resets and refuses it with 429 `too_many_failures` *before* parsing or
  looking up anything - a correct key from that IP too. The check is one dict
  lookup, so the warm path pays nothing for it. With Redis the count is
  shared; each instance starts refusing after it has itself seen one
  over-limit failure.
- Quotas (`max_uses`): with Redis a script per use on `<prefix>uses:{<key id>}`
  (atomic across instances; never below the count this process knows, which
  is seeded from the durable count). Otherwise an in-process counter under a
  lock, seeded from the durable count. The durable count lives in the store's
  meta table (`uses:<key id>`) and is written with the `last_used_at` batch
  (every 60 s and on `close()`): after a crash of a process without Redis up
  to one batch of uses is forgotten, and several processes without Redis each
  count on their own. Configure a Redis cache where a quota must be exact.
- Redis unavailable (the tier's breaker is open): counting falls back to this
  process's memory, a breaker period at a time (limits stay on, but per
  instance); never a 5xx. The tier warns once an outage.
- Async callers: memory counting is a few dict operations and runs inline;
  Redis counting (and the first, seeding use of a quota key) runs in a worker
  thread, so the event loop never waits on a socket.

Windows use the wall clock (`time.time`), not the guard's injected clock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING

import anyio.to_thread
from limits import RateLimitItem, parse_many

from .exceptions import TooManyRequests
from .network import IPAddress, bucket, parse_ip
from .redis import Unavailable

if TYPE_CHECKING:
    from .decision import Entry
    from .models import KeyRecord
    from .redis import RedisTier
    from .settings import Settings
    from .stores import Store

log = logging.getLogger("keyguard.ratelimit")

USES_TTL = 30 * 86_400  # a Redis use counter idle this long is reseeded from the store
MAX_BLOCKED = 100_000
MAX_PLANS = 100_000
MAX_WINDOWS = 1_000_000  # in-process counters; past it the oldest are dropped

# (counter key, hits allowed before the window is full, amount, window seconds)
Window = tuple[str, int, int, int]
# (windows in order, their keys, the script's ARGV: threshold, window ms per window)
Plan = tuple[tuple[Window, ...], list[str], list[int]]

# KEYS: one counter per window, in order (one hash tag). ARGV: threshold, window ms, ...
# Returns {index of the first window over its threshold (0: none), its ms left}.
_HIT = """
for i, key in ipairs(KEYS) do
  local hits = redis.call('INCR', key)
  local left = redis.call('PTTL', key)
  if left < 0 then
    left = tonumber(ARGV[2 * i])
    redis.call('PEXPIRE', key, left)
  end
  if hits > tonumber(ARGV[2 * i - 1]) then return {i, left} end
end
return {0, 0}
"""

# KEYS: a key's use counter. ARGV: the uses this process knows of, ttl s. Returns the uses.
_SPEND = """
local known = tonumber(ARGV[1])
if (tonumber(redis.call('GET', KEYS[1]) or '') or -1) < known then
  redis.call('SET', KEYS[1], known)
end
local used = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return used
"""


class _Counters:
    """Fixed windows in this process: counter key -> [hits, time.time() it ends].
    One lock; a window restarts on its first hit after it ended; ended windows
    are swept at most once a second."""

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def hit(self, windows: tuple[Window, ...]) -> tuple[Window, float] | None:
        """Hit each window in order; the first over its threshold and its seconds
        left, or None when all had room."""
        now = time.time()
        counters = self._windows
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            for window in windows:
                counter = counters.get(window[0])
                if counter is None or counter[1] <= now:
                    if counter is None and len(counters) >= MAX_WINDOWS:
                        del counters[next(iter(counters))]
                    counter = counters[window[0]] = [0, now + window[3]]
                counter[0] += 1
                if counter[0] > window[1]:
                    return window, counter[1] - now
        return None

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        counters = self._windows
        for key in [k for k, c in counters.items() if c[1] <= now]:
            del counters[key]


class QuotaExhausted(TooManyRequests):
    """429 quota_exhausted: waiting will not help, so no Retry-After."""

    code = "quota_exhausted"
    detail = "The API key has used up its quota."

    def headers(self) -> list[tuple[str, str]]:
        return list(self._headers)


class Abuse:
    """The counters of one guard: in this process, or through `tier` (the guard's
    Redis tier; None: this process only). `admit` and `failed` may do I/O then."""

    def __init__(self, settings: Settings, store: Store, tier: RedisTier | None = None) -> None:
        self._store = store
        self._tier = tier
        self.counts_remotely = tier is not None  # failed() and admit() talk to Redis
        self.default_limit = settings.rate_limit
        text = self._fail_text = settings.abuse.max_failures or ""
        self._fail_items: tuple[RateLimitItem, ...] = tuple(parse_many(text)) if text else ()
        self.throttling = bool(self._fail_items)  # are failed authentications counted at all?
        # Apart, so that failures from made-up clients (any number of /64s) can never
        # push a key's rate-limit window out of memory and reset its budget.
        self._key_windows = _Counters()
        self._client_windows = _Counters()
        self._parsed: dict[str, tuple[RateLimitItem, ...]] = {}
        self._plans: dict[tuple[str, str], Plan] = {}  # (limit text, key id) -> its plan
        # client bucket -> wall time it may try again; the step reads this very dict
        # (decision.Parts.blocked): changed in place, never rebound
        self.blocked: dict[str, float] = {}
        self._lock = threading.Lock()
        self._uses: dict[str, int] = {}  # key id -> uses known to this process
        self._dirty: set[str] = set()
        self._warned_unknown = False

    # -- counting -----------------------------------------------------------

    def _plan(self, items: tuple[RateLimitItem, ...], use: str, ident: str, slack: int) -> Plan:
        """The counters of `items` for one key id (or client): a window is full
        once it holds more than `amount - slack` hits."""
        tier = self._tier
        windows: dict[str, Window] = {}
        for item in items:
            seconds = item.get_expiry()
            name = f"{item.amount}/{seconds}s"
            key = f"{use}:{ident}:{name}" if tier is None else tier.key(use, ident, name)
            windows.setdefault(key, (key, item.amount - slack, item.amount, seconds))
        plan = tuple(windows.values())
        return plan, [w[0] for w in plan], [n for w in plan for n in (w[1], w[3] * 1000)]

    def _hit(self, plan: Plan, memory: _Counters) -> tuple[Window, float] | None:
        """Hit every window of `plan` in order: the first one full and its seconds
        left, or None. Through Redis when there is one and it answers, else in
        `memory`."""
        tier = self._tier
        if tier is not None:
            try:
                index, left = tier.script(_HIT, plan[1], plan[2])
            except Unavailable:
                pass
            else:
                return (plan[0][index - 1], left / 1000) if index else None
        return memory.hit(plan[0])

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
        # slack 1: the failure that fills a window blocks at once ("30/minute" = 30, then 429)
        full = self._hit(self._plan(self._fail_items, "fail", key, 1), self._client_windows)
        if full is None:
            return
        blocked = self.blocked
        if len(blocked) >= MAX_BLOCKED:
            now = time.time()
            for stale in [k for k, t in blocked.items() if t <= now]:
                blocked.pop(stale, None)
            if len(blocked) >= MAX_BLOCKED:
                blocked.pop(next(iter(blocked)), None)
        blocked[key] = time.time() + full[1]

    async def afailed(self, ip: IPAddress | None) -> None:
        if self.counts_remotely and self._fail_items:
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
            plan = self._plans.get((text, record.id)) or self._limit_plan(text, record.id)
            if not plan[0]:
                raise TooManyRequests(
                    "rate_limited", "The API key's rate limit is not valid.", retry_after=60
                )
            full = self._hit(plan, self._key_windows)
            if full is not None:
                _refuse(*full)
        if record.max_uses is not None:
            self._spend(record.id, record.max_uses)

    def _limit_plan(self, text: str, key_id: str) -> Plan:
        items = self._parsed.get(text)
        if items is None:
            if len(self._parsed) >= MAX_PLANS:
                self._parsed.clear()
            items = self._parsed[text] = _parse(text)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        plan = self._plans[text, key_id] = self._plan(items, "rate", key_id, 0)
        return plan

    def admits_now(self, entry: Entry) -> bool:
        """Can `admit` run on an event loop: memory counters, the quota already seeded?"""
        return not self.counts_remotely and (
            entry.record.max_uses is None or entry.record.id in self._uses
        )

    async def aadmit(self, entry: Entry) -> None:
        if self.applies(entry.record) and not self.admits_now(entry):  # Redis, or the store's count
            await anyio.to_thread.run_sync(self.admit, entry)
        else:
            self.admit(entry)

    def _durable_uses(self, key_id: str) -> int:
        try:
            text = self._store.get_meta(f"uses:{key_id}")
            return int(text) if text else 0
        except Exception:  # a store without meta, or down: count from zero in memory
            return 0

    def _spend(self, key_id: str, max_uses: int) -> None:
        used = self._spend_shared(key_id) if self._tier is not None else None
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
                self._uses[key_id] = max(self._uses.get(key_id, 0), min(used, max_uses))
                self._dirty.add(key_id)
        if used > max_uses:
            raise QuotaExhausted()

    def _spend_shared(self, key_id: str) -> int | None:
        """One use on the shared counter; None when Redis is unavailable (count in memory)."""
        assert self._tier is not None
        known = self._uses.get(key_id)
        if known is None:
            known = self._durable_uses(key_id)
        try:
            return int(
                self._tier.script(_SPEND, [self._tier.key("uses", key_id)], [known, USES_TTL])
            )
        except Unavailable:
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
        """Write the use counts out (the tier is closed by its owner, the guard)."""
        self.flush()


def _refuse(window: Window, seconds: float) -> None:
    reset = math.ceil(seconds) or 1
    raise TooManyRequests(
        "rate_limited",
        "The API key's rate limit is exceeded.",
        retry_after=reset,
        headers=[
            ("ratelimit-limit", str(window[2])),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", str(reset)),
            ("ratelimit-policy", f"{window[2]};w={window[3]}"),
        ],
    )


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

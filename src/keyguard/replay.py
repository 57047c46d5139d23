"""The replay cache of signed requests (SPEC section 6): a signature seen again
inside its window is refused with 401 `replayed_request`.

Owns: remembering each proven signature (its MAC), in this process always and
through the guard's `RedisTier` (`SET NX PX` on `<prefix>replay:{<key
id>}:<MAC>`) when there is one, so another instance refuses it too. Must not:
check a signature or a timestamp (signing.py does, before asking), or remember
a request that was refused (the caller asks last).

How long: in this process, until the signature's timestamp leaves the window
on the clock that judged it fresh (`ts + max_skew + 1 s`: one clock, so
nothing is forgotten while it could still pass). In Redis, for a constant
`ttl` = `max_skew` + the 5 s a timestamp may be ahead + `CLOCK_MARGIN`,
counted by Redis from the moment it is remembered: never from this instance's
clock, since another instance whose clock is behind finds the timestamp fresh
for longer. Replays across instances are refused as long as their clocks are
less than `CLOCK_MARGIN` (30 s) apart.

Redis unavailable (keyguard.redis has the outage table): a signed request is
refused with 503 `unavailable` (fail closed: this process's memory alone
cannot say whether another instance took the signature, and SPEC sections 6
and 7 want replays refused across instances and no wrong decision while Redis
is down), and not remembered here either, so the client's retry passes once
Redis answers. A warning is logged at most once a minute. Bearer requests
never ask the replay cache.

Redis that lost what it held (a restart without persistence, a flush): each
signature is remembered by one script that also reads an
epoch marker, `<prefix>replay:{epoch}` (`<prefix>replay:{<key id>}` on a
Cluster, so in the same slot as that key's signatures), and sets it when it
is missing, to the time it was set. An instance that saw one marker and then
meets another knows the signatures remembered before were lost: until they
can no longer be fresh, it refuses (503 `unavailable`, `Retry-After`) every
signature whose timestamp is not later than the new marker's time plus the
5 s a timestamp may be ahead, since any of them may have been used before the
loss. A marker an instance meets first is taken as it is (the first use of a
Redis cannot be told from a loss): an instance that had not used the replay
cache since it started, and meets a marker made by a loss, does not refuse
that window. The loss is dated by the later of the marker's time and this
instance's clock. What no marker shows, and replay protection across
instances therefore needs Redis not to do: evict a signature while the marker
stays (any `maxmemory-policy` but `noeviction`: warned once at the first use),
or come back with older data (a restart from an RDB snapshot, a replica
promoted before it had every write): a signature taken in the moments before
can then be replayed once on another instance (never on the one that took it).

The in-process set is bounded (`REPLAY_LIMIT`): full of live signatures, a
new one is refused with 503 `unavailable` (fail closed), unremembered.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from .exceptions import AuthenticationError, ServiceUnavailable
from .redis import RedisTier, Unavailable
from .signing import FUTURE_SKEW

log = logging.getLogger("keyguard.replay")

REPLAY_LIMIT = 1_000_000  # remembered signatures per process before refusing (fail closed)
WARN_EVERY = 60.0  # seconds between two warnings that Redis cannot be asked
CLOCK_MARGIN = 30.0  # seconds the clocks of two instances may differ by (the Redis ttl's margin)
EPOCHS_LIMIT = 100_000  # markers remembered (one per key id on a Cluster) before starting afresh

# KEYS[1]: the epoch marker, KEYS[2]: the signature; ARGV[1]: a new marker, ARGV[2]: ttl (ms).
# -> {the marker, 1 when the signature was not there (now it is), else 0}
_REMEMBER = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return {epoch, 1}
end
return {epoch, 0}
"""


class ReplayCache:
    """`tier`: the guard's Redis tier (None: this process only); `max_skew`: how old
    a timestamp may be; `clock`: the guard's clock (timestamps are on it)."""

    def __init__(
        self, tier: RedisTier | None, max_skew: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._tier = tier
        self.shared = tier is not None  # remembering does I/O (Redis)
        self.max_skew = float(max_skew)
        # How long Redis keeps a signature: longer than any instance finds it fresh.
        self.ttl = self.max_skew + FUTURE_SKEW + CLOCK_MARGIN
        self._ttl_ms = int(self.ttl * 1000)
        self._clock = clock
        self._seen: dict[bytes, float] = {}  # MAC -> until when it is remembered
        self._expiry: deque[tuple[float, bytes]] = deque()  # (until, MAC) in arrival order
        self._lock = threading.Lock()
        self._warned = -WARN_EVERY  # time.monotonic() of the last warning
        # The epoch marker's tag: one per Redis, or per key id on a Cluster (its slot).
        self._per_key = tier is not None and tier.url.scheme == "redis+cluster"
        self._marker = secrets.token_hex(4)  # this instance's part of a marker it sets
        self._markers = itertools.count()  # and a new one each time: no two markers alike
        # marker tag -> (the marker last seen, the time Redis lost its memory, if it did)
        self._epochs: dict[str, tuple[bytes, float | None]] = {}
        self._policy_checked = False  # Redis's eviction policy looked at (once)

    def remember(self, key_id: str, mac: bytes, ts: float) -> None:
        """Refuse a signature seen before inside its window (blocking, with Redis);
        503 `unavailable` when Redis cannot say (see the module docstring)."""
        now = self._clock()
        if self._remember_here(mac, ts, now):
            try:
                if self._remember_shared(key_id, mac, ts, now):
                    return
            except ServiceUnavailable:
                self._forget(mac)  # not taken: the client's retry may pass later
                raise
        raise AuthenticationError("replayed_request", "This signed request was already received.")

    def _forget(self, mac: bytes) -> None:
        with self._lock:
            self._seen.pop(mac, None)

    def _remember_here(self, mac: bytes, ts: float, now: float) -> bool:
        """Record the MAC; False when it was already seen inside its window.

        No lock on the usual path: `dict.setdefault` is atomic, so of two threads
        with one MAC exactly one inserts it. (A MAC fixes the timestamp, so a fresh
        request never meets an expired copy of its own MAC; that case, and the
        clean-up, take the lock.)"""
        until, seen = ts + self.max_skew + 1.0, self._seen
        previous = seen.setdefault(mac, until)
        if previous is not until:  # this MAC was here before
            with self._lock:
                if seen.get(mac, now) > now:
                    return False
                seen[mac] = until
        queue = self._expiry
        queue.append((until, mac))
        if queue[0][0] <= now or len(seen) > REPLAY_LIMIT:
            self._forget_expired(now, mac)
        return True

    def _forget_expired(self, now: float, mac: bytes) -> None:
        """Drop expired MACs (arrival order is nearly expiry order: from the front);
        still over the limit: refuse this one, unremembered (fail closed)."""
        seen, queue = self._seen, self._expiry
        with self._lock:
            while queue and queue[0][0] <= now:
                old_until, old = queue.popleft()
                if seen.get(old) == old_until:
                    del seen[old]
            if len(seen) > REPLAY_LIMIT:
                seen.pop(mac, None)
                raise ServiceUnavailable(
                    detail="Too many signed requests in the window; try again later."
                )

    def _remember_shared(self, key_id: str, mac: bytes, ts: float, now: float) -> bool:
        """SET NX in Redis; False when another request (anywhere) had this MAC;
        503 when Redis cannot be asked, or lost what it held and `ts` may be of a
        signature used before (fail closed)."""
        tier = self._tier
        if tier is None:
            return True
        tag = key_id if self._per_key else "epoch"
        marker = tier.key("replay", tag)
        key = tier.key("replay", key_id, base64.urlsafe_b64encode(mac).decode())
        fresh_marker = f"{now:.3f} {self._marker}.{next(self._markers)}"
        try:
            epoch, taken = tier.script(_REMEMBER, [marker, key], [fresh_marker, self._ttl_ms])
        except Unavailable:
            wall = time.monotonic()
            if wall - self._warned >= WARN_EVERY:
                self._warned = wall
                log.warning(
                    "keyguard: Redis replay cache unreachable; signed requests are refused "
                    "(503) until it answers"
                )
            raise ServiceUnavailable(
                detail="The replay cache cannot be reached; try again later."
            ) from None
        lost = self._lost(tag, epoch)
        if not self._policy_checked:
            self._check_policy(tier)
        if not taken:
            return False
        if lost is not None and ts < lost + FUTURE_SKEW:  # may have been used before the loss
            raise ServiceUnavailable(
                detail="The replay cache lost what it remembered; sign the request again."
            )
        return True

    def _check_policy(self, tier: RedisTier) -> None:
        """Once: warn when Redis may evict keys (a `maxmemory-policy` other than
        `noeviction` with a `maxmemory`): an evicted signature can be replayed on
        another instance, and no marker tells (SECURITY.md). Best effort: a Redis
        that refuses CONFIG (managed services) is left unjudged."""
        self._policy_checked = True
        try:
            config = tier.call(lambda c: c.config_get("maxmemory*"))
        except Exception:  # noqa: BLE001 - CONFIG disabled, a Cluster's shape, ...: no verdict
            return
        if not isinstance(config, dict):
            return
        text = {_text(k): _text(v) for k, v in config.items()}
        policy, limit = text.get("maxmemory-policy"), text.get("maxmemory")
        if policy not in (None, "noeviction") and str(limit or "0") != "0":
            log.warning(
                "keyguard: Redis may evict keys (maxmemory-policy %s): a signature it evicts "
                "can be replayed on another instance; give the replay cache a Redis with "
                "maxmemory-policy noeviction",
                policy,
            )

    def _lost(self, tag: str, epoch: bytes) -> float | None:
        """When Redis lost what it held under this marker's tag, if this instance
        saw it happen: a marker other than the one it saw before."""
        seen = self._epochs.get(tag)
        if seen is not None and seen[0] == epoch:
            return seen[1]
        lost = None
        if seen is not None:  # the marker is new: Redis forgot the one before, and all
            # When: the later of the time it was set (by its setter's clock) and now by
            # this instance's, so a setter whose clock is behind cannot shorten the window.
            lost = self._clock()
            with contextlib.suppress(ValueError):
                lost = max(lost, float(epoch.split(b" ")[0]))
            log.warning(
                "keyguard: the Redis replay cache lost what it held (a restart without "
                "persistence, a flush); signatures made before are refused until they expire"
            )
        if len(self._epochs) >= EPOCHS_LIMIT:
            self._epochs.clear()
        self._epochs[tag] = (epoch, lost)
        return lost

    def close(self) -> None:
        """Forget every signature (the tier is closed by its owner, the guard)."""
        with self._lock:
            self._seen.clear()
            self._expiry.clear()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

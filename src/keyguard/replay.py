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

Redis unavailable (keyguard.redis has the outage table): the check falls back
to this process's memory alone and logs a warning at most once a minute: a
replay to *another* instance is then not caught until Redis is back. It does
not fail closed there, since that would turn a cache outage into a full
outage of signed traffic; it does not fail silently either. The in-process
set is bounded (`REPLAY_LIMIT`): full of live signatures, a new one is
refused with 503 `unavailable` (fail closed), unremembered.
"""

from __future__ import annotations

import base64
import logging
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

    def remember(self, key_id: str, mac: bytes, ts: float) -> None:
        """Refuse a signature seen before inside its window (blocking, with Redis)."""
        now = self._clock()
        if not self._remember_here(mac, ts, now) or not self._remember_shared(key_id, mac, ts, now):
            raise AuthenticationError(
                "replayed_request", "This signed request was already received."
            )

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
        """SET NX in Redis; False when another request (anywhere) had this MAC."""
        tier = self._tier
        if tier is None:
            return True
        ttl_ms = self._ttl_ms  # constant: the local clock says nothing of the others'
        key = tier.key("replay", key_id, base64.urlsafe_b64encode(mac).decode())
        try:
            return bool(tier.call(lambda client: client.set(key, b"1", nx=True, px=ttl_ms)))
        except Unavailable:  # fall back to this process's memory, loudly
            wall = time.monotonic()
            if wall - self._warned >= WARN_EVERY:
                self._warned = wall
                log.warning(
                    "keyguard: Redis replay cache unreachable; signed requests are checked "
                    "against this process's replay cache only until it is back"
                )
            return True

    def close(self) -> None:
        """Forget every signature (the tier is closed by its owner, the guard)."""
        with self._lock:
            self._seen.clear()
            self._expiry.clear()

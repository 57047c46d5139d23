"""The replay cache of signed requests (keyguard.replay), ported from the replay
cases of tests/test_signing.py: in process always, through a real Redis when
the guard has one, and what happens while that Redis is away. (Cluster and
Sentinel: tests/test_redis_tier.py.)"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keyguard.exceptions import AuthenticationError, ServiceUnavailable
from keyguard.redis import RedisTier
from keyguard.replay import CLOCK_MARGIN, ReplayCache
from keyguard.signing import FUTURE_SKEW

from . import servers
from .kgutil import Clock
from .test_stores import _redis_cleanup

SKEW = 30.0  # signing.max_skew_seconds' default


def mac() -> bytes:
    return hashlib.sha256(secrets.token_bytes(16)).digest()


def outcome(cache: ReplayCache, key_id: str, signature: bytes, ts: float) -> str:
    try:
        cache.remember(key_id, signature, ts)
    except (AuthenticationError, ServiceUnavailable) as exc:
        return exc.code
    return "ok"


UNREACHABLE = "cannot be reached"  # the detail of the 503 while Redis does not answer
LOST = "lost what it remembered"  # the detail of the 503 for a signature made before a loss


def answer(cache: ReplayCache, key_id: str, signature: bytes, ts: float) -> str:
    """`outcome`, with the reason of a 503."""
    try:
        cache.remember(key_id, signature, ts)
    except ServiceUnavailable as exc:
        return "unreachable" if UNREACHABLE in exc.detail else "lost" if LOST in exc.detail else "?"
    except AuthenticationError as exc:
        return exc.code
    return "ok"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def local(clock: Clock) -> ReplayCache:
    return ReplayCache(None, SKEW, clock)


@pytest.fixture
def tiers(redis_url: str, redis_prefix: str) -> Iterator[tuple[RedisTier, RedisTier]]:
    """Two tiers on one Redis and one prefix: two app instances."""
    one, two = (
        RedisTier(f"{redis_url}?prefix={redis_prefix}"),
        RedisTier(f"{redis_url}?prefix={redis_prefix}"),
    )
    yield one, two
    one.close()
    two.close()
    _redis_cleanup(redis_url, redis_prefix)


def test_replay_within_and_after_the_window(local: ReplayCache, clock: Clock) -> None:
    signature, ts = mac(), clock.now
    assert outcome(local, "k", signature, ts) == "ok"
    clock.advance(10)
    assert outcome(local, "k", signature, ts) == "replayed_request"
    assert outcome(local, "k", mac(), clock.now) == "ok"  # a fresh signature passes
    clock.advance(SKEW + 1 - 10 + 0.5)  # the first one left its window: forgotten
    assert outcome(local, "k", signature, ts) == "ok"
    assert not local.shared


def test_replay_cache_is_bounded_and_forgets_expired_signatures(
    local: ReplayCache, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyguard.replay.REPLAY_LIMIT", 3)
    first = [mac() for _ in range(3)]
    assert [outcome(local, "k", m, clock.now) for m in first] == ["ok"] * 3
    late = mac()
    assert outcome(local, "k", late, clock.now) == "unavailable"  # fail closed: no room
    clock.advance(SKEW + 2)  # the first three leave the window (max_skew + 1 s)
    assert outcome(local, "k", late, clock.now) == "ok"  # and was not burnt by its refusal


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
def test_one_signature_from_many_threads_passes_once(
    request: pytest.FixtureRequest, clock: Clock, shared: bool
) -> None:
    tier = request.getfixturevalue("tiers")[0] if shared else None
    cache = ReplayCache(tier, SKEW, clock)
    signature, ts = mac(), clock.now
    barrier = threading.Barrier(8)
    results: list[str] = []

    def attempt() -> None:
        barrier.wait()
        results.append(outcome(cache, "k", signature, ts))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["replayed_request"] * 7


def test_replay_to_another_instance_is_refused_through_redis(
    tiers: tuple[RedisTier, RedisTier], clock: Clock
) -> None:
    one, two = (ReplayCache(t, SKEW, clock) for t in tiers)
    assert one.shared and two.shared
    signature = mac()
    assert outcome(one, "key1", signature, clock.now) == "ok"
    assert outcome(two, "key1", signature, clock.now) == "replayed_request"
    assert outcome(two, "key1", mac(), clock.now) == "ok"  # another signature passes


def test_redis_down_refuses_signed_requests_and_says_so(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: this process alone cannot tell a replay sent to another
    instance from a first use, so while Redis cannot be asked every signature is
    refused (503 `unavailable`), and none is remembered (the client's retry may
    pass once Redis answers)."""
    tier = RedisTier(f"redis://127.0.0.1:{servers.free_port()}/0")  # nothing listens there
    cache = ReplayCache(tier, SKEW, clock)
    try:
        signature = mac()
        with caplog.at_level(logging.WARNING):
            assert outcome(cache, "k", signature, clock.now) == "unavailable"
            assert outcome(cache, "k", mac(), clock.now) == "unavailable"  # the breaker's second
        warned = [r for r in caplog.records if "replay cache unreachable" in r.getMessage()]
        assert len(warned) == 1  # once a minute, not once a request
        assert "refused" in warned[0].getMessage()
        assert not cache._seen  # nothing taken in this process either
    finally:
        cache.close()
        tier.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[servers.RedisServer]:
    """A redis-server of this test's own (no persistence), to stop and restart."""
    server = servers.RedisServer(servers.free_port(), str(tmp_path)).start()
    yield server
    server.stop()


def _restart(server: servers.RedisServer) -> None:
    server.stop()  # killed: without persistence, everything it held is gone
    server.start()


def _until_redis_answers(attempt: Callable[[], str]) -> str:
    """Call `attempt` (an `answer`) until Redis answers it (past the breaker's probe
    period); each refusal meanwhile remembered nothing."""
    deadline = time.monotonic() + 10
    while True:
        got = attempt()
        if got != "unreachable" or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_signature_refused_while_redis_was_down_passes_when_it_is_back(
    own_redis: servers.RedisServer, clock: Clock
) -> None:
    tier = RedisTier(f"{own_redis.url}?prefix=t:")
    cache = ReplayCache(tier, SKEW, clock)
    try:
        assert answer(cache, "k", mac(), clock.now) == "ok"
        own_redis.stop()
        signature = mac()
        assert answer(cache, "k", signature, clock.now) == "unreachable"
        own_redis.start()  # (what it held is gone: a loss)
        assert _until_redis_answers(lambda: answer(cache, "k", signature, clock.now)) == "lost"
        clock.advance(FUTURE_SKEW + 1)  # the retry the client makes: signed again, later
        assert answer(cache, "k", mac(), clock.now) == "ok"
    finally:
        cache.close()
        tier.close()


@pytest.mark.parametrize("how", ["restart", "flush"])
def test_signatures_made_before_redis_lost_its_memory_are_refused(
    own_redis: servers.RedisServer, clock: Clock, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two instances; a signature used on one; Redis restarts without persistence
    (or is flushed): sent to the other, that signature is no longer in Redis,
    yet it is refused (503), as is every signature timestamped before the loss
    (+ 5 s), on every instance that had used the replay cache, until they are
    stale. Signatures made after pass."""
    url = f"{own_redis.url}?prefix=t:"
    one_tier, two_tier = RedisTier(url), RedisTier(url)
    one, two = ReplayCache(one_tier, SKEW, clock), ReplayCache(two_tier, SKEW, clock)
    try:
        used_on_one, used_on_two = mac(), mac()  # each instance has seen the marker
        t0 = clock.now
        assert answer(one, "k", used_on_one, t0) == "ok"
        assert answer(two, "k", used_on_two, t0) == "ok"
        clock.advance(2)
        if how == "restart":
            _restart(own_redis)
        else:
            one_tier.call(lambda client: client.flushall())
        with caplog.at_level(logging.WARNING, logger="keyguard.replay"):
            # Replays to the other instance: Redis forgot them, the loss is seen.
            assert _until_redis_answers(lambda: answer(two, "k", used_on_one, t0)) == "lost"
            lost_at = clock.now
            assert _until_redis_answers(lambda: answer(one, "k", used_on_two, t0)) == "lost"
            # Timestamped after the loss, but inside the 5 s a client's clock may be ahead
            # of the instance that took it: it may have been used before the loss too.
            assert answer(one, "k", mac(), lost_at + FUTURE_SKEW - 0.5) == "lost"
        assert any("lost what it held" in r.getMessage() for r in caplog.records)
        clock.advance(FUTURE_SKEW + 1)
        assert answer(one, "k", mac(), clock.now) == "ok"
        assert answer(two, "k", mac(), clock.now) == "ok"
    finally:
        one.close()
        two.close()
        one_tier.close()
        two_tier.close()


def test_the_first_use_of_a_redis_is_no_loss(own_redis: servers.RedisServer, clock: Clock) -> None:
    """A Redis that never held a marker: the first signatures pass on every
    instance (the first use cannot be told from a loss, and is not refused)."""
    url = f"{own_redis.url}?prefix=t:"
    tiers = [RedisTier(url) for _ in range(2)]
    caches = [ReplayCache(t, SKEW, clock) for t in tiers]
    try:
        assert [outcome(c, "k", mac(), clock.now - 1) for c in caches] == ["ok", "ok"]
    finally:
        for c in caches:
            c.close()
        for t in tiers:
            t.close()


def _pttl(tier: RedisTier, key_id: str, signature: bytes) -> int:
    key = tier.key("replay", key_id, base64.urlsafe_b64encode(signature).decode())
    return int(tier.call(lambda client: client.pttl(key)))


@pytest.mark.parametrize("age", [SKEW - 1, 0.0, -(FUTURE_SKEW - 1)], ids=["old", "now", "ahead"])
@pytest.mark.parametrize("offset", [-9.0, 0.0, 9.0], ids=["clock-behind", "clock-right", "ahead"])
def test_redis_keeps_a_signature_for_a_constant_time(
    tiers: tuple[RedisTier, RedisTier], age: float, offset: float
) -> None:
    """However old the timestamp and whatever this instance's clock says, Redis
    keeps the signature for max_skew + 5 s + CLOCK_MARGIN from when it was used:
    an instance whose clock is behind finds the timestamp fresh for longer than
    the one that remembered it."""
    clock = Clock()
    clock.advance(offset)
    cache = ReplayCache(tiers[0], SKEW, clock)
    signature = mac()
    assert outcome(cache, "k", signature, clock.now - offset - age) == "ok"
    expected = (SKEW + FUTURE_SKEW + CLOCK_MARGIN) * 1000
    assert expected - 1000 < _pttl(tiers[0], "k", signature) <= expected


def test_a_replay_to_an_instance_whose_clock_is_behind_is_refused(
    tiers: tuple[RedisTier, RedisTier],
) -> None:
    """f05: A's clock 9 s ahead, B's 9 s behind, a timestamp 20 s old by the real
    clock. Under a ttl counted from A's clock the entry was gone after 2 s, while
    B still found the timestamp fresh; now it outlives B's window."""
    ahead, behind = Clock(), Clock()
    ahead.advance(9)
    behind.advance(-9)
    one, two = ReplayCache(tiers[0], SKEW, ahead), ReplayCache(tiers[1], SKEW, behind)
    signature, ts = mac(), ahead.now - 9 - 20
    assert outcome(one, "k", signature, ts) == "ok"
    left = _pttl(tiers[0], "k", signature) / 1000
    # B finds ts fresh until its clock reads ts + SKEW: that many real seconds from now.
    assert left > (ts + SKEW) - behind.now
    assert outcome(two, "k", signature, ts) == "replayed_request"


def test_a_loss_marked_by_an_instance_whose_clock_is_behind_still_refuses(
    own_redis: servers.RedisServer,
) -> None:
    """The instance that meets a lost Redis first sets the new marker by its own
    clock; another instance dates the loss by the later of that and its own clock,
    so a setter 10 s behind cannot open a window for signatures used before."""
    url = f"{own_redis.url}?prefix=t:"
    right, behind = Clock(), Clock()
    behind.advance(-10)
    tiers = [RedisTier(url) for _ in range(3)]
    a, b, c = (
        ReplayCache(tiers[0], SKEW, right),
        ReplayCache(tiers[1], SKEW, right),
        ReplayCache(tiers[2], SKEW, behind),
    )
    try:
        for cache, clock in ((a, right), (b, right), (c, behind)):
            assert answer(cache, "k", mac(), clock.now) == "ok"  # each has seen the marker
        taken = mac()
        assert answer(a, "k", taken, right.now) == "ok"
        right.advance(1)
        behind.advance(1)
        tiers[0].call(lambda client: client.flushall())
        assert answer(c, "k", mac(), behind.now + 20) == "ok"  # c sets the new marker
        assert answer(b, "k", taken, right.now - 1) == "lost"  # refused, not taken again
    finally:
        for cache in (a, b, c):
            cache.close()
        for tier in tiers:
            tier.close()


def test_a_redis_that_may_evict_keys_is_warned_about(
    own_redis: servers.RedisServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    tier = RedisTier(f"{own_redis.url}?prefix=t:")
    tier.call(lambda client: client.config_set("maxmemory", "100mb"))
    tier.call(lambda client: client.config_set("maxmemory-policy", "volatile-lru"))
    cache = ReplayCache(tier, SKEW, clock)
    try:
        with caplog.at_level(logging.WARNING, logger="keyguard.replay"):
            assert answer(cache, "k", mac(), clock.now) == "ok"
            assert answer(cache, "k", mac(), clock.now) == "ok"
        warned = [r for r in caplog.records if "may evict" in r.getMessage()]
        assert len(warned) == 1 and "volatile-lru" in warned[0].getMessage()
        tier.call(lambda client: client.config_set("maxmemory-policy", "noeviction"))
        caplog.clear()
        fresh = ReplayCache(tier, SKEW, clock)
        with caplog.at_level(logging.WARNING, logger="keyguard.replay"):
            assert answer(fresh, "k", mac(), clock.now) == "ok"
        assert not [r for r in caplog.records if "may evict" in r.getMessage()]
        fresh.close()
    finally:
        cache.close()
        tier.close()

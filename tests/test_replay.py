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
from collections.abc import Iterator

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


def test_redis_down_falls_back_to_the_local_replay_cache_and_says_so(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    tier = RedisTier(f"redis://127.0.0.1:{servers.free_port()}/0")  # nothing listens there
    cache = ReplayCache(tier, SKEW, clock)
    try:
        signature = mac()
        with caplog.at_level(logging.WARNING):
            assert outcome(cache, "k", signature, clock.now) == "ok"  # fail open, loudly
            assert outcome(cache, "k", mac(), clock.now) == "ok"
        warned = [r for r in caplog.records if "replay cache unreachable" in r.getMessage()]
        assert len(warned) == 1  # once a minute, not once a request
        assert outcome(cache, "k", signature, clock.now) == "replayed_request"  # this process
    finally:
        cache.close()
        tier.close()


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

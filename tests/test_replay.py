"""The replay cache of signed requests (keyguard.replay), ported from the replay
cases of tests/test_signing.py: in process always, through a real Redis when
the guard has one, and what happens while that Redis is away. (Cluster and
Sentinel: tests/test_redis_tier.py.)"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Iterator

import pytest

from keyguard.exceptions import AuthenticationError, ServiceUnavailable
from keyguard.redis import RedisTier
from keyguard.replay import ReplayCache

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

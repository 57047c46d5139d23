"""The one Redis tier (keyguard.redis) and every use of it, on plain Redis, a
Redis Cluster of three masters and a Redis Sentinel setup, all real servers
(Cluster and Sentinel started by these tests from `redis-server` on PATH).

Two `KeyGuard`s with one store and one `cache` URL stand for two app
instances. Every test here runs with Redis healthy, so the tier must never
report an outage: a CROSSSLOT error on the Cluster (two keys of one script in
two slots) or a command Sentinel's master refuses would show as one, and
`no_outage` fails the test. Outages, restarts and failovers: tests/test_cluster.py.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyguard import ConfigurationError, KeyGuard, RequestRejected, tokens
from keyguard.redis import RedisTier, parse_url
from keyguard.replay import ReplayCache

from . import servers
from .kgutil import Clock, CountingStore, wait_for
from .test_stores import _redis_cleanup

KINDS = [
    pytest.param("redis", id="redis"),
    pytest.param("cluster", id="cluster"),
    pytest.param("sentinel", id="sentinel"),
]


@pytest.fixture(scope="session")
def cluster() -> Iterator[servers.RedisClusterServers]:
    with servers.throwaway_cluster() as deployment:
        yield deployment


@pytest.fixture(scope="session")
def sentinel() -> Iterator[servers.SentinelServers]:
    with servers.throwaway_sentinel() as deployment:
        yield deployment


@pytest.fixture(params=KINDS)
def cache_url(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> Iterator[str]:
    """One `cache` URL per kind of deployment, under a prefix of this test's own."""
    kind = request.param
    base = redis_url if kind == "redis" else request.getfixturevalue(kind).url
    yield f"{base}?prefix={redis_prefix}"
    if kind == "redis":  # the shared server: leave nothing behind (the others are ours)
        _redis_cleanup(redis_url, redis_prefix)


@pytest.fixture(autouse=True)
def no_outage(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    outages = [r.getMessage() for r in caplog.records if r.name == "keyguard.redis"]
    assert not outages, f"the tier reported an outage with Redis healthy: {outages}"


def settings(cache: str, **extra: Any) -> dict[str, Any]:
    return {
        "store": "memory://",
        "cache": cache,
        "local_cache_ttl": 60,  # long: only Redis can explain what another instance sees
        "pepper": "a-pepper-for-tests-only",
        "policy": {"allow_private_ips": True},
        "abuse": {"max_failures": None},
        **extra,
    }


@pytest.fixture
def pair(cache_url: str) -> Iterator[tuple[KeyGuard, KeyGuard, CountingStore]]:
    """Two instances sharing one (counting) store and the cache under test."""
    store = CountingStore()  # one database, two instances
    guards = [KeyGuard(settings(cache_url), store=store) for _ in range(2)]
    yield guards[0], guards[1], store
    for guard in guards:
        guard.close()


def code(call: Callable[[], object]) -> str:
    try:
        call()
    except RequestRejected as exc:
        return exc.code
    return "ok"


# -- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "where", "prefix"),
    [
        pytest.param("redis://h:1/2", "h:1/2", "keyguard:", id="redis"),
        pytest.param("rediss://:pw@h:1/0?prefix=a:", "h:1/0", "a:", id="rediss"),
        pytest.param(
            "redis+sentinel://:pw@s1:26379,s2:26380/mymaster?db=3&prefix=kg:",
            "s1:26379,s2:26380/mymaster",
            "kg:",
            id="sentinel",
        ),
        pytest.param(
            "redis+sentinel://s1/svc?sentinel_password=x",
            "s1:26379/svc",
            "keyguard:",
            id="sentinel-default-port",
        ),
        pytest.param(
            "redis+cluster://u:pw@n1:7000,n2:7001",
            "n1:7000,n2:7001",
            "keyguard:",
            id="cluster",
        ),
        pytest.param("redis+cluster://[::1]:7000", "::1:7000", "keyguard:", id="cluster-ipv6"),
    ],
)
def test_urls_as_limits_writes_them(url: str, where: str, prefix: str) -> None:
    parsed = parse_url(url)
    assert (parsed.where, parsed.prefix) == (where, prefix)
    assert "pw" not in repr(parsed) and "pw" not in parsed.where
    KeyGuard({"store": "memory://", "cache": url}).close()  # accepted, and no I/O at start-up


@pytest.mark.parametrize(
    ("key", "url", "says"),
    [
        pytest.param("cache", "memcached://h:1", "Redis URL", id="other-scheme"),
        pytest.param("cache", "redis+sentinel://:s3cret@h:1", "service", id="sentinel-no-service"),
        pytest.param("cache", "redis+sentinel://h:1/a/b", "service", id="sentinel-bad-service"),
        pytest.param("cache", "redis+sentinel://h:1/m?db=x", "db", id="sentinel-bad-db"),
        pytest.param(
            "cache", "redis+sentinel://h:1/m?nope=1", "nope", id="sentinel-unknown-option"
        ),
        pytest.param("cache", "redis+cluster://h:1/3", "database", id="cluster-db"),
        pytest.param("cache", "redis+cluster://h:x", "host:port", id="cluster-bad-port"),
        pytest.param("cache", "redis+cluster://,h:1", "host:port", id="cluster-empty-host"),
        pytest.param("cache", "redis://h:1?prefix={kg}", "'{'", id="hash-tag-prefix"),
        pytest.param("cache", "redis://h:1?socket_timeout=-1", "socket_timeout", id="timeout"),
        pytest.param(
            "cache", "redis://:s3cret@h:1?max_connections=x", "redis-py refused", id="redis-option"
        ),
        pytest.param("store", "redis+cluster://:s3cret@h:1", "one master", id="store-cluster"),
        pytest.param("store", "redis+sentinel://:s3cret@h:1", "service", id="store-sentinel"),
    ],
)
def test_bad_urls_name_the_setting_and_never_echo_it(key: str, url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeyGuard({"store": "memory://", key: url})
    message = str(info.value)
    assert message.startswith(f"{key}:") and says in message
    assert "s3cret" not in message


def test_start_up_log_masks_every_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    url = "redis+sentinel://:m4ster@s1:26379,s2:26379/mymaster?sentinel_password=s3ntinel"
    with caplog.at_level(logging.INFO, logger="keyguard"):
        KeyGuard({"store": "memory://", "cache": url}).close()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "s1:26379,s2:26379" in logged  # the cache is named...
    assert "m4ster" not in logged and "s3ntinel" not in logged  # ...its passwords are not


def test_a_redis_store_through_sentinel(
    sentinel: servers.SentinelServers, redis_prefix: str
) -> None:
    """`store: redis+sentinel://...`: the durable store on the current master."""
    url = f"{sentinel.url}?prefix={redis_prefix}store:"
    one, two = (
        KeyGuard(settings("memory://", store=url)),
        KeyGuard(settings("memory://", store=url)),
    )
    try:
        issued = one.keys.create(owner="o", name="n")
        assert two.verify(issued.token or "").id == issued.id
        assert [k.id for k in two.keys.list(owner="o")] == [issued.id]
    finally:
        one.close()
        two.close()


# -- the record cache and its invalidation channel ----------------------------


def test_record_cache_hit_miss_and_invalidation_across_instances(
    pair: tuple[KeyGuard, KeyGuard, CountingStore],
) -> None:
    one, two, store = pair
    issued = one.keys.create(owner="o", name="n")
    token = issued.token or ""
    unknown = tokens.make_token("kg", tokens.new_key_id())[0]
    store.gets = 0
    assert one.verify(token).id == issued.id  # a miss: the store, then Redis
    assert code(lambda: one.verify(unknown)) == "invalid_key"  # cached as unknown too
    assert store.gets == 2
    assert two.verify(token).id == issued.id  # a hit in Redis: no store read
    assert code(lambda: two.verify(unknown)) == "invalid_key"
    assert store.gets == 2
    one.keys.revoke(issued.id)  # published: `two` drops its copy (local_cache_ttl is 60 s)
    assert wait_for(lambda: code(lambda: two.verify(token)) == "revoked_key")


def test_shared_cache_on_its_own_url(cache_url: str) -> None:
    """`SharedCache(url, ...)`: hit, miss, and a change told over the channel to the
    listener of another cache (PUBLISH reaches it on every kind of deployment),
    subscribed before that cache's first look-up (so nothing is missed)."""
    from keyguard.shared import SharedCache

    guard = KeyGuard({"store": "memory://"})
    issued = guard.keys.create(owner="o", name="n")
    record = guard.store.get(issued.id)
    fetched: list[str] = []
    told: list[str] = []
    resets: list[None] = []

    def fetch(key_id: str) -> Any:
        fetched.append(key_id)
        return record

    one = SharedCache(cache_url, 60, lambda key_id: None, lambda: None)
    two = SharedCache(cache_url, 60, told.append, lambda: resets.append(None))
    try:
        assert one.load(issued.id, fetch)[0] == record  # a miss: fetched, then in Redis
        got, keep_until = two.load(issued.id, fetch)  # a hit: not fetched
        assert (got, fetched) == (record, [issued.id])
        assert keep_until > time.monotonic()
        assert one.publish(issued.id)  # `two` subscribed before its first look-up
        assert wait_for(lambda: issued.id in told)
        assert two.load(issued.id, fetch)[0] == record and fetched == [issued.id] * 2
        assert resets == []  # nothing was missed, so no local copy was dropped wholesale
    finally:
        one.close()
        two.close()
        guard.close()


# -- the replay cache ---------------------------------------------------------


def test_replay_refused_across_instances(cache_url: str) -> None:
    clock = Clock()
    tiers = [RedisTier(cache_url), RedisTier(cache_url)]
    one, two = (ReplayCache(t, 30, clock) for t in tiers)
    try:
        signature = secrets.token_bytes(32)
        one.remember("key1", signature, clock.now)
        with pytest.raises(RequestRejected) as info:
            two.remember("key1", signature, clock.now)
        assert info.value.code == "replayed_request"
        two.remember("key1", secrets.token_bytes(32), clock.now)
    finally:
        for tier in tiers:
            tier.close()


def test_a_replay_cache_that_lost_its_keys_is_noticed(cache_url: str) -> None:
    """The replay keys under this prefix vanish (what a restart without persistence
    or a flush does to them; on a Cluster the epoch marker is per key id, in the
    slot of that key's signatures): a signature used before is refused (503) by
    the other instance instead of passing, and one made later passes."""
    clock = Clock()
    tiers = [RedisTier(cache_url), RedisTier(cache_url)]
    one, two = (ReplayCache(t, 30, clock) for t in tiers)
    prefix = tiers[0].prefix
    try:
        used, seen = secrets.token_bytes(32), secrets.token_bytes(32)
        one.remember("key1", used, clock.now)
        two.remember("key1", seen, clock.now)  # both instances have met the marker
        clock.advance(1)

        def forget(client: Any) -> int:
            keys = list(client.scan_iter(match=f"{prefix}replay:*"))
            for key in keys:  # one at a time: a Cluster's keys are in many slots
                client.delete(key)
            return len(keys)

        assert tiers[0].call(forget) >= 3  # two signatures and the marker(s)
        with pytest.raises(RequestRejected) as info:
            two.remember("key1", used, clock.now - 1)
        assert info.value.code == "unavailable" and "lost" in info.value.detail
        clock.advance(6)
        two.remember("key1", secrets.token_bytes(32), clock.now)
        # `one` meets the new marker now and dates the loss by its own clock too
        # (the marker's time is its setter's): what is older than that + 5 s waits.
        with pytest.raises(RequestRejected):
            one.remember("key1", secrets.token_bytes(32), clock.now)
        clock.advance(6)
        one.remember("key1", secrets.token_bytes(32), clock.now)
    finally:
        for tier in tiers:
            tier.close()


# -- rate limits, quotas, failures --------------------------------------------


def test_rate_limit_shared_across_instances(cache_url: str) -> None:
    one = KeyGuard(settings(cache_url, rate_limit="4/minute;100/hour"))
    two = KeyGuard(settings(cache_url, rate_limit="4/minute;100/hour"), store=one.store)
    try:
        token = one.keys.create(owner="o", name="n").token or ""
        answers = [code(lambda g=g: g.verify(token)) for g in (one, two) * 3]
        assert answers == ["ok"] * 4 + ["rate_limited"] * 2
        with pytest.raises(RequestRejected) as info:
            one.verify(token)
        headers = dict(info.value.headers())
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["ratelimit-policy"] == "4;w=60"
    finally:
        one.close()
        two.close()


def test_quota_exact_across_instances(cache_url: str) -> None:
    one = KeyGuard(settings(cache_url))
    two = KeyGuard(settings(cache_url), store=one.store)
    try:
        token = one.keys.create(owner="o", name="trial", max_uses=12).token or ""

        def use(i: int) -> str:
            return code(lambda: (one if i % 2 else two).verify(token))

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(use, range(30)))
        assert answers.count("ok") == 12
        assert set(answers) == {"ok", "quota_exhausted"}
    finally:
        one.close()
        two.close()


def test_failures_counted_across_instances(cache_url: str) -> None:
    throttled = settings(cache_url, abuse={"max_failures": "3/minute"})
    one = KeyGuard(throttled)
    two = KeyGuard(throttled, store=one.store)
    try:
        token = one.keys.create(owner="o", name="n").token or ""
        ip = f"2001:db8:{secrets.randbelow(65536):x}::7"
        bad = tokens.make_token("kg", tokens.new_key_id())[0]
        assert [code(lambda g=g: g.verify(bad, client_ip=ip)) for g in (one, two, one)] == [
            "invalid_key"
        ] * 3
        assert code(lambda: one.verify(token, client_ip=ip)) == "too_many_failures"  # the 3rd
        assert code(lambda: two.verify(bad, client_ip=ip)) == "invalid_key"  # its 1st over
        assert code(lambda: two.verify(token, client_ip=ip)) == "too_many_failures"
    finally:
        one.close()
        two.close()


def test_breaker_opens_warns_once_and_closes_when_redis_answers(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    port = servers.free_port()
    tier = RedisTier(f"redis://127.0.0.1:{port}/0")
    from keyguard.redis import Unavailable

    def ping() -> bool:
        try:
            return bool(tier.call(lambda client: client.ping()))
        except Unavailable:
            return False

    server = servers.RedisServer(port, str(tmp_path))
    try:
        with caplog.at_level(logging.INFO, logger="keyguard.redis"):
            assert not ping() and not ping()  # the second does not even ask: the breaker is open
            server.start()
            assert wait_for(ping, timeout=10)  # one probe per breaker period finds it back
        messages = [r.getMessage() for r in caplog.records if r.name == "keyguard.redis"]
        assert len(messages) == 2
        assert "Redis unreachable" in messages[0] and "answers again" in messages[1]
        caplog.clear()  # this test's outage was the point (see `no_outage`)
    finally:
        tier.close()
        server.stop()

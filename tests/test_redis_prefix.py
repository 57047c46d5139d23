"""A `?prefix=` on the Redis cache URL namespaces every Redis user alike: the
record cache, the replay cache of signed requests, rate limits and failure
counts all stay shared across instances (a regression: the option once reached
redis-py for the last three, which then counted per process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from keyguard import KeyGuard
from keyguard.client import SignedAuth
from keyguard.crypto import generate_master_key
from keyguard.decision import Facts
from keyguard.exceptions import RequestRejected


@pytest.fixture
def pair(redis_url: str, redis_prefix: str) -> Iterator[tuple[KeyGuard, KeyGuard]]:
    settings = {
        "store": "memory://",
        "cache": f"{redis_url}?prefix={redis_prefix}",
        "signing": {"master_keys": [generate_master_key()]},
        "rate_limit": "4/minute",
        "abuse": {"max_failures": "3/minute"},
    }
    one = KeyGuard(settings)
    two = KeyGuard(settings, store=one.store)  # one durable store, as two instances share
    yield one, two
    one.close()
    two.close()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{redis_prefix}*"))
    assert keys, "nothing was written under the prefix"
    client.delete(*keys)
    client.close()


def _code(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except RequestRejected as exc:
        return exc.code
    return "ok"


def test_replay_refused_by_the_other_instance(pair: tuple[KeyGuard, KeyGuard]) -> None:
    one, two = pair
    issued = one.keys.create(owner="o", name="signer", kind="signing")
    assert issued.secret is not None
    signed = SignedAuth(issued.info.id, issued.secret).headers("GET", "/x", b"")
    headers = {k.lower(): [v] for k, v in signed.items()}

    def send(guard: KeyGuard) -> str:
        facts = Facts("GET", "/x", "203.0.113.5", dict(headers), body=b"", raw_path="/x")
        error = guard.check(facts).error
        return "ok" if error is None else error.code

    assert send(one) == "ok"
    assert send(two) == "replayed_request"


def test_rate_limit_and_failures_shared(pair: tuple[KeyGuard, KeyGuard]) -> None:
    one, two = pair
    token = one.keys.create(owner="o", name="bearer").token
    answers = [_code(lambda g=g: g.verify(token)) for g in (one, two) * 3]
    assert answers == ["ok"] * 4 + ["rate_limited"] * 2
    bad = token[:-1] + ("A" if token[-1] != "A" else "B")  # type: ignore[index]
    guesses = [_code(lambda g=g: g.verify(bad, client_ip="203.0.113.9")) for g in (one, two) * 3]
    assert "too_many_failures" in guesses

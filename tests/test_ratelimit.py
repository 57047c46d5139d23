"""Step 8 and abuse resistance over HTTP and through `verify`: per-key rate
limits, failed-attempt throttling per client IP, usage quotas; memory and a
real Redis (shared across two guards = two instances)."""

from __future__ import annotations

import concurrent.futures
import secrets
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import AuthenticationError, KeyGuard, RequestRejected
from keyguard.asgi import KeyGuardMiddleware as ASGIMiddleware
from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

from . import servers

BASE = {"store": "memory://", "policy": {"allow_private_ips": True}}


def make(**settings: object) -> KeyGuard:
    return KeyGuard({**BASE, **settings})


def random_ip() -> str:
    """A documentation-range IPv6 no other test (or run) uses: isolates shared Redis counters."""
    return f"2001:db8:{secrets.randbelow(65536):x}:{secrets.randbelow(65536):x}::1"


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def asgi_client(guard: KeyGuard, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/{p:path}", _ok, methods=["GET", "POST"])])
    app.add_middleware(ASGIMiddleware, guard=guard)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 1234)), base_url="http://t"
    )


def wsgi_client(guard: KeyGuard, peer: str = "127.0.0.1") -> httpx.Client:
    def app(environ, start_response):
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    transport = httpx.WSGITransport(app=WSGIMiddleware(app, guard=guard), remote_addr=peer)
    return httpx.Client(transport=transport, base_url="http://t")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def code(exc_info: pytest.ExceptionInfo[RequestRejected]) -> str:
    return exc_info.value.code


# -- rate limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("default", "per_key", "allowed"),
    [
        pytest.param("3/minute", None, 3, id="settings-default"),
        pytest.param(None, "2/minute", 2, id="per-key"),
        pytest.param("10/minute", "1/minute", 1, id="per-key-overrides-default"),
        pytest.param("100/minute;4/hour", None, 4, id="several-windows-second-binds"),
        pytest.param("2/second;100/hour", None, 2, id="several-windows-first-binds"),
    ],
)
def test_rate_limit_counts_then_refuses_with_headers(default, per_key, allowed) -> None:
    guard = make(rate_limit=default)
    token = guard.keys.create(owner="o", name="n", rate_limit=per_key).token
    with wsgi_client(guard) as client:
        statuses = [client.get("/", headers=bearer(token)).status_code for _ in range(allowed)]
        refused = client.get("/", headers=bearer(token))
    assert statuses == [200] * allowed
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-limit"]) >= 1
    assert int(refused.headers["ratelimit-reset"]) >= 1


async def test_rate_limit_over_asgi_and_per_key_budgets_are_separate() -> None:
    guard = make(rate_limit="2/minute")
    a = guard.keys.create(owner="o", name="a").token
    b = guard.keys.create(owner="o", name="b").token
    async with asgi_client(guard) as client:
        got = [(await client.get("/", headers=bearer(t))).status_code for t in (a, a, a, b)]
    assert got == [200, 200, 429, 200]


def test_rejected_requests_spend_no_budget() -> None:
    """Step 8 is after scopes: a wrong scope or a bad secret costs the key nothing."""
    guard = make(rate_limit="2/minute", rules=[{"path": "/admin", "scopes": ["admin"]}])
    token = guard.keys.create(owner="o", name="n", scopes=["read"]).token
    with wsgi_client(guard) as client:
        assert [client.get("/admin", headers=bearer(token)).status_code for _ in range(5)] == [
            403
        ] * 5
        assert [client.get("/", headers=bearer(token)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]


def test_no_limit_configured_means_no_limit() -> None:
    guard = make()
    token = guard.keys.create(owner="o", name="n").token
    for _ in range(200):
        guard.verify(token)


def test_a_corrupt_stored_limit_fails_closed() -> None:
    guard = make()
    issued = guard.keys.create(owner="o", name="n")
    guard.store.modify(issued.id, lambda r: r.replace(rate_limit="lots"))
    guard.forget(issued.id)
    with pytest.raises(RequestRejected) as exc:
        guard.verify(issued.token)
    assert code(exc) == "rate_limited"


# -- failed-attempt throttling ------------------------------------------------------


def test_failures_throttle_the_client_before_any_lookup() -> None:
    guard = make(**{"abuse.max_failures": "3/minute"})
    token = guard.keys.create(owner="o", name="n").token
    key_id = token.split("_")[1]
    forged = guard.keys.create(owner="o", name="m").token[:-8] + "AAAAAAAA"  # bad checksum
    lookups: list[str] = []
    get = guard.store.get
    guard.store.get = lambda kid: (lookups.append(kid), get(kid))[1]  # type: ignore[method-assign]
    guard.forget(key_id)
    with (
        wsgi_client(guard, peer="198.51.100.7") as attacker,
        wsgi_client(guard, peer="198.51.100.8") as other,
    ):
        assert [attacker.get("/", headers=bearer(forged)).status_code for _ in range(3)] == [
            401
        ] * 3
        lookups.clear()
        throttled = attacker.get("/", headers=bearer(token))  # even the right key
        assert throttled.status_code == 429
        assert throttled.json()["code"] == "too_many_failures"
        assert int(throttled.headers["retry-after"]) >= 1
        assert lookups == []  # refused before the store was asked
        assert other.get("/", headers=bearer(token)).status_code == 200  # another client is fine


@pytest.mark.parametrize(
    ("headers", "counted"),
    [
        pytest.param({}, False, id="missing-credentials-not-counted"),
        pytest.param({"Authorization": "Bearer nope"}, True, id="malformed-token"),
        pytest.param({"X-API-Key": "kg_x"}, True, id="malformed-header-token"),
        pytest.param({"Authorization": "Basic dXNlcjpwdw=="}, False, id="other-scheme-is-missing"),
    ],
)
async def test_which_failures_count(headers: dict[str, str], counted: bool) -> None:
    guard = make(**{"abuse.max_failures": "2/minute"})
    async with asgi_client(guard, peer="198.51.100.9") as client:
        statuses = [(await client.get("/", headers=headers)).status_code for _ in range(3)]
    assert statuses == ([401, 401, 429] if counted else [401, 401, 401])  # 2 failures, then 429


def test_wrong_passphrase_counts_and_throttles() -> None:
    guard = make(**{"abuse.max_failures": "2/minute"})
    token = guard.keys.create(owner="o", name="n", passphrase="right passphrase").token
    with wsgi_client(guard) as client:
        wrong = {**bearer(token), "KG-Passphrase": "wrong passphrase"}
        right = {**bearer(token), "KG-Passphrase": "right passphrase"}
        assert [client.get("/", headers=wrong).status_code for _ in range(2)] == [401, 401]
        assert client.get("/", headers=right).json()["code"] == "too_many_failures"


def test_throttle_follows_the_client_behind_a_trusted_proxy() -> None:
    guard = make(**{"abuse.max_failures": "2/minute", "trusted_proxies": ["10.0.0.0/8"]})
    token = guard.keys.create(owner="o", name="n").token
    with wsgi_client(guard, peer="10.0.0.1") as proxy:
        bad = {"Authorization": "Bearer bad", "X-Forwarded-For": "203.0.113.5"}
        assert [proxy.get("/", headers=bad).status_code for _ in range(3)] == [401, 401, 429]
        good_other = {**bearer(token), "X-Forwarded-For": "203.0.113.6"}
        assert proxy.get("/", headers=good_other).status_code == 200


def test_ipv6_clients_are_throttled_per_64() -> None:
    guard = make(**{"abuse.max_failures": "2/minute"})
    for suffix in ("::1", "::2"):
        with pytest.raises(AuthenticationError):
            guard.verify("nope", client_ip="2001:db8:1:2" + suffix)
    with pytest.raises(RequestRejected) as exc:
        guard.verify("nope", client_ip="2001:db8:1:2::3")
    assert code(exc) == "too_many_failures"
    with pytest.raises(AuthenticationError):
        guard.verify("nope", client_ip="2001:db8:1:3::1")


def test_verify_throttles_only_with_a_client_ip() -> None:
    guard = make(**{"abuse.max_failures": "1/minute"})
    token = guard.keys.create(owner="o", name="n").token
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            guard.verify("nope")
    assert guard.verify(token).name == "n"
    with pytest.raises(AuthenticationError):
        guard.verify("nope", client_ip="192.0.2.1")
    with pytest.raises(RequestRejected) as exc:
        guard.verify(token, client_ip="192.0.2.1")
    assert code(exc) == "too_many_failures"


def test_max_failures_none_disables_throttling() -> None:
    guard = make(**{"abuse.max_failures": None})
    for _ in range(50):
        with pytest.raises(AuthenticationError):
            guard.verify("nope", client_ip="192.0.2.1")


def test_throttle_lifts_when_the_window_passes() -> None:
    guard = make(**{"abuse.max_failures": "1/second"})
    token = guard.keys.create(owner="o", name="n").token
    with pytest.raises(AuthenticationError):
        guard.verify("nope", client_ip="192.0.2.2")
    with pytest.raises(RequestRejected):
        guard.verify(token, client_ip="192.0.2.2")
    deadline = time.monotonic() + 5
    while True:  # bounded poll, no timing assertion
        try:
            guard.verify(token, client_ip="192.0.2.2")
            break
        except RequestRejected as exc:
            assert exc.code == "too_many_failures"
            assert time.monotonic() < deadline
            time.sleep(0.1)


# -- quota --------------------------------------------------------------------------


def test_quota_is_spent_then_429_without_retry_after() -> None:
    guard = make()
    token = guard.keys.create(owner="o", name="trial", max_uses=3).token
    with wsgi_client(guard) as client:
        statuses = [client.get("/", headers=bearer(token)).status_code for _ in range(3)]
        spent = client.get("/", headers=bearer(token))
    assert statuses == [200, 200, 200]
    assert spent.status_code == 429
    assert spent.json()["code"] == "quota_exhausted"
    assert "retry-after" not in spent.headers


def test_quota_survives_a_restart_through_the_store(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    first = make(store=store)
    token = first.keys.create(owner="o", name="trial", max_uses=3).token
    first.verify(token)
    first.verify(token)
    first.close()  # writes the count with the last-used batch
    second = make(store=store)
    second.verify(token)
    with pytest.raises(RequestRejected) as exc:
        second.verify(token)
    assert code(exc) == "quota_exhausted"
    second.close()


def test_quota_holds_under_concurrency_in_one_process() -> None:
    guard = make()
    token = guard.keys.create(owner="o", name="trial", max_uses=25).token

    def one(_: int) -> bool:
        try:
            guard.verify(token)
            return True
        except RequestRejected:
            return False

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(one, range(80))) == 25


async def test_quota_and_rate_limit_over_asgi_rate_limit_first() -> None:
    guard = make(rate_limit="2/minute")
    token = guard.keys.create(owner="o", name="trial", max_uses=2).token
    async with asgi_client(guard) as client:
        codes = [(await client.get("/", headers=bearer(token))) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[2].json()["code"] == "rate_limited"


# -- Redis: shared across instances, and what happens when it is down --------------


@pytest.fixture
def two_instances(redis_url: str) -> Iterator[tuple[KeyGuard, KeyGuard]]:
    """Two guards on one durable store and one Redis cache: two app instances."""
    store = f"sqlite:///{servers.tempfile.mkdtemp()}/keys-{uuid.uuid4().hex}.db"
    a, b = make(store=store, cache=redis_url), make(store=store, cache=redis_url)
    yield a, b
    a.close()
    b.close()


def test_redis_rate_limit_is_shared(two_instances: tuple[KeyGuard, KeyGuard]) -> None:
    a, b = two_instances
    token = a.keys.create(owner="o", name="n", rate_limit="3/minute").token
    a.verify(token)
    b.verify(token)
    a.verify(token)
    with pytest.raises(RequestRejected) as exc:
        b.verify(token)
    assert code(exc) == "rate_limited"


async def test_redis_rate_limit_async_path(two_instances: tuple[KeyGuard, KeyGuard]) -> None:
    a, b = two_instances
    token = a.keys.create(owner="o", name="n", rate_limit="2/minute").token
    async with asgi_client(a) as ca, asgi_client(b) as cb:
        got = [(await c.get("/", headers=bearer(token))).status_code for c in (ca, cb, ca)]
    assert got == [200, 200, 429]


def test_redis_failures_are_counted_across_instances(
    two_instances: tuple[KeyGuard, KeyGuard],
) -> None:
    a, b = two_instances
    a_guard, b_guard = a, b
    ip = random_ip()
    with pytest.raises(AuthenticationError):
        a_guard.verify("nope", client_ip=ip)
    with pytest.raises(AuthenticationError):
        b_guard.verify("nope", client_ip=ip)
    # 30/minute by default: the 30th failure, wherever it lands, throttles that instance.
    for i in range(27):
        with pytest.raises(AuthenticationError):
            (a_guard if i % 2 else b_guard).verify("nope", client_ip=ip)
    with pytest.raises(AuthenticationError):
        a_guard.verify("nope", client_ip=ip)  # the 30th
    with pytest.raises(RequestRejected) as exc:
        a_guard.verify("nope", client_ip=ip)
    assert code(exc) == "too_many_failures"


def test_redis_quota_is_exact_across_instances(two_instances: tuple[KeyGuard, KeyGuard]) -> None:
    a, b = two_instances
    token = a.keys.create(owner="o", name="trial", max_uses=30).token

    def one(i: int) -> bool:
        try:
            (a if i % 2 else b).verify(token)
            return True
        except RequestRejected as exc:
            assert exc.code == "quota_exhausted"
            return False

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(one, range(60))) == 30


@pytest.mark.parametrize("door", ["wsgi", "asgi"])
async def test_redis_unreachable_falls_back_to_memory_never_5xx(door: str, caplog) -> None:
    dead = f"redis://127.0.0.1:{servers.free_port()}/0"
    guard = make(cache=dead, rate_limit="2/minute", **{"abuse.max_failures": "2/minute"})
    token = guard.keys.create(owner="o", name="n", max_uses=10).token
    if door == "wsgi":
        with wsgi_client(guard) as client:
            got = [client.get("/", headers=bearer(token)).status_code for _ in range(3)]
            bad = [client.get("/", headers=bearer("nope")).status_code for _ in range(3)]
    else:
        async with asgi_client(guard) as client:
            got = [(await client.get("/", headers=bearer(token))).status_code for _ in range(3)]
            bad = [(await client.get("/", headers=bearer("nope"))).status_code for _ in range(3)]
    assert got == [200, 200, 429]
    assert bad == [401, 401, 429]
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)


def test_memory_counter_windows_and_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyguard import ratelimit

    counters = ratelimit._Counters()
    one = (("k", 2, 2, 60),)  # key, threshold, amount, seconds
    assert counters.hit(one) is None and counters.hit(one) is None
    full = counters.hit(one)
    assert full is not None and full[0] == one[0] and 0 < full[1] <= 60
    short = (("s", 5, 5, 0),)  # a window that has always just ended
    counters.hit(short)
    assert counters.hit(short) is None  # a new window starts with each hit
    monkeypatch.setattr(ratelimit, "MAX_WINDOWS", 3)
    for n in range(5):
        counters.hit(((f"other{n}", 9, 9, 60),))
    assert len(counters._windows) == 3  # bounded: the oldest were dropped
    monkeypatch.setattr(counters, "_next_sweep", 0.0)
    counters.hit(one)
    assert "s" not in counters._windows  # ended windows are swept


def test_redis_quota_survives_redis_losing_its_counter(
    two_instances: tuple[KeyGuard, KeyGuard], redis_url: str
) -> None:
    """Redis restarted empty (or evicted the counter): the next use goes on from
    the count this process knows, never from zero."""
    import redis

    a, b = two_instances
    issued = a.keys.create(owner="o", name="trial", max_uses=4)
    token = issued.token or ""
    a.verify(token)
    b.verify(token)
    a.verify(token)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.delete(f"keyguard:uses:{{{issued.id}}}") == 1
    finally:
        client.close()
    a.verify(token)  # the 4th: Redis re-seeded from `a`'s count (3), not from zero
    with pytest.raises(RequestRejected) as exc:
        a.verify(token)
    assert code(exc) == "quota_exhausted"


async def test_failures_from_many_clients_never_reset_a_keys_rate_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-process counters are bounded; failures (any number of made-up clients)
    are counted apart from keys' rate limits, so filling them never drops a key's
    window and hands it a fresh budget."""
    from keyguard import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_WINDOWS", 50)
    guard = make(cache=None)
    token = guard.keys.create(owner="o", name="n", rate_limit="5/hour").token or ""
    async with asgi_client(guard) as client:
        got = [(await client.get("/", headers=bearer(token))).status_code for _ in range(5)]
        assert got == [200] * 5
    for n in range(200):  # more failing clients than the counters hold
        async with asgi_client(guard, peer=f"2001:db8:{n:x}::1") as c:
            assert (await c.get("/", headers=bearer("kg_nope"))).status_code == 401
    async with asgi_client(guard) as client:
        assert (await client.get("/", headers=bearer(token))).status_code == 429
    guard.close()

"""The warm path: the usual request, whose key is cached and whose token already
proved it, is the step answering at once (no store or Redis look-up), with
exactly the answers of a cold check.

Every row of the request table is played three times in a row on both doors (the
later times with the key warm and its token remembered); then the cases where
the warm path must step aside: a change to the key, a clock that passes its
expiry, another client address, throttling, rate limits."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware
from keyguard.decision import Facts, Verdict, step
from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

from .doors import OK, PARAMS, World, check_response, make_world, render
from .kgutil import Clock
from .test_asgi import build, request
from .test_wsgi import flask_app

ROW = ("case", "method", "path", "headers", "peer", "status", "expected", "wsgi")


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.mark.parametrize(ROW, PARAMS)
async def test_table_rows_answer_the_same_when_warm_asgi(
    world: World, case: str, method: str, path: str, headers: Any, peer: Any, status: int,
    expected: Any, wsgi: Any,
) -> None:  # fmt: skip
    app = build("fastapi", world)
    for _ in range(3):
        before = len(world.calls)
        resp = await request(app, method, path, render(headers, world.tokens), peer)
        check_response(resp.status_code, resp.headers, resp.content, status, expected, world.tokens)
        assert len(world.calls) - before == (1 if status == OK else 0)


@pytest.mark.parametrize(ROW, PARAMS)
def test_table_rows_answer_the_same_when_warm_wsgi(
    world: World, case: str, method: str, path: str, headers: Any, peer: Any, status: int,
    expected: Any, wsgi: Any,
) -> None:  # fmt: skip
    status, expected = (status, expected) if wsgi is None else wsgi
    client = flask_app(world).test_client()
    for _ in range(3):
        before = len(world.calls)
        resp = client.open(
            path,
            method=method,
            headers=render(headers, world.tokens),
            environ_base={"REMOTE_ADDR": peer or "127.0.0.1"},
        )
        body = resp.get_data()
        check_response(resp.status_code, resp.headers, body, status, expected, world.tokens)
        assert len(world.calls) - before == (1 if status == OK else 0)


class Spy:
    """Counts the requests whose key had to be fetched (from Redis or the store):
    the cold ones. The drivers' observers see every verdict with the `Known` the
    I/O filled (None when the step answered at once)."""

    def __init__(self, guard: KeyGuard) -> None:
        self.calls = 0
        self.paths: list[str | None] = []

        def observe(facts: Any, verdict: Any, known: Any) -> None:
            if known is not None and known.fetched:
                self.calls += 1
                self.paths.append(facts.path)

        guard.drivers.observers.append(observe)


def guarded(**settings: Any) -> tuple[KeyGuard, Clock, Any]:
    clock = Clock()
    base = {"store": "memory://", "abuse": {"max_failures": None}}
    guard = KeyGuard({**base, **settings}, clock=clock)

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.scope["keyguard.key"].name)

    app = Starlette(routes=[Route("/v1/x", hello)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    return guard, clock, app


async def get(app: Any, token: str, peer: str = "203.0.113.7", **headers: str) -> httpx.Response:
    sent = [("Authorization", f"Bearer {token}"), *headers.items()]
    return await request(app, "GET", "/v1/x", sent, peer)


async def test_second_request_takes_the_warm_path_until_the_key_changes() -> None:
    guard, _, app = guarded()
    spy = Spy(guard)
    issued = guard.keys.create(owner="o", name="k")
    assert issued.token is not None
    assert (await get(app, issued.token)).status_code == 200
    assert spy.calls == 1  # the first use: the whole check proves the secret
    for _ in range(3):
        assert (await get(app, issued.token)).text == "k"
    assert spy.calls == 1  # then the warm path alone
    guard.keys.revoke(issued.id)
    resp = await get(app, issued.token)
    assert resp.status_code == 401 and resp.json()["code"] == "revoked_key"
    assert spy.calls == 2


async def test_warm_key_with_a_wrong_secret_or_other_token_is_refused() -> None:
    from .kgutil import bad_checksum, other_secret

    guard, _, app = guarded()
    issued = guard.keys.create(owner="o", name="k")
    assert issued.token is not None
    assert (await get(app, issued.token)).status_code == 200
    for token in (other_secret(issued.token), bad_checksum(issued.token), issued.token[:-1]):
        resp = await get(app, token)
        assert resp.status_code == 401 and resp.json()["code"] == "invalid_key"
    assert (await get(app, issued.token)).status_code == 200


async def test_warm_key_expires_on_time() -> None:
    guard, clock, app = guarded()
    issued = guard.keys.create(owner="o", name="k", expires_in=10)
    assert issued.token is not None
    assert (await get(app, issued.token)).status_code == 200
    assert (await get(app, issued.token)).status_code == 200
    clock.advance(11)
    resp = await get(app, issued.token)
    assert resp.status_code == 401 and resp.json()["code"] == "expired_key"


async def test_warm_key_from_another_address_is_refused() -> None:
    guard, _, app = guarded()
    issued = guard.keys.create(owner="o", name="k", allowed_ips=["203.0.113.0/24"])
    assert issued.token is not None
    assert (await get(app, issued.token)).status_code == 200
    assert (await get(app, issued.token)).status_code == 200
    resp = await get(app, issued.token, "198.51.100.9")
    assert resp.status_code == 403 and resp.json()["code"] == "ip_not_allowed"
    assert (await get(app, issued.token)).status_code == 200


async def test_throttled_client_is_refused_even_with_a_warm_key() -> None:
    from .kgutil import other_secret

    guard, _, app = guarded(abuse={"max_failures": "2/minute"})
    spy = Spy(guard)
    issued = guard.keys.create(owner="o", name="k")
    assert issued.token is not None
    for peer in ("203.0.113.7", "198.51.100.9"):
        assert (await get(app, issued.token, peer)).status_code == 200
    assert (await get(app, issued.token)).status_code == 200  # warm
    for _ in range(2):
        assert (await get(app, other_secret(issued.token))).status_code == 401
    calls = spy.calls
    resp = await get(app, issued.token)
    assert resp.status_code == 429 and resp.json()["code"] == "too_many_failures"
    assert (await get(app, issued.token, "198.51.100.9")).status_code == 200  # per client
    assert spy.calls == calls  # the key stays cached: neither answer needed a look-up


async def test_warm_key_behind_a_forwarding_header_is_checked_whole() -> None:
    guard, _, app = guarded(trusted_proxies=["10.0.0.0/8"])
    issued = guard.keys.create(owner="o", name="k", allowed_ips=["203.0.113.0/24"])
    assert issued.token is not None
    assert (await get(app, issued.token)).status_code == 200
    resp = await get(app, issued.token, "10.0.0.1", **{"X-Forwarded-For": "198.51.100.9"})
    assert resp.status_code == 403 and resp.json()["code"] == "ip_not_allowed"
    resp = await get(app, issued.token, "10.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert resp.status_code == 200


async def test_warm_key_with_a_rate_limit_or_quota_still_spends_it() -> None:
    guard, _, app = guarded()
    spy = Spy(guard)
    limited = guard.keys.create(owner="o", name="k", rate_limit="3/minute")
    quota = guard.keys.create(owner="o", name="q", max_uses=3)
    assert limited.token is not None and quota.token is not None
    for token, code in ((limited.token, "rate_limited"), (quota.token, "quota_exhausted")):
        # (a rate limit's 429 says when to retry: tests/test_ratelimit.py)
        responses = [await get(app, token) for _ in range(5)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
        assert responses[-1].json()["code"] == code
    assert int(responses[-1].headers.get("retry-after", 0)) == 0  # a quota does not come back
    assert spy.calls == 2  # each key's first use; the warm path counted the rest


async def test_warm_key_with_a_passphrase_needs_it_every_time() -> None:
    guard, _, app = guarded()
    issued = guard.keys.create(owner="o", name="k", passphrase="a long passphrase")
    assert issued.token is not None
    ok = await get(app, issued.token, **{"KG-Passphrase": "a long passphrase"})
    assert ok.status_code == 200
    resp = await get(app, issued.token)
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_passphrase"


def test_wsgi_door_takes_the_warm_path_too() -> None:
    guard = KeyGuard({"store": "memory://"})
    issued = guard.keys.create(owner="o", name="k")
    assert issued.token is not None
    spy = Spy(guard)

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["keyguard.key"].name.encode()]

    app = WSGIMiddleware(inner, guard=guard)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        for _ in range(3):
            assert client.get("/", headers={"X-API-Key": issued.token}).text == "k"
    assert spy.paths == ["/"]


async def test_what_passed_on_one_route_is_not_assumed_on_another() -> None:
    guard, _, app = guarded(rules=[{"path": "/v1/admin*", "scopes": ["admin"]}])
    issued = guard.keys.create(owner="o", name="k", scopes=["read"])
    assert issued.token is not None
    headers = [("Authorization", f"Bearer {issued.token}")]
    for _ in range(3):  # first use, then warm, then remembered as passed on this route
        assert (await request(app, "GET", "/v1/x", headers, "203.0.113.7")).status_code == 200
    refused = await request(app, "GET", "/v1/admin", headers, "203.0.113.7")
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
    for method in ("POST", "GET"):  # the same path, another method: checked again
        resp = await request(app, method, "/v1/x", headers, "203.0.113.8")
        assert resp.status_code == (405 if method == "POST" else 200)


_PROVEN = KeyGuard({"store": "memory://", "abuse": {"max_failures": None}, "local_cache_ttl": 3600})
_PROVEN_TOKEN = _PROVEN.keys.create(owner="o", name="k").token or ""
_PROVEN.verify(_PROVEN_TOKEN)  # cached and proven: the warm path now knows this token


@given(
    value=st.one_of(
        st.text(max_size=120),
        st.builds(lambda t: "Bearer " + t, st.text(max_size=80)),
        st.sampled_from([_PROVEN_TOKEN[:-1] + c for c in "0aZ_é "]),
        st.builds(lambda i: _PROVEN_TOKEN[:i] + "x" + _PROVEN_TOKEN[i + 1 :], st.integers(0, 60)),
    ),
    name=st.sampled_from(["authorization", "x-api-key"]),
)
@settings(max_examples=400, deadline=None)
def test_warm_passes_only_the_proven_token(value: str, name: str) -> None:
    _PROVEN.verify(_PROVEN_TOKEN)  # (still) cached and proven

    def at_once(headers: dict[str, list[str]], peer: str | None = "203.0.113.7") -> bool:
        """Does the step pass this request without any I/O (and so without a check)?"""
        out = step(_PROVEN.parts, Facts("GET", "/", peer, headers))
        return isinstance(out, Verdict) and out.entry is not None

    stripped = value.strip()
    if name == "authorization":
        scheme, _, stripped = stripped.partition(" ")
        stripped = stripped.strip() if scheme.lower() == "bearer" else ""
    assert not at_once({name: [value]}) or stripped == _PROVEN_TOKEN
    for token in (_PROVEN_TOKEN, f"  {_PROVEN_TOKEN} "):
        assert at_once({"x-api-key": [token]}, None)
        assert at_once({"authorization": ["bearer " + token]}, None)


# -- signed requests (`KeyGuard.warm_signed`) ----------------------------------


def _count_whole_checks(guard: KeyGuard) -> list[str | None]:
    """The paths of the requests either door had to fetch a key for."""
    return Spy(guard).paths


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_signed_requests_take_the_warm_path_with_the_same_answers(kind: str) -> None:
    from .signing_util import Clock as SigningClock
    from .signing_util import Door, make_guard, signed

    clock = SigningClock()
    guard = make_guard(clock, abuse={"max_failures": None})
    calls = _count_whole_checks(guard)
    key = guard.keys.create(owner="o", name="s", kind="signing", scopes=["read"])
    door = Door(kind, guard)

    async def send(body: bytes = b"{}", path: str = "/v1/x", **change: Any) -> httpx.Response:
        clock.advance(0.001)  # a new timestamp, so a new signature
        headers = signed(key.info.id, key.secret, "POST", path, "", body, now=clock.now)
        return await door.request("POST", path, headers={**headers, **change}, content=body)

    assert (await send()).status_code == 200
    assert calls == ["/v1/x"]  # the first use loads the key
    for i in range(3):
        ok = await send(f'{{"n":{i}}}'.encode())
        assert ok.status_code == 200 and ok.json()["body"] == f'{{"n":{i}}}'  # body replayed
    assert calls == ["/v1/x"]  # then the cached key alone

    # A replay, a tampered signature, a stale timestamp: refused, without a look-up.
    clock.advance(0.001)
    headers = signed(key.info.id, key.secret, "POST", "/v1/x", "", b"{}", now=clock.now)
    assert (await door.request("POST", "/v1/x", headers=headers, content=b"{}")).status_code == 200
    replay = await door.request("POST", "/v1/x", headers=headers, content=b"{}")
    assert replay.status_code == 401 and replay.json()["code"] == "replayed_request"
    tampered = await door.request("POST", "/v1/x", headers=headers, content=b"{ }")
    assert tampered.status_code == 401 and tampered.json()["code"] == "invalid_signature"
    clock.advance(60)
    stale = await door.request("POST", "/v1/x", headers=headers, content=b"{}")
    assert stale.status_code == 401 and stale.json()["code"] == "stale_request"
    assert calls == ["/v1/x"]

    # A bearer header beside the signature, a passphrase the key lacks.
    mixed = await send(**{"Authorization": "Bearer x"})
    assert mixed.status_code == 400 and mixed.json()["code"] == "invalid_request"
    assert (await send(**{"KG-Passphrase": "unneeded"})).status_code == 200
    assert len(calls) == 1

    bearer = guard.keys.create(owner="o", name="b")
    assert bearer.token is not None
    guard.verify(bearer.token)  # cached (one look-up): a signed request naming it meets it
    clock.advance(0.001)
    as_signer = signed(bearer.info.id, "a" * 43, "POST", "/v1/x", "", b"{}", now=clock.now)
    wrong_kind = await door.request("POST", "/v1/x", headers=as_signer, content=b"{}")
    assert wrong_kind.status_code == 401 and wrong_kind.json()["code"] == "invalid_signature"
    assert len(calls) == 2

    guard.keys.revoke(key.info.id)  # a changed key: a new cache entry, checked whole
    revoked = await send()
    assert revoked.status_code == 401 and revoked.json()["code"] == "revoked_key"
    await door.aclose()
    guard.close()


async def test_warm_signed_request_is_checked_per_route_and_address() -> None:
    from .signing_util import Clock as SigningClock
    from .signing_util import asgi_app, make_guard, signed

    clock = SigningClock()
    guard = make_guard(
        clock,
        abuse={"max_failures": None},
        rules=[{"path": "/v1/admin*", "scopes": ["admin"]}],
        trusted_proxies=["10.0.0.0/8"],
    )
    key = guard.keys.create(
        owner="o", name="s", kind="signing", scopes=["read"], allowed_ips=["203.0.113.0/24"]
    )
    app = asgi_app(guard)

    async def send(path: str, peer: str, **extra: str) -> httpx.Response:
        clock.advance(0.001)
        headers = signed(key.info.id, key.secret, "GET", path, now=clock.now)
        return await request(app, "GET", path, [*headers.items(), *extra.items()], peer)

    for _ in range(3):
        assert (await send("/v1/x", "203.0.113.7")).status_code == 200
    admin = await send("/v1/admin", "203.0.113.7")
    assert admin.status_code == 403 and admin.json()["code"] == "insufficient_scope"
    elsewhere = await send("/v1/x", "198.51.100.9")
    assert elsewhere.status_code == 403 and elsewhere.json()["code"] == "ip_not_allowed"
    forwarded = await send("/v1/x", "10.0.0.1", **{"X-Forwarded-For": "198.51.100.9"})
    assert forwarded.status_code == 403 and forwarded.json()["code"] == "ip_not_allowed"
    forwarded = await send("/v1/x", "10.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 200
    guard.close()


@pytest.mark.servers
async def test_signed_requests_with_the_replay_cache_in_redis_are_checked_whole(
    redis_url: str, redis_prefix: str
) -> None:
    from .signing_util import Door, make_guard, signed
    from .test_signing import _cleanup

    guard = make_guard(cache=f"{redis_url}?prefix={redis_prefix}")
    calls = _count_whole_checks(guard)
    key = guard.keys.create(owner="o", name="s", kind="signing")
    door, start = Door("asgi", guard), guard.clock()
    for i in range(3):  # three timestamps, so three signatures
        headers = signed(key.info.id, key.secret, "GET", "/v1/x", now=start - i / 1000)
        assert (await door.request("GET", "/v1/x", headers=headers)).status_code == 200
    # The key is looked up once (twice when the invalidation listener's first subscription
    # came late, as under load: it then drops every copy); each signature goes to Redis.
    assert len(calls) in (1, 2)
    await door.aclose()
    guard.close()
    _cleanup(redis_url, redis_prefix)


async def test_throttling_an_ipv6_client_covers_its_64_on_the_warm_path_too() -> None:
    from .kgutil import other_secret

    guard, _, app = guarded(abuse={"max_failures": "2/minute"})
    spy = Spy(guard)
    issued = guard.keys.create(owner="o", name="k")
    assert issued.token is not None
    for peer in ("2001:db8::2", "2001:db8:1::1"):  # proven and remembered for both
        for _ in range(2):
            assert (await get(app, issued.token, peer)).status_code == 200
    for _ in range(2):
        assert (await get(app, other_secret(issued.token), "2001:db8::1")).status_code == 401
    calls = spy.calls
    resp = await get(app, issued.token, "2001:db8::2")  # the same /64 as the failures
    assert resp.status_code == 429 and resp.json()["code"] == "too_many_failures"
    assert (await get(app, issued.token, "2001:db8:1::1")).status_code == 200  # another /64
    assert spy.calls == calls


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_signed_warm_path_keeps_rotate_grace_passphrases_and_failure_counts(
    kind: str,
) -> None:
    from .signing_util import Clock as SigningClock
    from .signing_util import Door, make_guard, signed

    clock = SigningClock()
    guard = make_guard(clock, abuse={"max_failures": "3/minute"})
    calls = _count_whole_checks(guard)
    key = guard.keys.create(owner="o", name="s", kind="signing")
    locked = guard.keys.create(owner="o", name="p", kind="signing", passphrase="a long passphrase")
    door = Door(kind, guard)

    async def send(key_id: str, secret: str, **extra: str) -> httpx.Response:
        clock.advance(0.001)
        headers = {**signed(key_id, secret, "GET", "/v1/x", now=clock.now), **extra}
        return await door.request("GET", "/v1/x", headers=headers)

    old = key.secret
    rotated = guard.keys.rotate(key.info.id, grace=300)
    assert (await send(key.info.id, rotated.secret)).status_code == 200  # loads the key
    assert (await send(key.info.id, old)).status_code == 200  # in grace, the key cached
    assert len(calls) == 1
    clock.advance(301)
    late = await send(key.info.id, old)  # failure 1
    assert late.status_code == 401 and late.json()["code"] == "invalid_signature"
    assert (await send(key.info.id, rotated.secret)).status_code == 200
    assert len(calls) == 1

    ok = await send(locked.info.id, locked.secret, **{"KG-Passphrase": "a long passphrase"})
    assert ok.status_code == 200
    bare = await send(locked.info.id, locked.secret)  # failure 2
    assert bare.status_code == 401 and bare.json()["code"] == "invalid_passphrase"
    assert len(calls) == 2

    tampered = await send(key.info.id, rotated.secret[::-1])  # failure 3: now throttled
    assert tampered.status_code == 401 and tampered.json()["code"] == "invalid_signature"
    throttled = await send(key.info.id, rotated.secret)  # a good request, refused all the same
    assert throttled.status_code == 429 and throttled.json()["code"] == "too_many_failures"
    assert len(calls) == 2
    await door.aclose()
    guard.close()


async def test_what_the_warm_path_remembers_is_bounded_in_size() -> None:
    """Long paths are judged afresh every time, never remembered: neither a cached
    key's passed routes nor the public-path memo grow with the paths a caller sends
    (a server may accept paths of 100 KB)."""
    from keyguard.scopes import MEMO_PATH_LEN

    guard = KeyGuard({"store": "memory://", "public_paths": ["/pub/*"]})

    async def any_path(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{rest:path}", any_path)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    token = guard.keys.create(owner="o", name="k").token or ""
    auth = [("Authorization", f"Bearer {token}")]
    long = "/x" * MEMO_PATH_LEN
    for i in range(20):
        assert (await request(app, "GET", f"{long}/{i}", auth, "203.0.113.7")).status_code == 200
        assert (await request(app, "GET", f"/pub{long}/{i}", [], "203.0.113.7")).status_code == 200
    assert (await request(app, "GET", "/short", auth, "203.0.113.7")).status_code == 200
    (slot,) = guard.cache._local._data.values()
    assert [path for _, _, path in slot.routes] == ["/short"]
    assert guard.router.is_public.cache_info().currsize <= 1

"""What an outside attack on the redesigned gate found, each kept as a regression
over the public API and real servers: every spelling of a path, header lines
behind a WSGI bridge, bounded rate-limit numbers, slow-hash budgets per client,
single-flight after a change, CLI output, and reprs. (Tenants' fields and exact
owners: tests/test_admin_grants.py; Forwarded's proto: tests/test_network.py.)"""

from __future__ import annotations

import asyncio
import http.client
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from keyguard import ConfigurationError, InvalidKeySettings, KeyGuard
from keyguard.asgi import KeyGuardMiddleware

from ..kgutil import CountingStore, other_secret
from ..live import serve_asgi

RULES = [
    {"path": "/legacy/admin/*", "scopes": ["admin"]},
    {"path": "/static/private/*", "scopes": ["private"]},
]


def raw_get(base: str, target: str, token: str) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def spelled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Starlette with KeyGuard outside: a Flask app mounted through a2wsgi at
    /legacy, and StaticFiles at /static with a private sub-tree."""
    pytest.importorskip("flask")
    a2wsgi = pytest.importorskip("a2wsgi")
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    root: Path = tmp_path_factory.mktemp("static")
    (root / "private").mkdir()
    (root / "public").mkdir()
    (root / "private" / "secret.txt").write_text("the secret file")
    (root / "public" / "open.txt").write_text("open")
    flask = Flask("legacy")

    @flask.get("/admin/<name>")
    def admin(name: str) -> str:
        return f"admin {name}"

    guard = KeyGuard({"store": "memory://", "rules": RULES, "abuse": {"max_failures": None}})
    token = guard.keys.create(owner="o", name="weak", scopes=["read"]).token
    app = Starlette(
        routes=[
            Mount("/legacy", app=a2wsgi.WSGIMiddleware(flask)),
            Mount("/static", app=StaticFiles(directory=root)),
        ]
    )
    with serve_asgi(KeyGuardMiddleware(app, guard=guard)) as base:
        yield base, token
    guard.close()


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/legacy//admin/users", id="double-slash-after-a-mount"),
        pytest.param("/legacy/%2Fadmin/users", id="encoded-slash-after-a-mount"),
        pytest.param("/legacy/admin//users", id="inner-double-slash"),
        pytest.param("/static/public/../private/secret.txt", id="dot-dot"),
        pytest.param("/static/public/%2e%2e/private/secret.txt", id="encoded-dot-dot"),
        pytest.param("/static//private/secret.txt", id="static-double-slash"),
        pytest.param("/static/./private/secret.txt", id="dot"),
    ],
)
def test_no_spelling_of_a_guarded_path_runs_without_its_scope(spelled: Any, target: str) -> None:
    base, token = spelled
    status, body = raw_get(base, target, token)
    assert status == 403, (status, body[:80])
    assert b"secret file" not in body and b"admin users" not in body


def test_the_spellings_test_can_pass(spelled: Any) -> None:
    base, token = spelled
    assert raw_get(base, "/static/public/open.txt", token) == (200, b"open")


def test_behind_a2wsgi_a_clients_own_underscore_header_is_not_the_proxys() -> None:
    """a2wsgi folds `x_forwarded_for` into HTTP_X_FORWARDED_FOR beside the proxy's
    line: the WSGI door reads the ASGI scope's own lines instead."""
    a2wsgi = pytest.importorskip("a2wsgi")
    from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

    guard = KeyGuard({"store": "memory://", "trusted_proxies": ["10.0.0.0/8"]})
    token = guard.keys.create(owner="o", name="pinned", allowed_ips=["8.8.8.0/24"]).token

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ran"]

    app = a2wsgi.WSGIMiddleware(WSGIMiddleware(inner, guard=guard))

    async def go(headers: list[tuple[bytes, bytes]]) -> int:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (
                await c.get("/", headers=[(b"authorization", f"Bearer {token}".encode()), *headers])
            ).status_code

    proxy_wrote = (b"x-forwarded-for", b"203.0.113.9")  # the real client, outside the allowlist
    assert asyncio.run(go([proxy_wrote, (b"x_forwarded_for", b"8.8.8.8")])) == 403
    assert asyncio.run(go([(b"x-forwarded-for", b"8.8.8.8")])) == 200
    guard.close()


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("1 per 1" + "0" * 400 + " seconds", id="window-overflows"),
        pytest.param("1/100000000000000000000 second", id="window-redis-refuses"),
        pytest.param("9" * 30 + "/minute", id="amount"),
        pytest.param(";".join(["1/second"] * 20), id="too-many-windows"),
    ],
)
def test_rate_limit_numbers_are_bounded(limit: str) -> None:
    guard = KeyGuard({"store": "memory://"})
    with pytest.raises(InvalidKeySettings) as info:
        guard.keys.create(owner="o", name="n", rate_limit=limit)
    assert info.value.field == "rate_limit"
    with pytest.raises(ConfigurationError):
        KeyGuard({"store": "memory://", "rate_limit": limit})
    guard.close()


@pytest.mark.servers
def test_a_command_redis_refuses_does_not_trip_the_breaker(redis_url: str) -> None:
    from keyguard.redis import RedisTier, Unavailable

    tier = RedisTier(redis_url)
    try:
        with pytest.raises(Unavailable):
            tier.call(lambda client: client.execute_command("NO-SUCH-COMMAND"))
        assert tier.call(lambda client: client.ping())  # still in use: no outage was declared
    finally:
        tier.close()


async def test_a_flood_from_one_client_does_not_lock_the_holder_out() -> None:
    """With argon2id, guesses at a key id, from one client or from many, are refused
    by the filter beside the argon2 hash without spending the key's budget of slow
    checks; the holder, elsewhere, still gets in (its cold request runs argon2)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    guard = KeyGuard({"store": "memory://", "hashing": "argon2id", "abuse": {"max_failures": None}})
    token = guard.keys.create(owner="o", name="n").token or ""

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/x", ok)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)

    async def send(peer: str, sent: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(peer, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/x", headers={"Authorization": f"Bearer {sent}"})).status_code

    peers = ["198.51.100.66"] + [f"2001:db8:{i}::1" for i in range(9)]  # nine /64s too
    flood = await asyncio.gather(*(send(p, other_secret(token)) for p in peers for _ in range(12)))
    assert set(flood) == {401}
    assert await send("203.0.113.7", token) == 200  # the holder, from its own address
    guard.close()


def test_a_load_that_began_before_a_change_serves_nobody_who_asks_after_it() -> None:
    """Single-flight per epoch: a request that starts after `revoke()` returned never
    joins a store read that began before it."""
    store = CountingStore()
    guard = KeyGuard({"store": "memory://", "abuse": {"max_failures": None}}, store=store)
    token = guard.keys.create(owner="o", name="n").token or ""
    store.hold = threading.Event()
    early: list[Any] = []
    reader = threading.Thread(target=lambda: early.append(guard.check(_bearer(token))))
    reader.start()
    for _ in range(500):  # the early read is under way (held in the store)
        if store.gets:
            break
        threading.Event().wait(0.01)
    guard.keys.revoke(guard.parts.tokens.quick_id(token) or "")
    late: list[Any] = []
    asker = threading.Thread(target=lambda: late.append(guard.check(_bearer(token))))
    asker.start()
    threading.Event().wait(0.05)
    store.hold.set()
    reader.join(10)
    asker.join(10)
    assert late and late[0].error is not None and late[0].error.code == "revoked_key"
    guard.close()


def _bearer(token: str) -> Any:
    from keyguard.decision import Facts

    return Facts("GET", "/x", "203.0.113.7", {"authorization": [f"Bearer {token}"]})


def test_a_key_name_is_shown_not_read_as_markup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from keyguard.cli import main

    store = f"sqlite:///{tmp_path / 'k.db'}"
    guard = KeyGuard({"store": store})
    guard.keys.create(owner="o", name="[/]")
    guard.keys.create(owner="o", name="[white on white]hidden[/]")
    guard.close()
    capsys.readouterr()
    try:
        main(["--store", store, "keys", "list", "--wide"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "[/]" in out and "[white on white]hidden[/]" in out


def test_reprs_show_no_secret() -> None:
    from keyguard.crypto import generate_master_key

    master, pepper = generate_master_key(), "a-pepper-that-is-a-secret-0123"
    guard = KeyGuard(
        {
            "store": "memory://",
            "cache": "redis://:redispassword@127.0.0.1:1/0",
            "pepper": pepper,
            "signing": {"master_keys": [master]},
        }
    )
    text = repr(guard.settings)
    assert pepper not in text and master not in text and "redispassword" not in text
    token = guard.keys.create(owner="o", name="n", passphrase="a long passphrase").token or ""
    facts = _bearer(token)
    facts.headers = {**facts.headers, "kg-passphrase": ["a long passphrase"]}
    from keyguard.decision import Need, Verdict, step

    seen = []
    out = step(guard.parts, facts)
    while isinstance(out, Need):
        seen.append(repr(out))
        kind, arg, known = out
        if kind == "fetch":
            known.entry = guard.cache.load(arg)
        elif kind == "slow":
            known.slow[arg[0]] = guard.hasher.slow(*arg)
        out = step(guard.parts, facts, known)
    assert isinstance(out, Verdict) and out.entry is not None
    seen += [repr(out), repr(guard.cache.peek(out.key_id or ""))]
    for text in seen:
        assert token not in text and token.split("_")[2] not in text
        assert "a long passphrase" not in text
    guard.close()

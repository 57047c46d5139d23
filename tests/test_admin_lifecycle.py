"""Suspend and resume, where a key was last used from, and step-up confirmation
(SPEC sections 3 and 8; issue 12 items 1, 2 and 4): through `guard.keys`, over
HTTP on the admin API and the ASGI door, in the CLI, in every backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import AuthenticationError, KeyGuard
from keyguard.admin import ACTIONS, Principal, admin_app, totp_confirm
from keyguard.asgi import KeyGuardMiddleware
from keyguard.cli import main

from .kgutil import Clock, wait_for
from .test_stores import BACKENDS, store_url

pyotp = pytest.importorskip("pyotp")

CLIENT = ("203.0.113.7", 4000)


def code_of(guard: KeyGuard, token: str) -> str:
    try:
        guard.verify(token)
    except AuthenticationError as exc:
        return exc.code
    return "ok"


@pytest.fixture(params=BACKENDS)
def any_guard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyGuard]:
    for url in store_url(request.param, request, tmp_path):
        g = KeyGuard({"store": url, "policy": {"allow_private_ips": True}})
        yield g
        g.close()


async def _client(app: Any, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.headers.update(headers)
        yield c


def app_for(guard: KeyGuard) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/v1/x", hello)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    return app


# -- suspend and resume ------


async def test_suspend_refuses_after_proof_and_resume_restores(any_guard: KeyGuard) -> None:
    guard = any_guard
    issued = guard.keys.create(owner="o", name="n", scopes=["read"], metadata={"a": 1})
    token = issued.token or ""
    async for c in _client(app_for(guard)):
        h = {"authorization": f"Bearer {token}"}
        assert (await c.get("/v1/x", headers=h)).status_code == 200  # warm now
        before = guard.keys.get(issued.id).to_dict()
        info = await guard.keys.asuspend(issued.id)
        assert info.suspended_at is not None and info.status() == "suspended"
        r = await c.get("/v1/x", headers=h)
        assert r.status_code == 401 and r.json()["code"] == "suspended_key"
        assert r.headers["www-authenticate"].startswith("Bearer")
        # Only a caller that proved the secret learns the key is suspended.
        forged = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
        assert code_of(guard, forged) == "invalid_key"
        assert code_of(guard, token) == "suspended_key"
        # Nothing else about it changed; it is listed, with its status.
        after = guard.keys.get(issued.id).to_dict()
        suspension = ("suspended_at", "suspended_by", "status")
        assert {k: v for k, v in after.items() if k not in suspension} == {
            k: v for k, v in before.items() if k not in suspension
        }
        assert (before["suspended_by"], after["suspended_by"]) == (None, "operator")
        listed = {k.id: k.status() for k in guard.keys.list()}
        assert listed[issued.id] == "suspended"
        assert guard.keys.suspend(issued.id).suspended_at == info.suspended_at  # idempotent
        resumed = await guard.keys.aresume(issued.id)
        assert resumed.suspended_at is None and resumed.status() == "active"
        assert (await c.get("/v1/x", headers=h)).status_code == 200
        assert guard.keys.resume(issued.id).status() == "active"  # idempotent


def test_a_revoked_key_cannot_be_suspended_or_resumed(guard: KeyGuard) -> None:
    from keyguard.exceptions import KeyStateConflict

    key = guard.keys.create(owner="o", name="n")
    guard.keys.suspend(key.id)
    guard.keys.revoke(key.id)
    for call in (guard.keys.suspend, guard.keys.resume, guard.keys.rotate):
        with pytest.raises(KeyStateConflict) as caught:
            call(key.id)
        assert caught.value.field == "key" and caught.value.status_code == 409
    assert guard.keys.get(key.id).status() == "revoked"
    assert key.id not in [k.id for k in guard.keys.list()]
    assert key.id in [k.id for k in guard.keys.list(include_revoked=True)]


def test_status_order() -> None:
    clock = Clock()
    g = KeyGuard({"store": "memory://", "policy": {"unrestricted_max_days": 1}}, clock=clock)
    key = g.keys.create(owner="o", name="n")
    g.keys.suspend(key.id)
    clock.advance(2 * 86400)
    from datetime import UTC, datetime

    now = datetime.fromtimestamp(clock(), UTC)
    assert g.keys.get(key.id).status(now) == "expired"  # expired outranks suspended
    g.keys.revoke(key.id)
    assert g.keys.get(key.id).status(now) == "revoked"


async def test_suspension_reaches_another_instance_through_the_shared_cache(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = {
        "store": f"sqlite:///{tmp_path / 'k.db'}",
        "cache": f"{redis_url}?prefix={redis_prefix}",
        "local_cache_ttl": 30,
    }
    one, two = KeyGuard(settings), KeyGuard(settings)
    try:
        token = one.keys.create(owner="o", name="n").token or ""
        assert code_of(two, token) == "ok"  # cached in `two`
        one.keys.suspend(one.parts.tokens.parse(token)[0])  # type: ignore[index]
        assert wait_for(lambda: code_of(two, token) == "suspended_key", 5)
        one.keys.resume(one.parts.tokens.parse(token)[0])  # type: ignore[index]
        assert wait_for(lambda: code_of(two, token) == "ok", 5)
    finally:
        one.close()
        two.close()


async def test_admin_suspend_and_resume_routes_and_audit(
    guard: KeyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    admin = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    key = guard.keys.create(owner="acme", name="ci")
    async for c in _client(admin_app(guard), authorization=f"Bearer {admin}"):
        r = await c.post(f"/api/keys/{key.id}/suspend")
        assert r.status_code == 200 and r.json()["status"] == "suspended"
        assert r.json()["suspended_at"] is not None
        r = await c.get("/api/keys", params={"owner": "acme"})
        assert [k["status"] for k in r.json()["keys"]] == ["suspended"]
        assert code_of(guard, key.token or "") == "suspended_key"
        r = await c.post(f"/api/keys/{key.id}/resume")
        assert r.status_code == 200 and r.json()["status"] == "active"
        assert r.json()["suspended_at"] is None
        r = await c.post("/api/keys/nope0000nope0000/suspend")
        assert r.status_code == 404
    events = [(r.audit["action"], r.audit["result"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert ("key.suspend", "ok") in events and ("key.resume", "ok") in events
    assert ("key.suspend", "not_found") in events


def test_cli_suspend_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    g = KeyGuard({"store": url})
    key = g.keys.create(owner="o", name="ci")
    g.close()
    main(["--store", url, "keys", "suspend", key.id])
    assert f"Suspended key {key.id} (ci)." in capsys.readouterr().out
    g = KeyGuard({"store": url})
    assert code_of(g, key.token or "") == "suspended_key"
    g.close()
    main(["--store", url, "keys", "resume", key.id])
    assert f"Resumed key {key.id} (ci)." in capsys.readouterr().out
    g = KeyGuard({"store": url})
    assert code_of(g, key.token or "") == "ok"
    g.close()
    with pytest.raises(SystemExit) as exited:
        main(["--store", url, "keys", "suspend", "nope"])
    assert exited.value.code == 1 and "no key with id 'nope'" in capsys.readouterr().err


# -- last used from where ------


async def test_last_used_from_is_buffered_and_flushed_in_every_backend(any_guard: KeyGuard) -> None:
    guard = any_guard
    key = guard.keys.create(owner="o", name="n")
    token = key.token or ""
    writes: list[Any] = []
    real_touch = guard.store.touch
    guard.store.touch = lambda used: (writes.append(dict(used)), real_touch(used))[1]  # type: ignore[method-assign]
    async for c in _client(app_for(guard)):
        for _ in range(3):  # cold, then the warm path
            assert (await c.get("/v1/x", headers={"authorization": f"Bearer {token}"})).text
    assert writes == []  # no store write per request
    seen = guard.keys.get(key.id)  # the buffer shows before it is written
    assert seen.last_used_from == "203.0.113.7" and seen.last_used_at is not None
    guard.verify(token, client_ip="198.51.100.23")
    guard.flush()
    assert len(writes) == 1 and writes[0][key.id][1] == "198.51.100.23"
    stored = guard.store.get(key.id)
    assert stored is not None and stored.last_used_from == "198.51.100.23"
    info = guard.keys.get(key.id).to_dict()
    assert info["last_used_from"] == "198.51.100.23" and info["last_used_at"]
    guard.verify(token)  # no client known: recorded as such
    guard.flush()
    assert guard.keys.get(key.id).last_used_from is None


async def test_admin_api_shows_last_used_from(guard: KeyGuard) -> None:
    admin = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"])
    async for c in _client(admin_app(guard), authorization=f"Bearer {admin.token}"):
        await c.get("/api/keys")
        doc = (await c.get(f"/api/keys/{admin.id}")).json()
        assert doc["last_used_from"] == "203.0.113.7"


# -- step-up ------


def _admin_with(guard: KeyGuard, confirm: Any) -> Starlette:
    return admin_app(
        guard, authorize=lambda request: Principal("alice", owner="alice"), confirm=confirm
    )


CHANGES = [
    pytest.param("create", "POST", "/api/keys", {"name": "new"}, id="create"),
    pytest.param("update", "PATCH", "/api/keys/{id}", {"name": "x"}, id="update"),
    pytest.param("rotate", "POST", "/api/keys/{id}/rotate", None, id="rotate"),
    pytest.param("suspend", "POST", "/api/keys/{id}/suspend", None, id="suspend"),
    pytest.param("resume", "POST", "/api/keys/{id}/resume", None, id="resume"),
    pytest.param("revoke", "POST", "/api/keys/{id}/revoke", None, id="revoke"),
    pytest.param("delete", "DELETE", "/api/keys/{id}", None, id="delete"),
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("action", "method", "path", "body"), CHANGES)
async def test_a_refused_confirmation_changes_nothing(
    guard: KeyGuard, is_async: bool, action: str, method: str, path: str, body: Any
) -> None:
    asked: list[str] = []

    def sync_confirm(request: Request, action: str) -> bool:
        asked.append(action)
        return request.headers.get("x-keyguard-confirm") == "yes"

    async def async_confirm(request: Request, action: str) -> bool:
        return sync_confirm(request, action)

    key = guard.keys.create(owner="alice", name="mine")
    snapshot = lambda: [k.to_dict() for k in guard.keys.list(include_revoked=True)]  # noqa: E731
    before = snapshot()
    app = _admin_with(guard, async_confirm if is_async else sync_confirm)
    async for c in _client(app, **{"x-requested-with": "t"}):
        url = path.format(id=key.id)
        r = await c.request(method, url, json=body)
        assert r.status_code == 401 and r.json()["code"] == "step_up_required"
        assert "insufficient_user_authentication" in r.headers["www-authenticate"]
        assert r.json()["action"] == action
        assert snapshot() == before
        assert (await c.get("/api/keys")).status_code == 200  # reads are never asked
        r = await c.request(method, url, json=body, headers={"x-keyguard-confirm": "yes"})
        assert r.status_code in (200, 201, 204), r.text
    assert asked == [action, action] and action in ACTIONS


async def test_refused_settings_are_answered_before_a_code_is_asked(guard: KeyGuard) -> None:
    asked: list[str] = []
    app = _admin_with(guard, lambda request, action: asked.append(action) or False)
    async for c in _client(app, **{"x-requested-with": "t"}):
        r = await c.post("/api/keys", json={"name": "x", "scopes": ["keyguard:admin"]})
        assert r.status_code == 422 and asked == []
        r = await c.post("/api/keys/nope0000nope0000/revoke")
        assert r.status_code == 404 and asked == []


@pytest.mark.parametrize("operator", [False, True], ids=["tenant", "operator"])
async def test_what_a_change_would_refuse_is_told_before_a_code_is_asked(
    guard: KeyGuard, operator: bool
) -> None:
    """Rotating, suspending or resuming a revoked key (409) and changing an unknown
    key (404, an operator's delete too) are answered before `confirm` is asked, so
    no one-time code is spent on a change that cannot happen; a corrupt row an
    operator deletes is still asked for and deleted."""
    asked: list[str] = []
    who = Principal("ops") if operator else Principal("alice", owner="alice")
    app = admin_app(
        guard, authorize=lambda request: who, confirm=lambda r, a: asked.append(a) or True
    )
    revoked = guard.keys.create(owner="alice", name="gone").id
    guard.keys.revoke(revoked)
    async for c in _client(app, **{"x-requested-with": "t"}):
        for action in ("rotate", "suspend", "resume"):
            r = await c.post(f"/api/keys/{revoked}/{action}", json=None)
            assert r.status_code == 409 and r.json()["field"] == "key", r.text
            assert "revoked" in r.json()["detail"]
        for method, path in [("DELETE", ""), ("POST", "/rotate"), ("POST", "/suspend"),
                             ("POST", "/revoke"), ("PATCH", "")]:  # fmt: skip
            body = {"name": "x"} if method == "PATCH" else None
            r = await c.request(method, f"/api/keys/nope0000nope0000{path}", json=body)
            assert r.status_code == 404 and r.json()["code"] == "not_found", (method, path)
        assert asked == []
        # Revoking a revoked key changes nothing, so nothing is asked for it.
        assert (await c.post(f"/api/keys/{revoked}/revoke")).status_code == 200
        assert (await c.delete(f"/api/keys/{revoked}")).status_code == 204
        assert asked == ["delete"]


async def test_no_totp_code_is_spent_on_a_change_that_cannot_happen(
    guard: KeyGuard, clock: Clock
) -> None:
    for who in (Principal("alice", owner="alice"), Principal("ops")):
        confirm = totp_confirm(lambda request: SECRET, clock=clock)
        app = admin_app(guard, authorize=lambda request, who=who: who, confirm=confirm)
        revoked = guard.keys.create(owner="alice", name="gone").id
        guard.keys.revoke(revoked)
        live = guard.keys.create(owner="alice", name="live").id
        code = {"x-keyguard-confirm": code_at(clock)}
        async for c in _client(app, **{"x-requested-with": "t"}):
            assert (await c.post(f"/api/keys/{revoked}/rotate", headers=code)).status_code == 409
            assert (await c.delete("/api/keys/nope0000nope0000", headers=code)).status_code == 404
            r = await c.post(f"/api/keys/{live}/rotate", headers=code)  # the code still works
            assert r.status_code == 200 and "token" in r.json()
        clock.advance(30)


async def test_no_totp_code_is_spent_at_the_owners_key_limit(clock: Clock) -> None:
    """A create or a resume the owner's key limit would refuse is refused before a
    code is asked (the same 422); a revoke of a revoked key changes nothing and asks
    for none. The code is then still good for a change that can happen."""
    guard = KeyGuard({"store": "memory://", "policy": {"max_keys_per_owner": 2}})
    for who in (Principal("alice", owner="alice"), Principal("ops")):
        confirm = totp_confirm(lambda request: SECRET, clock=clock)
        app = admin_app(guard, authorize=lambda request, who=who: who, confirm=confirm)
        for key in guard.keys.list(owner="alice", include_revoked=True):
            guard.keys.delete(key.id)
        paused = guard.keys.create(owner="alice", name="paused").id
        guard.keys.suspend(paused)
        guard.keys.create(owner="alice", name="one")
        guard.keys.create(owner="alice", name="two")
        gone = guard.keys.create(owner="ops", name="gone").id
        guard.keys.revoke(gone)
        code = {"x-keyguard-confirm": code_at(clock)}
        async for c in _client(app, **{"x-requested-with": "t"}):
            r = await c.post(f"/api/keys/{paused}/resume", headers=code)
            assert r.status_code == 422, r.text
            r = await c.post("/api/keys", json={"owner": "alice", "name": "three"}, headers=code)
            assert r.status_code == 422, r.text
            if who.owner is None:
                r = await c.post(f"/api/keys/{gone}/revoke")  # no code: nothing to change
                assert r.status_code == 200 and r.json()["status"] == "revoked"
            r = await c.post(f"/api/keys/{paused}/suspend", headers=code)  # the code still works
            assert r.status_code == 200, r.text
        clock.advance(30)


# -- TOTP ------

SECRET = pyotp.random_base32()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_900_000_005.0)


@pytest.fixture
async def totp_client(guard: KeyGuard, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    secrets = {"alice": SECRET}
    confirm = totp_confirm(
        lambda request: secrets.get(request.headers.get("x-user", "")), clock=clock
    )
    app = admin_app(
        guard,
        authorize=lambda request: request.headers.get("x-user"),
        confirm=confirm,
    )
    async for c in _client(app, **{"x-requested-with": "t", "x-user": "alice"}):
        yield c


def code_at(clock: Clock, steps: int = 0) -> str:
    return str(pyotp.TOTP(SECRET).at(clock() + 30 * steps))


async def _create(c: httpx.AsyncClient, code: str | bytes | None) -> httpx.Response:
    headers = {} if code is None else {"x-keyguard-confirm": code}
    return await c.post("/api/keys", json={"name": "k"}, headers=headers)


async def test_totp_accepts_the_current_code_once(
    totp_client: httpx.AsyncClient, guard: KeyGuard, clock: Clock
) -> None:
    assert (await _create(totp_client, None)).json()["code"] == "step_up_required"
    code = code_at(clock)
    assert (await _create(totp_client, code)).status_code == 201
    r = await _create(totp_client, code)  # replayed within its window
    assert r.status_code == 401 and r.json()["code"] == "step_up_required"
    assert (await _create(totp_client, code_at(clock, -1))).status_code == 401  # older step
    clock.advance(30)
    assert (await _create(totp_client, code_at(clock))).status_code == 201  # the next step
    assert len(guard.keys.list(owner="alice")) == 2
    assert code not in json.dumps([k.to_dict() for k in guard.keys.list()])


async def test_a_used_code_is_refused_but_does_not_lock_out(
    totp_client: httpx.AsyncClient, guard: KeyGuard, clock: Clock
) -> None:
    """Several quick changes with the one code of this window: the first passes, the
    others are 401 step_up_required (a replay), and none counts as a wrong guess,
    so the next window's code still works. Wrong codes still lock out."""
    key = guard.keys.create(owner="alice", name="k").id
    code = {"x-keyguard-confirm": code_at(clock)}
    answers = [
        await totp_client.patch(f"/api/keys/{key}", json={"name": f"n{i}"}, headers=code)
        for i in range(8)
    ]
    assert [r.status_code for r in answers] == [200] + [401] * 7
    assert {r.json()["code"] for r in answers[1:]} == {"step_up_required"}
    assert (await _create(totp_client, code_at(clock, -1))).status_code == 401  # older: no guess
    clock.advance(30)
    assert (await _create(totp_client, code_at(clock))).status_code == 201  # not locked out
    wrong = "000000" if code_at(clock) != "000000" else "000001"
    for _ in range(5):
        assert (await _create(totp_client, wrong)).status_code == 401
    clock.advance(30)
    assert (await _create(totp_client, code_at(clock))).status_code == 401  # locked out


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param("000000", id="wrong-digits"),
        pytest.param("12345", id="too-short"),
        pytest.param("１２３４５６".encode(), id="non-ascii-digits"),
        pytest.param("abcdef", id="letters"),
        pytest.param("", id="empty"),
    ],
)
async def test_totp_refuses_wrong_codes_and_locks_out_guessing(
    totp_client: httpx.AsyncClient, guard: KeyGuard, clock: Clock, wrong: str | bytes
) -> None:
    if wrong == "000000" and code_at(clock) == wrong:
        wrong = "000001"
    for _ in range(5):
        assert (await _create(totp_client, wrong)).status_code == 401
    r = await _create(totp_client, code_at(clock))  # locked out: even the right code
    assert r.status_code == 401
    clock.advance(301)
    assert (await _create(totp_client, code_at(clock))).status_code == 201
    assert len(guard.keys.list(owner="alice")) == 1


async def test_totp_drift_and_unknown_users(totp_client: httpx.AsyncClient, clock: Clock) -> None:
    assert (await _create(totp_client, code_at(clock, 1))).status_code == 201  # one step ahead
    assert (await _create(totp_client, code_at(clock, 3))).status_code == 401  # too far
    r = await totp_client.post(
        "/api/keys",
        json={"name": "k"},
        headers={"x-user": "bob", "x-keyguard-confirm": code_at(clock, 2)},
    )
    assert r.status_code == 401  # bob has no secret: every change needs a step-up


def test_totp_with_a_malformed_secret_refuses() -> None:
    confirm = totp_confirm(lambda request: "not base32 !!")
    assert confirm.check("not base32 !!", "123456") is False

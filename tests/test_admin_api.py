"""The admin API over HTTP (SPEC section 8): routes, auth, owner scoping, 422s, audit."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import AuthenticationError, KeyGuard
from keyguard.admin import Principal, admin_app, admin_wsgi
from keyguard.asgi import KeyGuardMiddleware

ALL_ROUTES = [
    pytest.param("GET", "/api/keys", id="list"),
    pytest.param("POST", "/api/keys", id="create"),
    pytest.param("GET", "/api/keys/{id}", id="get"),
    pytest.param("PATCH", "/api/keys/{id}", id="update"),
    pytest.param("POST", "/api/keys/{id}/rotate", id="rotate"),
    pytest.param("POST", "/api/keys/{id}/revoke", id="revoke"),
    pytest.param("DELETE", "/api/keys/{id}", id="delete"),
]


def _guard(**policy: Any) -> KeyGuard:
    return KeyGuard({"store": "memory://", "policy": {"allow_private_ips": True, **policy}})


@pytest.fixture
def admin_token(guard: KeyGuard) -> str:
    return guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token or ""


async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 4000)), base_url="http://t"
    ) as c:
        yield c


@pytest.fixture
async def client(guard: KeyGuard, admin_token: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(admin_app(guard, scope_choices=["read", "write"])):
        c.headers["authorization"] = f"Bearer {admin_token}"
        yield c


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    events: list[dict[str, Any]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append(record.audit)  # type: ignore[attr-defined]
            assert json.loads(record.getMessage()) == json.loads(
                json.dumps(record.audit, default=str)
            )

    handler = Grab()
    logger = logging.getLogger("keyguard.audit")
    logger.addHandler(handler)
    yield events
    logger.removeHandler(handler)


async def _create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"owner": "acme", "name": "ci", "scopes": ["read"], **body}
    r = await client.post("/api/keys", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["code"] == code and doc["status"] == status
    return dict(doc)


# -- routes ------


async def test_create_shows_token_once_and_it_works(
    client: httpx.AsyncClient, guard: KeyGuard
) -> None:
    created = await _create(client, allowed_ips=["198.51.100.0/24"], rate_limit="10/second")
    token, key = created["token"], created["key"]
    assert (
        token.startswith("kg_") and key["hint"].startswith("kg_") and token not in json.dumps(key)
    )
    assert key["owner"] == "acme" and key["scopes"] == ["read"]
    assert key["allowed_ips"] == ["198.51.100.0/24"] and key["rate_limit"] == "10/second"
    info = await guard.averify(token, client_ip="198.51.100.9", scopes=["read"])
    assert info.id == key["id"]
    for path in ("/api/keys", f"/api/keys/{key['id']}"):
        r = await client.get(path)
        assert r.status_code == 200 and token not in r.text and token[-10:] not in r.text
        assert r.headers["cache-control"] == "no-store"


async def test_create_location_and_expiry_forms(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/keys", json={"owner": "acme", "name": "a", "expires_in": "30d"})
    assert r.status_code == 201 and r.headers["location"] == f"/api/keys/{r.json()['key']['id']}"
    expires = datetime.fromisoformat(r.json()["key"]["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    when = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    r = await client.post(
        "/api/keys",
        json={"owner": "acme", "name": "b", "expires_at": when.isoformat().replace("+00:00", "Z")},
    )
    assert datetime.fromisoformat(r.json()["key"]["expires_at"]) == when
    # No allowlist and no expiry: the 90-day cap applies, as in the Python API.
    r = await client.post("/api/keys", json={"owner": "acme", "name": "c"})
    expires = datetime.fromisoformat(r.json()["key"]["expires_at"])
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)


async def test_list_filters(client: httpx.AsyncClient) -> None:
    a = (await _create(client, owner="a", name="one"))["key"]["id"]
    b = (await _create(client, owner="b", name="two"))["key"]["id"]
    await client.post(f"/api/keys/{b}/revoke")
    ids = lambda r: [k["id"] for k in r.json()["keys"]]  # noqa: E731
    r = await client.get("/api/keys")
    assert a in ids(r) and b not in ids(r) and r.json()["owner"] is None
    assert ids(await client.get("/api/keys", params={"owner": "b"})) == []
    assert ids(await client.get("/api/keys", params={"owner": "b", "include_revoked": "true"})) == [
        b
    ]
    _problem(
        await client.get("/api/keys", params={"include_revoked": "maybe"}), 400, "invalid_request"
    )


async def test_get_update_rotate_revoke_delete(client: httpx.AsyncClient, guard: KeyGuard) -> None:
    created = await _create(client, allowed_ips=["198.51.100.0/24"])
    key_id, old = created["key"]["id"], created["token"]
    assert (await client.get(f"/api/keys/{key_id}")).json()["name"] == "ci"

    r = await client.patch(
        f"/api/keys/{key_id}", json={"name": "ci-2", "scopes": ["read", "write"]}
    )
    assert (
        r.status_code == 200
        and r.json()["name"] == "ci-2"
        and r.json()["scopes"] == ["read", "write"]
    )
    await guard.averify(old, client_ip="198.51.100.1", scopes=["write"])

    r = await client.post(f"/api/keys/{key_id}/rotate", json={"grace": "1h"})
    assert r.status_code == 200 and r.json()["token"] != old and r.json()["key"]["id"] == key_id
    new = r.json()["token"]
    await guard.averify(new, client_ip="198.51.100.1")
    await guard.averify(old, client_ip="198.51.100.1")  # in its grace period
    r = await client.post(f"/api/keys/{key_id}/rotate")  # no body: no grace
    assert r.status_code == 200
    latest = r.json()["token"]
    with pytest.raises(AuthenticationError):
        await guard.averify(new, client_ip="198.51.100.1")

    r = await client.post(f"/api/keys/{key_id}/revoke")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(AuthenticationError) as err:
        await guard.averify(latest, client_ip="198.51.100.1")
    assert err.value.code == "revoked_key"

    r = await client.delete(f"/api/keys/{key_id}")
    assert r.status_code == 204 and r.content == b""
    _problem(await client.get(f"/api/keys/{key_id}"), 404, "not_found")
    _problem(await client.delete(f"/api/keys/{key_id}"), 404, "not_found")


@pytest.mark.parametrize("action", ["rotate", "suspend", "resume"])
async def test_changing_a_revoked_key_is_a_409(client: httpx.AsyncClient, action: str) -> None:
    key_id = (await _create(client))["key"]["id"]
    await client.post(f"/api/keys/{key_id}/revoke")
    doc = _problem(await client.post(f"/api/keys/{key_id}/{action}"), 409, "invalid_key_settings")
    assert doc["field"] == "key" and doc["title"] == "Conflict" and "revoked" in doc["detail"]


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES[2:])
async def test_unknown_id_is_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    body = {"name": "x"} if method == "PATCH" else None
    r = await client.request(method, path.format(id="nope0000nope0000"), json=body)
    _problem(r, 404, "not_found")


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/nothing"), 404, "not_found")
    r = await client.put("/api/keys")
    _problem(r, 405, "invalid_request")
    assert "POST" in r.headers["allow"]


# -- refused settings: 422 naming the field ------


REFUSED = [
    pytest.param({"allowed_ips": ["10.0.0.0/8"]}, "allowed_ips", "private", id="private-ip"),
    pytest.param({"allowed_ips": ["198.51.100.0/33"]}, "allowed_ips", "not an IP", id="bad-cidr"),
    pytest.param({"allowed_ips": "198.51.100.1"}, "allowed_ips", "list", id="ips-not-a-list"),
    pytest.param(
        {"allowed_ips": ["0.0.0.0/0"]}, "allowed_ips", "every address", id="ips-everything"
    ),
    pytest.param({"scopes": "read"}, "scopes", "list", id="scopes-not-a-list"),
    pytest.param({"scopes": ["has space"]}, "scopes", "letters", id="bad-scope"),
    pytest.param({"name": ""}, "name", "non-empty", id="empty-name"),
    pytest.param({"name": 5}, "name", "string", id="name-not-a-string"),
    pytest.param({"owner": None}, "owner", "string", id="no-owner"),
    pytest.param({"expires_at": "tomorrow"}, "expires_at", "ISO 8601", id="bad-date"),
    pytest.param({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "future", id="past-date"),
    pytest.param({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "timezone", id="naive-date"),
    pytest.param({"expires_in": -5}, "expires_in", "seconds", id="negative-duration"),
    pytest.param({"expires_in": "soon"}, "expires_in", "duration", id="bad-duration"),
    pytest.param(
        {"expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"},
        "expires_in",
        "not both",
        id="both-expiries",
    ),
    pytest.param({"passphrase": "short"}, "passphrase", "8 to 256", id="short-passphrase"),
    pytest.param({"passphrase": 12345678}, "passphrase", "string", id="passphrase-not-a-string"),
    pytest.param({"rate_limit": "lots"}, "rate_limit", "", id="bad-rate"),
    pytest.param({"max_uses": 0}, "max_uses", "positive", id="bad-max-uses"),
    pytest.param({"metadata": [1]}, "metadata", "object", id="metadata-not-an-object"),
    pytest.param({"kind": "magic"}, "kind", "bearer", id="bad-kind"),
    pytest.param({"colour": "red"}, "colour", "unknown field", id="unknown-field"),
]


@pytest.mark.parametrize(("body", "field", "words"), REFUSED)
async def test_create_refusals_name_the_field(
    admin_token: str, body: dict[str, Any], field: str, words: str
) -> None:
    guard = KeyGuard({"store": "memory://"})  # private ranges refused (the default policy)
    token = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    async for c in _client(admin_app(guard)):
        r = await c.post(
            "/api/keys",
            json={"owner": "acme", "name": "ci", **body},
            headers={"authorization": f"Bearer {token}"},
        )
        doc = _problem(r, 422, "invalid_key_settings")
        assert doc["field"] == field and words in doc["detail"]


UPDATE_REFUSED = [
    pytest.param({"allowed_ips": ["not-an-ip"]}, "allowed_ips", id="bad-ip"),
    pytest.param({"scopes": [1, 2]}, "scopes", id="scopes-not-strings"),
    pytest.param({"name": "   "}, "name", id="blank-name"),
    pytest.param({"owner": "someone"}, "owner", id="owner-cannot-change"),
    pytest.param({"expires_at": 12}, "expires_at", id="expiry-not-a-string"),
]


@pytest.mark.parametrize(("body", "field"), UPDATE_REFUSED)
async def test_update_refusals_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    key_id = (await _create(client))["key"]["id"]
    doc = _problem(
        await client.patch(f"/api/keys/{key_id}", json=body), 422, "invalid_key_settings"
    )
    assert doc["field"] == field


async def test_key_limit_is_422_on_owner() -> None:
    guard = _guard(max_keys_per_owner=2)
    token = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    async for c in _client(admin_app(guard)):
        c.headers["authorization"] = f"Bearer {token}"
        for n in range(2):
            assert (
                await c.post("/api/keys", json={"owner": "acme", "name": f"k{n}"})
            ).status_code == 201
        doc = _problem(
            await c.post("/api/keys", json={"owner": "acme", "name": "k3"}),
            422,
            "invalid_key_settings",
        )
        assert doc["field"] == "owner" and "maximum of 2" in doc["detail"]


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", 400, "invalid_request", id="unparsable"),
    pytest.param(b"[1, 2]", "application/json", 400, "invalid_request", id="not-an-object"),
    pytest.param(
        b'{"name": "x"}', "text/plain", 400, "invalid_request", id="not-json-content-type"
    ),
    pytest.param(
        b'{"name": "' + b"x" * 70_000 + b'"}',
        "application/json",
        413,
        "payload_too_large",
        id="too-large",
    ),
]


@pytest.mark.parametrize(("raw", "ctype", "status", "code"), BAD_BODIES)
async def test_bad_bodies(
    client: httpx.AsyncClient, raw: bytes, ctype: str, status: int, code: str
) -> None:
    _problem(
        await client.post("/api/keys", content=raw, headers={"content-type": ctype}), status, code
    )


# -- who may use it ------


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES)
async def test_every_route_needs_an_admin_key(guard: KeyGuard, method: str, path: str) -> None:
    plain = guard.keys.create(owner="acme", name="app", scopes=["read"]).token
    target = guard.keys.create(owner="acme", name="target").id
    url = path.format(id=target)
    async for c in _client(admin_app(guard)):
        r = await c.request(method, url)
        _problem(r, 401, "missing_credentials")
        assert r.headers["www-authenticate"] == 'Bearer realm="api"'
        r = await c.request(method, url, headers={"authorization": "Bearer kg_nope"})
        _problem(r, 401, "invalid_key")
        r = await c.request(method, url, headers={"authorization": f"Bearer {plain}"})
        doc = _problem(r, 403, "insufficient_scope")
        assert doc["required_scopes"] == ["keyguard:admin"]
    assert guard.keys.get(target).revoked_at is None


async def test_admin_key_via_header_and_revoked_admin_key(guard: KeyGuard) -> None:
    issued = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"])
    async for c in _client(admin_app(guard)):
        assert (
            await c.get("/api/keys", headers={"x-api-key": issued.token or ""})
        ).status_code == 200
        guard.keys.revoke(issued.id)
        _problem(
            await c.get("/api/keys", headers={"x-api-key": issued.token or ""}), 401, "revoked_key"
        )


async def test_admin_key_ip_allowlist_applies(guard: KeyGuard) -> None:
    token = guard.keys.create(
        owner="ops", name="root", scopes=["keyguard:admin"], allowed_ips=["192.0.2.0/24"]
    ).token
    async for c in _client(admin_app(guard)):  # the client is 203.0.113.7
        _problem(
            await c.get("/api/keys", headers={"authorization": f"Bearer {token}"}),
            403,
            "ip_not_allowed",
        )


AUTHORIZE = [
    pytest.param(lambda request: True, 200, None, id="sync-true"),
    pytest.param(lambda request: False, 403, "insufficient_scope", id="sync-false"),
    pytest.param(lambda request: None, 403, "insufficient_scope", id="sync-none"),
    pytest.param(lambda request: Principal(who="alice"), 200, None, id="principal"),
]


@pytest.mark.parametrize(("authorize", "status", "code"), AUTHORIZE)
async def test_authorize_callable(
    guard: KeyGuard, authorize: Any, status: int, code: str | None
) -> None:
    async for c in _client(admin_app(guard, authorize=authorize)):
        r = await c.get("/api/keys")  # no key at all: the callable decides
        assert r.status_code == status
        if code:
            _problem(r, status, code)


async def test_async_authorize_reads_the_request_and_may_raise(guard: KeyGuard) -> None:
    async def authorize(request: Request) -> bool:
        if request.cookies.get("session") != "ok":
            raise AuthenticationError("missing_credentials", "Sign in first.")
        return True

    async for c in _client(admin_app(guard, authorize=authorize)):
        doc = _problem(await c.get("/api/keys"), 401, "missing_credentials")
        assert doc["detail"] == "Sign in first."
        c.cookies.set("session", "ok")
        assert (await c.get("/api/keys")).status_code == 200
        # Cookie-based host: unsafe methods need the custom header (CSRF).
        body = {"owner": "acme", "name": "x"}
        _problem(await c.post("/api/keys", json=body), 403, "invalid_request")
        r = await c.post("/api/keys", json=body, headers={"x-requested-with": "keyguard-admin"})
        assert r.status_code == 201


async def test_owner_scoped_mode(guard: KeyGuard) -> None:
    theirs = guard.keys.create(owner="bob", name="bob's").id
    async for c in _client(
        admin_app(guard, authorize=lambda request: request.headers.get("x-user"))
    ):
        c.headers.update({"x-user": "alice", "x-requested-with": "t"})
        r = await c.post("/api/keys", json={"name": "mine"})
        assert r.status_code == 201 and r.json()["key"]["owner"] == "alice"
        mine = r.json()["key"]["id"]
        doc = _problem(
            await c.post("/api/keys", json={"owner": "bob", "name": "x"}),
            422,
            "invalid_key_settings",
        )
        assert doc["field"] == "owner"
        r = await c.get("/api/keys", params={"owner": "bob"})
        assert [k["id"] for k in r.json()["keys"]] == [mine] and r.json()["owner"] == "alice"
        for method, path in [
            ("GET", ""),
            ("PATCH", ""),
            ("POST", "/rotate"),
            ("POST", "/revoke"),
            ("DELETE", ""),
        ]:
            body = {"name": "hijack"} if method == "PATCH" else None
            _problem(
                await c.request(method, f"/api/keys/{theirs}{path}", json=body), 404, "not_found"
            )
        assert (await c.patch(f"/api/keys/{mine}", json={"name": "renamed"})).status_code == 200
        assert (await c.delete(f"/api/keys/{mine}")).status_code == 204
        del c.headers["x-user"]
        _problem(await c.get("/api/keys"), 403, "insufficient_scope")
    assert guard.keys.get(theirs).name == "bob's"


# -- the page and the description ------


async def test_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    del client.headers["authorization"]
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths["/api/keys"]) == {"get", "post"}
    assert {"get", "patch", "delete"} <= set(paths["/api/keys/{key_id}"])
    assert (
        "post" in paths["/api/keys/{key_id}/rotate"]
        and "post" in paths["/api/keys/{key_id}/revoke"]
    )
    assert "422" in paths["/api/keys"]["post"]["responses"]


async def test_page_is_self_contained(guard: KeyGuard) -> None:
    outer = Starlette()
    outer.mount(
        "/keys-admin",
        admin_app(guard, scope_choices=["read", "<b>write</b>"], title="<i>Keys</i>"),
    )
    async for c in _client(outer):
        r = await c.get("/keys-admin/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert r.text.count(f'nonce="{nonce}"') == 3
        assert "http://" not in r.text and "https://" not in r.text and "<b>write</b>" not in r.text
        # scopes reach the page only as JSON (GET /api/scopes), put in as text by the script
        assert '"base": "/keys-admin"' in r.text and "&lt;i&gt;Keys&lt;/i&gt;" in r.text
        assert "<i>" not in r.text
        assert r.headers["x-frame-options"] == "DENY"


_CSS_START = "--fg:#1b1f24;"
PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.mark.parametrize(
    "title",
    ["{{js}}{{config}}", "{{nonce}} {{css}}", "{{title}}"],
)
async def test_page_placeholders_in_title_or_mount_are_not_filled(
    guard: KeyGuard, title: str
) -> None:
    """The template is filled in one pass: a title or mount path that spells a
    placeholder is shown as it is, never filled with the script, config or nonce."""
    mount = "/adm{{js}}{{config}}"
    outer = Starlette()
    outer.mount(mount, admin_app(guard, title=title))
    async for c in _client(outer):
        r = await c.get(mount + "/")
        assert r.status_code == 200, r.text
        html = r.text
        assert html.count("'use strict'") == 1  # the script once, in its own element
        assert html.count("<script") == 2 and html.count("<style") == 1
        assert html.count(_CSS_START) == 1  # the style sheet once
        assert f"<title>{title}</title>" in html and f"<h1>{title}</h1>" in html
        assert '"base": "/adm{{js}}{{config}}"' in html
        nonce = r.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
        assert html.count(nonce) == 3
        assert {k: r.headers[k] for k in PAGE_HEADERS} == PAGE_HEADERS


async def test_every_json_answer_says_nosniff(client: httpx.AsyncClient, guard: KeyGuard) -> None:
    """JSON and problem+json answers carry `X-Content-Type-Options: nosniff`, as the
    page does: success, refusal (401, 404, 405, 422), no content, and the document."""
    created = await _create(client)
    key_id = created["key"]["id"]
    answers = [
        await client.get("/api/keys"),
        await client.post("/api/keys", json={"owner": "acme", "name": "n"}),
        await client.get(f"/api/keys/{key_id}"),
        await client.patch(f"/api/keys/{key_id}", json={"name": "m"}),
        await client.post(f"/api/keys/{key_id}/rotate"),
        await client.post(f"/api/keys/{key_id}/suspend"),
        await client.get("/api/scopes"),
        await client.patch(f"/api/keys/{key_id}", json={"scopes": "x"}),  # 422
        await client.get("/api/keys/nope"),  # 404
        await client.get("/api/nothing"),  # no such route
        await client.put("/api/keys"),  # 405
        await client.get("/api/keys", headers={"authorization": ""}),  # 401
        await client.get("/openapi.json"),
        await client.delete(f"/api/keys/{key_id}"),  # 204
    ]
    statuses = [r.status_code for r in answers]
    assert statuses == [200, 201, 200, 200, 200, 200, 200, 422, 404, 404, 405, 401, 200, 204]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", (r.status_code, r.text)
        if r.status_code != 204:
            assert "json" in r.headers["content-type"]


# -- WSGI ------


def test_admin_wsgi_under_flask(guard: KeyGuard, admin_token: str) -> None:
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = flask.Flask(__name__)
    admin = admin_wsgi(guard)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/keys-admin": admin})  # type: ignore[method-assign]
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as c:
            c.headers["authorization"] = f"Bearer {admin_token}"
            r = c.post("/keys-admin/api/keys", json={"owner": "acme", "name": "flask"})
            assert r.status_code == 201 and r.headers["location"].startswith(
                "/keys-admin/api/keys/"
            )
            key_id = r.json()["key"]["id"]
            assert [
                k["name"]
                for k in c.get("/keys-admin/api/keys", params={"owner": "acme"}).json()["keys"]
            ] == ["flask"]
            doc = _problem(
                c.patch(f"/keys-admin/api/keys/{key_id}", json={"allowed_ips": ["x"]}),
                422,
                "invalid_key_settings",
            )
            assert doc["field"] == "allowed_ips"
            assert c.delete(f"/keys-admin/api/keys/{key_id}").status_code == 204
            _problem(
                c.get("/keys-admin/api/keys", headers={"authorization": ""}),
                401,
                "missing_credentials",
            )
            page = c.get("/keys-admin/")
            assert page.status_code == 200 and '"base": "/keys-admin"' in page.text
    finally:
        admin.close()


# -- audit trail ------


async def test_audit_events_for_management(
    client: httpx.AsyncClient, guard: KeyGuard, admin_token: str, audit_log: list[dict[str, Any]]
) -> None:
    admin_id = guard.parts.tokens.parse(admin_token)[0]  # type: ignore[index]
    created = await _create(client, passphrase="correct horse battery")
    key_id = created["key"]["id"]
    await client.patch(f"/api/keys/{key_id}", json={"allowed_ips": ["10.0.0.0/33"]})
    await client.patch(f"/api/keys/{key_id}", json={"scopes": ["write"]})
    await client.post(f"/api/keys/{key_id}/rotate")
    rotated = (await client.post(f"/api/keys/{key_id}/rotate")).json()["token"]
    await client.post(f"/api/keys/{key_id}/revoke")
    await client.delete(f"/api/keys/{key_id}")
    await client.delete(f"/api/keys/{key_id}")
    await client.get("/api/keys", headers={"authorization": "Bearer " + created["token"]})

    seen = [(e["action"], e["result"]) for e in audit_log]
    assert seen == [
        ("key.create", "ok"),
        ("key.update", "invalid_key_settings"),
        ("key.update", "ok"),
        ("key.rotate", "ok"),
        ("key.rotate", "ok"),
        ("key.revoke", "ok"),
        ("key.delete", "ok"),
        ("key.delete", "not_found"),
        ("request.denied", "invalid_key"),
    ]
    for event in audit_log[:-1]:
        assert event["who"] == f"key:{admin_id}" and event["client_ip"] == "203.0.113.7"
        assert event["key_id"] == key_id and datetime.fromisoformat(event["at"])
    assert audit_log[0]["owner"] == "acme" and "passphrase" in audit_log[0]["fields"]
    assert audit_log[1]["field"] == "allowed_ips"
    denied = audit_log[-1]
    assert denied["key_id"] == key_id and denied["status"] == 401 and denied["path"] == "/api/keys"
    text = json.dumps(audit_log)
    for secret in (created["token"], rotated, admin_token, "correct horse battery"):
        assert secret not in text


async def test_audit_events_for_python_calls_and_doors(
    guard: KeyGuard, audit_log: list[dict[str, Any]]
) -> None:
    issued = guard.keys.create(owner="acme", name="svc", scopes=["read"])

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/v1/x", hello)])
    app.add_middleware(
        KeyGuardMiddleware,
        guard=guard,
    )
    async for c in _client(app):
        assert (
            await c.get("/v1/x", headers={"authorization": f"Bearer {issued.token}"})
        ).status_code == 200
        assert (await c.get("/v1/x")).status_code == 401
        bad = (issued.token or "")[:-1] + ("A" if (issued.token or "")[-1] != "A" else "B")
        assert (await c.get("/v1/x", headers={"authorization": f"Bearer {bad}"})).status_code == 401
    assert [(e["action"], e["result"]) for e in audit_log] == [
        ("key.create", "ok"),
        ("request.denied", "missing_credentials"),
        ("request.denied", "invalid_key"),
    ]
    assert audit_log[0]["who"] is None and audit_log[0]["key_id"] == issued.id
    assert audit_log[1]["client_ip"] == "203.0.113.7" and audit_log[1]["method"] == "GET"
    assert audit_log[2]["key_id"] is None  # checksum broken: no id is believed
    assert issued.token not in json.dumps(audit_log)


def test_audit_for_the_wsgi_door(guard: KeyGuard, audit_log: list[dict[str, Any]]) -> None:
    from keyguard.wsgi import KeyGuardMiddleware as WsgiMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    with httpx.Client(
        transport=httpx.WSGITransport(app=WsgiMiddleware(app, guard=guard)), base_url="http://t"
    ) as c:
        assert c.get("/x", headers={"x-api-key": "kg_garbage"}).status_code == 401
    assert [(e["action"], e["result"], e["path"]) for e in audit_log] == [
        ("request.denied", "invalid_key", "/x")
    ]


# -- Prometheus ------


async def test_prometheus_counters(guard: KeyGuard) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from keyguard.audit import enable_metrics

    registry = prometheus_client.CollectorRegistry()
    assert enable_metrics(guard, registry) is enable_metrics(guard, registry)
    issued = guard.keys.create(owner="acme", name="svc", scopes=["read"])

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/v1/x", hello)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    async for c in _client(app):
        for _ in range(3):
            assert (
                await c.get("/v1/x", headers={"authorization": f"Bearer {issued.token}"})
            ).status_code == 200
        assert (await c.get("/v1/x")).status_code == 401

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("keyguard_requests_total", outcome="allowed", code="") == 3
    assert value("keyguard_requests_total", outcome="denied", code="missing_credentials") == 1
    assert value("keyguard_cache_lookups_total", result="miss") == 1
    assert value("keyguard_cache_lookups_total", result="hit") == 2


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_prometheus_counts_signed_requests_on_the_warm_path(kind: str) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from keyguard.audit import enable_metrics

    from .signing_util import Door, make_guard, signed

    guard = make_guard(abuse={"max_failures": None})
    registry = prometheus_client.CollectorRegistry()
    enable_metrics(guard, registry)
    key = guard.keys.create(owner="acme", name="signer", kind="signing", max_uses=3)
    door, start = Door(kind, guard), guard.clock()
    statuses = []
    for i in range(4):  # the first use loads the key; the rest take the warm path
        headers = signed(key.info.id, key.secret, "GET", "/v1/x", now=start - i / 1000)
        statuses.append((await door.request("GET", "/v1/x", headers=headers)).status_code)
    replay = await door.request("GET", "/v1/x", headers=headers)  # the last one again
    assert replay.json()["code"] == "replayed_request"
    await door.aclose()
    guard.close()

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert statuses == [200, 200, 200, 429]
    assert value("keyguard_requests_total", outcome="allowed", code="") == 3
    assert value("keyguard_requests_total", outcome="denied", code="quota_exhausted") == 1
    assert value("keyguard_requests_total", outcome="denied", code="replayed_request") == 1
    assert value("keyguard_cache_lookups_total", result="miss") == 1
    assert value("keyguard_cache_lookups_total", result="hit") == 4  # one per request


def test_audit_for_flask_require_scopes(audit_log: list[dict[str, Any]]) -> None:
    flask = pytest.importorskip("flask")
    from keyguard.flask import KeyGuardExtension, require_scopes

    app = flask.Flask(__name__)
    app.config["KEYGUARD"] = {"store": "memory://"}
    ext = KeyGuardExtension(app)

    @app.get("/write")
    @require_scopes("write")
    def write() -> str:
        return "ok"

    assert ext.guard is not None
    issued = ext.guard.keys.create(owner="acme", name="ro", scopes=["read"])
    with app.test_client() as c:
        r = c.get("/write", headers={"Authorization": f"Bearer {issued.token}"})
        assert r.status_code == 403
    denied = [e for e in audit_log if e["action"] == "request.denied"]
    assert [(e["result"], e["key_id"], e["path"]) for e in denied] == [
        ("insufficient_scope", issued.id, "/write")
    ]

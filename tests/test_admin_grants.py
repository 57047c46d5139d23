"""No principal widens its own reach (SPEC section 8, issue 15 item 2): every admin
endpoint, in operator mode and in self-service (owner-bound) mode, over HTTP.

Self-service principals grant only their `grantable` scopes (default: the scopes
the guard's rules name), never `keyguard:admin`, a wildcard, or a scope that
implies one; and never see, change or reach another owner's keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from keyguard import KeyGuard
from keyguard.admin import Principal, admin_app

RULES = [
    {"path": "/v1/read/*", "scopes": ["read"]},
    {"path": "/v1/write/*", "methods": ["POST"], "scopes": ["write"]},
    {"path": "/v1/ops/*", "scopes": ["ops", "files:*"]},  # powerful: never a tenant's
]
SETTINGS = {
    "store": "memory://",
    "policy": {"allow_private_ips": True},
    "rules": RULES,
    "scope_implies": {"ops": ["keyguard:admin"]},
}
# Scope lists a self-service principal may never put on a key.
WIDENING = [
    pytest.param(["keyguard:admin"], id="admin-scope"),
    pytest.param(["*"], id="wildcard"),
    pytest.param(["keyguard:*"], id="admin-wildcard"),
    pytest.param(["read:*"], id="prefix-wildcard"),
    pytest.param(["files:*"], id="wildcard-named-in-rules"),
    pytest.param(["ops"], id="implies-admin"),
    pytest.param(["billing"], id="not-grantable"),
    pytest.param(["read", "keyguard:admin"], id="one-bad-among-good"),
]
KEY_ROUTES = [
    pytest.param("GET", "", id="get"),
    pytest.param("PATCH", "", id="update"),
    pytest.param("POST", "/rotate", id="rotate"),
    pytest.param("POST", "/revoke", id="revoke"),
    pytest.param("POST", "/suspend", id="suspend"),
    pytest.param("POST", "/resume", id="resume"),
    pytest.param("DELETE", "", id="delete"),
]


@pytest.fixture
def guard() -> Iterator[KeyGuard]:
    g = KeyGuard(SETTINGS)
    yield g
    g.close()


def snapshot(guard: KeyGuard) -> list[dict[str, Any]]:
    """Every key of every owner, as stored (a change anywhere shows here)."""
    return [k.to_dict() for k in guard.keys.list(include_revoked=True)]


def tenant(request: Request) -> Principal | None:
    user = request.headers.get("x-user")  # (Starlette decodes header values as latin-1)
    if user == "ops":
        return Principal(who="ops")  # an operator, signed in the same way
    if user == "greedy":  # lists powerful scopes itself: they are dropped all the same
        return Principal(who="greedy", owner="greedy", grantable={"read", "keyguard:admin", "*"})
    return Principal(who=f"user:{user}", owner=user) if user else None


@pytest.fixture
async def http(guard: KeyGuard) -> AsyncIterator[httpx.AsyncClient]:
    app = admin_app(guard, authorize=tenant, scope_descriptions={"read": "Read only"})
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.headers["x-requested-with"] = "test"
        yield c


def as_user(user: str) -> dict[str, str]:
    return {"x-user": user}


def refused(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_key_settings" and r.json()["field"] == field


@pytest.mark.parametrize("scopes", WIDENING)
async def test_a_tenant_cannot_create_a_key_with_more_power(
    http: httpx.AsyncClient, guard: KeyGuard, scopes: list[str]
) -> None:
    before = snapshot(guard)
    r = await http.post(
        "/api/keys", json={"name": "mine", "scopes": scopes}, headers=as_user("alice")
    )
    refused(r, "scopes")
    assert snapshot(guard) == before


@pytest.mark.parametrize("scopes", WIDENING)
async def test_a_tenant_cannot_widen_its_key(
    http: httpx.AsyncClient, guard: KeyGuard, scopes: list[str]
) -> None:
    r = await http.post(
        "/api/keys", json={"name": "mine", "scopes": ["read"]}, headers=as_user("alice")
    )
    key_id = r.json()["key"]["id"]
    before = snapshot(guard)
    refused(
        await http.patch(f"/api/keys/{key_id}", json={"scopes": scopes}, headers=as_user("alice")),
        "scopes",
    )
    assert snapshot(guard) == before


@pytest.mark.parametrize("scopes", WIDENING[:6])
async def test_listing_powerful_scopes_in_grantable_does_not_make_them_grantable(
    http: httpx.AsyncClient, guard: KeyGuard, scopes: list[str]
) -> None:
    r = await http.post(
        "/api/keys", json={"name": "x", "scopes": scopes}, headers=as_user("greedy")
    )
    refused(r, "scopes")
    assert guard.keys.list(owner="greedy") == []
    r = await http.get("/api/scopes", headers=as_user("greedy"))
    assert [s["name"] for s in r.json()["scopes"]] == ["read"]


async def test_a_tenant_grants_what_the_rules_name_and_sees_only_that_offered(
    http: httpx.AsyncClient, guard: KeyGuard
) -> None:
    r = await http.post(
        "/api/keys", json={"name": "mine", "scopes": ["read", "write"]}, headers=as_user("alice")
    )
    assert r.status_code == 201 and r.json()["key"]["scopes"] == ["read", "write"]
    r = await http.get("/api/scopes", headers=as_user("alice"))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["scopes"] == [
        {"name": "read", "description": "Read only"},
        {"name": "write", "description": None},
    ]
    assert doc["any"] is False and doc["operator"] is False
    assert (doc["who"], doc["owner"]) == ("user:alice", "alice")


async def test_a_tenant_keeps_scopes_an_operator_gave_but_adds_none(
    http: httpx.AsyncClient, guard: KeyGuard
) -> None:
    key_id = guard.keys.create(owner="alice", name="special", scopes=["billing", "read"]).id
    h = as_user("alice")
    r = await http.patch(f"/api/keys/{key_id}", json={"scopes": ["billing"]}, headers=h)
    assert r.status_code == 200 and r.json()["scopes"] == ["billing"]  # narrowing is fine
    refused(await http.patch(f"/api/keys/{key_id}", json={"scopes": ["x"]}, headers=h), "scopes")


@pytest.mark.parametrize(("method", "path"), KEY_ROUTES)
async def test_a_tenant_cannot_reach_another_owners_key(
    http: httpx.AsyncClient, guard: KeyGuard, method: str, path: str
) -> None:
    bobs = guard.keys.create(owner="bob", name="bob's", scopes=["read"]).id
    guard.keys.suspend(guard.keys.create(owner="bob", name="paused").id)
    before = snapshot(guard)
    body = {"name": "hijack", "scopes": ["read"]} if method == "PATCH" else None
    r = await http.request(method, f"/api/keys/{bobs}{path}", json=body, headers=as_user("alice"))
    assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    assert bobs not in r.text
    assert snapshot(guard) == before
    # The same route works for the owner, so the 404 is about ownership alone.
    r = await http.request(method, f"/api/keys/{bobs}{path}", json=body, headers=as_user("bob"))
    assert r.status_code in (200, 204), r.text


async def test_a_tenant_lists_and_creates_only_for_itself(
    http: httpx.AsyncClient, guard: KeyGuard
) -> None:
    guard.keys.create(owner="bob", name="bob's")
    h = as_user("alice")
    mine = (await http.post("/api/keys", json={"name": "mine"}, headers=h)).json()["key"]
    assert mine["owner"] == "alice"
    for params in ({}, {"owner": "bob"}, {"owner": "bob", "include_revoked": "true"}):
        r = await http.get("/api/keys", params=params, headers=h)
        assert [k["id"] for k in r.json()["keys"]] == [mine["id"]]
        assert r.json()["operator"] is False and r.json()["owner"] == "alice"
    before = snapshot(guard)
    refused(await http.post("/api/keys", json={"name": "x", "owner": "bob"}, headers=h), "owner")
    refused(await http.patch(f"/api/keys/{mine['id']}", json={"owner": "bob"}, headers=h), "owner")
    assert snapshot(guard) == before


@pytest.mark.parametrize("scopes", WIDENING)
async def test_an_operator_may_grant_any_scope(
    http: httpx.AsyncClient, guard: KeyGuard, scopes: list[str]
) -> None:
    r = await http.post(
        "/api/keys", json={"owner": "bob", "name": "k", "scopes": scopes}, headers=as_user("ops")
    )
    assert r.status_code == 201 and r.json()["key"]["scopes"] == scopes
    doc = (await http.get("/api/scopes", headers=as_user("ops"))).json()
    assert doc["any"] is True and doc["operator"] is True and doc["owner"] is None
    assert [s["name"] for s in doc["scopes"]] == ["read", "write", "ops", "files:*"]


@pytest.mark.parametrize(("method", "path"), KEY_ROUTES)
async def test_an_operator_reaches_every_owner(
    http: httpx.AsyncClient, guard: KeyGuard, method: str, path: str
) -> None:
    bobs = guard.keys.create(owner="bob", name="bob's").id
    body = {"name": "renamed"} if method == "PATCH" else None
    r = await http.request(method, f"/api/keys/{bobs}{path}", json=body, headers=as_user("ops"))
    assert r.status_code in (200, 204), r.text
    r = await http.get("/api/keys", params={"owner": "bob"}, headers=as_user("ops"))
    assert r.json()["operator"] is True and r.json()["who"] == "ops"


async def test_an_operator_principal_may_be_narrowed(guard: KeyGuard) -> None:
    app = admin_app(guard, authorize=lambda r: Principal("support", grantable=["read"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.headers["x-requested-with"] = "t"
        body = {"owner": "bob", "name": "k"}
        assert (await c.post("/api/keys", json={**body, "scopes": ["read"]})).status_code == 201
        refused(await c.post("/api/keys", json={**body, "scopes": ["write"]}), "scopes")
        assert (await c.get("/api/scopes")).json()["scopes"] == [
            {"name": "read", "description": None}
        ]


async def test_an_admin_key_is_an_operator(guard: KeyGuard) -> None:
    token = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    app = admin_app(guard)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.headers["authorization"] = f"Bearer {token}"
        r = await c.post("/api/keys", json={"owner": "x", "name": "n", "scopes": ["*"]})
        assert r.status_code == 201
        doc = (await c.get("/api/keys")).json()
        assert doc["operator"] is True and doc["who"].startswith("key:")


def test_principal_grantable_is_a_collection() -> None:
    assert Principal("a", owner="a", grantable=["x", "x"]).grantable == frozenset({"x"})
    with pytest.raises(TypeError):
        Principal("a", owner="a", grantable="read")  # type: ignore[arg-type]


# -- what an outside review found (kept as regressions) ----------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("rate_limit", "1000000/second", id="rate-limit"),
        pytest.param("rate_limit", None, id="no-rate-limit"),
        pytest.param("max_uses", 10**9, id="quota"),
        pytest.param("metadata", {"plan": "enterprise"}, id="metadata"),
    ],
)
async def test_a_tenant_cannot_set_what_the_operator_sets(
    http: httpx.AsyncClient, guard: KeyGuard, field: str, value: Any
) -> None:
    """Limits, quotas and metadata are the operator's: a tenant neither creates a key
    with them nor changes them (the guard's default rate limit holds). A null on
    create is the default, no setting (`test_a_null_operator_field_sets_nothing`);
    on update it would remove the key's limit: refused."""
    before = snapshot(guard)
    if value is not None:
        r = await http.post("/api/keys", json={"name": "k", field: value}, headers=as_user("alice"))
        refused(r, field)
        assert snapshot(guard) == before
    mine = guard.keys.create(owner="alice", name="mine", rate_limit="5/minute", max_uses=3)
    if field != "max_uses":  # (update has no max_uses field at all: 422 names it too)
        r = await http.patch(f"/api/keys/{mine.id}", json={field: value}, headers=as_user("alice"))
        refused(r, field)
    assert guard.keys.get(mine.id).rate_limit == "5/minute"
    ops = await http.post(
        "/api/keys", json={"owner": "alice", "name": "k", field: value}, headers=as_user("ops")
    )
    assert ops.status_code == 201  # an operator may


async def test_a_null_operator_field_sets_nothing(http: httpx.AsyncClient, guard: KeyGuard) -> None:
    """A tenant sending an operator-only field as null (its default, as clients
    generated from the document do) sets nothing: accepted on create, and on
    update where the key holds none; where it holds a limit or metadata, null
    would remove it: 422 naming the field, nothing changed."""
    nulls = {"rate_limit": None, "max_uses": None, "metadata": None}
    r = await http.post("/api/keys", json={"name": "k", **nulls}, headers=as_user("alice"))
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert (key["rate_limit"], key["max_uses"], key["metadata"]) == (None, None, {})
    plain = {"rate_limit": None, "metadata": None, "name": "renamed"}
    r = await http.patch(f"/api/keys/{key['id']}", json=plain, headers=as_user("alice"))
    assert r.status_code == 200 and r.json()["name"] == "renamed", r.text
    held = guard.keys.create(owner="alice", name="held", rate_limit="5/minute", metadata={"p": 1})
    for field in ("rate_limit", "metadata"):
        r = await http.patch(f"/api/keys/{held.id}", json={field: None}, headers=as_user("alice"))
        refused(r, field)
    info = guard.keys.get(held.id)
    assert info.rate_limit == "5/minute" and info.metadata == {"p": 1}
    r = await http.patch(f"/api/keys/{held.id}", json={"rate_limit": None}, headers=as_user("ops"))
    assert r.status_code == 200 and r.json()["rate_limit"] is None  # an operator may


async def test_an_owner_with_white_space_is_not_stripped_into_another_owner(
    http: httpx.AsyncClient, guard: KeyGuard
) -> None:
    """A principal whose owner is "alice" plus a no-break space is not alice."""
    headers = {"x-user": "alice\u00a0".encode("latin-1")}  # as a header carries it
    r = await http.post("/api/keys", json={"name": "k"}, headers=headers)  # type: ignore[dict-item]
    refused(r, "owner")
    assert guard.keys.list(owner="alice") == []

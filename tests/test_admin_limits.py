"""The limits an operator puts on a key hold against its owner (SPEC sections 3
and 8; the attack on the admin surface, items 1-3), over HTTP on the admin API
in both modes: key mode (a `keyguard:admin` key, an operator) and host mode
(`authorize`: the operator "ops" and the tenants "alice" and "bob").

- A rotation's grace is at most 30 days, for every caller, and a refused grace
  spends no step-up code.
- A tenant's scopes are checked against the key as stored, inside the store's
  atomic change: a scope an operator removes after the tenant's request was read
  is not added back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from keyguard import KeyGuard
from keyguard.admin import Principal, admin_app

from .kgutil import Clock

IP = "203.0.113.7"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock: Clock) -> Iterator[KeyGuard]:
    g = KeyGuard(
        {"store": "memory://", "rules": [{"path": "/v1/*", "scopes": ["read"]}]}, clock=clock
    )
    yield g
    g.close()


def principal(request: Request) -> Principal | None:
    user = request.headers.get("x-user")
    if user == "ops":
        return Principal(who="ops")
    return Principal(who=f"user:{user}", owner=user) if user else None


class Asked:
    """A step-up `confirm` that says yes and counts what it was asked."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def __call__(self, request: Request, action: str) -> bool:
        self.actions.append(action)
        return True


@pytest.fixture
def asked() -> Asked:
    return Asked()


async def _client(app: Any, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(IP, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.headers.update(headers)
        yield c


@pytest.fixture
async def host(guard: KeyGuard, asked: Asked) -> AsyncIterator[httpx.AsyncClient]:
    """Host mode: `x-user: ops` is an operator, any other user a tenant."""
    async for c in _client(
        admin_app(guard, authorize=principal, confirm=asked), **{"x-requested-with": "t"}
    ):
        yield c


@pytest.fixture
async def keymode(guard: KeyGuard, asked: Asked) -> AsyncIterator[httpx.AsyncClient]:
    """Key mode: a `keyguard:admin` key, an operator."""
    token = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    async for c in _client(admin_app(guard, confirm=asked), authorization=f"Bearer {token}"):
        yield c


OPS = {"x-user": "ops"}
ALICE = {"x-user": "alice"}


def refused(r: httpx.Response, field: str, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["code"] == "invalid_key_settings" and doc["field"] == field, doc
    assert r.headers["content-type"] == "application/problem+json"
    return dict(doc)


def stored(guard: KeyGuard, key_id: str) -> Any:
    return guard.store.get(key_id)


# -- rotation grace: at most 30 days ------------------------------------------------

TOO_LONG = [
    pytest.param("31d", id="31d"),
    pytest.param("721h", id="721h"),
    pytest.param(30 * 86400 + 1, id="30d+1s"),
    pytest.param("36500d", id="100y"),
    pytest.param(3_153_600_000, id="100y-seconds"),
    pytest.param("5199w", id="5199w"),
]


@pytest.mark.parametrize("grace", TOO_LONG)
@pytest.mark.parametrize("who", ["tenant", "operator", "admin-key"])
async def test_a_grace_over_30_days_is_refused_for_everyone(
    guard: KeyGuard,
    host: httpx.AsyncClient,
    keymode: httpx.AsyncClient,
    asked: Asked,
    grace: Any,
    who: str,
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    before = stored(guard, key.id)
    c, h = {"tenant": (host, ALICE), "operator": (host, OPS), "admin-key": (keymode, {})}[who]
    r = await c.post(f"/api/keys/{key.id}/rotate", json={"grace": grace}, headers=h)
    assert "30 days" in refused(r, "grace")["detail"]
    assert stored(guard, key.id) == before  # nothing changed
    assert asked.actions == []  # refused before a step-up code is asked
    assert guard.verify(key.token or "", client_ip=IP).id == key.id


@pytest.mark.parametrize("grace", ["30d", "720h", 30 * 86400, "4w", 0, "1h"])
@pytest.mark.parametrize("who", ["tenant", "operator", "admin-key"])
async def test_a_grace_of_up_to_30_days_is_taken(
    guard: KeyGuard,
    host: httpx.AsyncClient,
    keymode: httpx.AsyncClient,
    clock: Clock,
    grace: Any,
    who: str,
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    c, h = {"tenant": (host, ALICE), "operator": (host, OPS), "admin-key": (keymode, {})}[who]
    r = await c.post(f"/api/keys/{key.id}/rotate", json={"grace": grace}, headers=h)
    assert r.status_code == 200, r.text
    record = stored(guard, key.id)
    if grace == 0:
        assert record.previous_valid_until is None
    else:
        assert 0 < record.previous_valid_until - clock() <= 30 * 86400


# -- grants checked inside the atomic change -----------------------------------------


class Meanwhile(Asked):
    """A `confirm` that lets an operator change the key between the admin app's
    read (its early checks) and the change itself: the race window, made certain."""

    def __init__(self, guard: KeyGuard) -> None:
        super().__init__()
        self.guard = guard
        self.then: list[Any] = []

    def __call__(self, request: Request, action: str) -> bool:
        super().__call__(request, action)
        while self.then:
            self.then.pop(0)()
        return True


@pytest.fixture
async def racy(guard: KeyGuard) -> AsyncIterator[tuple[httpx.AsyncClient, Meanwhile]]:
    meanwhile = Meanwhile(guard)
    app = admin_app(guard, authorize=principal, confirm=meanwhile)
    async for c in _client(app, **{"x-requested-with": "t"}):
        yield c, meanwhile


async def test_a_scope_an_operator_removes_meanwhile_is_not_added_back(
    guard: KeyGuard, racy: tuple[httpx.AsyncClient, Meanwhile]
) -> None:
    c, meanwhile = racy
    key = guard.keys.create(owner="alice", name="k", scopes=["read", "billing"])
    # The tenant keeps "billing" (held when its request is read); the operator
    # removes it before the change is made: the change is refused, nothing added.
    meanwhile.then.append(lambda: guard.keys.update(key.id, scopes=["read"]))
    r = await c.patch(
        f"/api/keys/{key.id}", json={"scopes": ["read", "billing"], "name": "x"}, headers=ALICE
    )
    refused(r, "scopes")
    assert meanwhile.actions == ["update"]
    info = guard.keys.get(key.id)
    assert info.scopes == ("read",) and info.name == "k"
    # Without the operator's change in between, keeping a held scope is fine.
    r = await c.patch(f"/api/keys/{key.id}", json={"scopes": ["read"]}, headers=ALICE)
    assert r.status_code == 200 and r.json()["scopes"] == ["read"]


async def test_an_operator_is_not_bound_by_grants_in_the_race_either(
    guard: KeyGuard, racy: tuple[httpx.AsyncClient, Meanwhile]
) -> None:
    c, meanwhile = racy
    key = guard.keys.create(owner="alice", name="k", scopes=["read", "billing"])
    meanwhile.then.append(lambda: guard.keys.update(key.id, scopes=["read"]))
    r = await c.patch(f"/api/keys/{key.id}", json={"scopes": ["read", "billing"]}, headers=OPS)
    assert r.status_code == 200 and r.json()["scopes"] == ["read", "billing"]


async def test_a_tenant_may_still_narrow_and_rename_in_the_race(
    guard: KeyGuard, racy: tuple[httpx.AsyncClient, Meanwhile]
) -> None:
    c, meanwhile = racy
    key = guard.keys.create(owner="alice", name="k", scopes=["read", "billing"])
    meanwhile.then.append(lambda: guard.keys.update(key.id, name="renamed by ops"))
    r = await c.patch(f"/api/keys/{key.id}", json={"scopes": ["billing"]}, headers=ALICE)
    assert r.status_code == 200 and r.json()["scopes"] == ["billing"]
    assert r.json()["name"] == "renamed by ops"

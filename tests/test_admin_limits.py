"""The limits an operator puts on a key hold against its owner (SPEC sections 3
and 8; the attack on the admin surface, items 1-3), over HTTP on the admin API
in both modes: key mode (a `keyguard:admin` key, an operator) and host mode
(`authorize`: the operator "ops" and the tenants "alice" and "bob").

- A rotation's grace is at most 30 days, for every caller, and a refused grace
  spends no step-up code.
- A tenant's scopes are checked against the key as stored, inside the store's
  atomic change: a scope an operator removes after the tenant's request was read
  is not added back.
- A tenant may move its key's expiry earlier, never later nor remove it (422
  naming `expires_at`); an operator may. A tenant may suspend and resume its own
  key, but not resume a key an operator suspended (422 naming `key`); the key
  says who suspended it (`suspended_by`), in every backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from keyguard import KeyGuard
from keyguard.admin import Principal, admin_app

from .kgutil import DAY_S, Clock
from .test_stores import BACKENDS, store_url

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


# -- a tenant does not lift the operator's expiry --------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def trial(guard: KeyGuard) -> Any:
    """What an operator issues: a 7-day trial key with an allowlist and a quota."""
    return guard.keys.create(
        owner="alice",
        name="trial",
        scopes=["read"],
        allowed_ips=[IP],
        expires_in=7 * DAY_S,
        max_uses=100,
    )


@pytest.mark.parametrize(
    "later",
    [
        pytest.param(None, id="removed"),
        pytest.param(8 * DAY_S, id="a-day-later"),
        pytest.param(36_500 * DAY_S, id="a-century-later"),
        pytest.param(7 * DAY_S + 1, id="a-second-later"),
    ],
)
async def test_a_tenant_cannot_lengthen_or_remove_an_expiry(
    guard: KeyGuard, host: httpx.AsyncClient, asked: Asked, clock: Clock, later: float | None
) -> None:
    key = trial(guard)
    before = stored(guard, key.id)
    body = {"expires_at": None if later is None else iso(clock() + later)}
    r = await host.patch(f"/api/keys/{key.id}", json=body, headers=ALICE)
    assert "only an operator can extend" in refused(r, "expires_at")["detail"]
    assert stored(guard, key.id) == before
    assert asked.actions == []  # refused before a step-up code is asked


@pytest.mark.parametrize("client", ["host", "keymode"])
async def test_an_operator_may_lengthen_or_remove_an_expiry(
    guard: KeyGuard,
    host: httpx.AsyncClient,
    keymode: httpx.AsyncClient,
    clock: Clock,
    client: str,
) -> None:
    key = trial(guard)
    c, h = (host, OPS) if client == "host" else (keymode, {})
    later = clock() + 30 * DAY_S
    r = await c.patch(f"/api/keys/{key.id}", json={"expires_at": iso(later)}, headers=h)
    assert r.status_code == 200 and stored(guard, key.id).expires_at == later
    r = await c.patch(f"/api/keys/{key.id}", json={"expires_at": None}, headers=h)
    assert r.status_code == 200 and r.json()["expires_at"] is None


async def test_a_tenant_may_shorten_an_expiry_or_set_the_same(
    guard: KeyGuard, host: httpx.AsyncClient, clock: Clock
) -> None:
    key = trial(guard)
    shown = (await host.get(f"/api/keys/{key.id}", headers=ALICE)).json()["expires_at"]
    r = await host.patch(f"/api/keys/{key.id}", json={"expires_at": shown}, headers=ALICE)
    assert r.status_code == 200 and r.json()["expires_at"] == shown  # as read: not later
    sooner = clock() + DAY_S
    r = await host.patch(f"/api/keys/{key.id}", json={"expires_at": iso(sooner)}, headers=ALICE)
    assert r.status_code == 200 and stored(guard, key.id).expires_at == sooner
    r = await host.patch(  # and not back again
        f"/api/keys/{key.id}", json={"expires_at": iso(clock() + 2 * DAY_S)}, headers=ALICE
    )
    refused(r, "expires_at")


async def test_a_tenant_may_give_an_expiry_to_a_key_without_one_but_not_take_it_back(
    guard: KeyGuard, host: httpx.AsyncClient, clock: Clock
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    r = await host.patch(
        f"/api/keys/{key.id}", json={"expires_at": iso(clock() + 30 * DAY_S)}, headers=ALICE
    )
    assert r.status_code == 200
    refused(
        await host.patch(f"/api/keys/{key.id}", json={"expires_at": None}, headers=ALICE),
        "expires_at",
    )
    r = await host.patch(f"/api/keys/{key.id}", json={"expires_at": None}, headers=OPS)
    assert r.status_code == 200 and r.json()["expires_at"] is None


async def test_a_tenant_cannot_revive_an_expired_key(
    guard: KeyGuard, host: httpx.AsyncClient, clock: Clock
) -> None:
    key = trial(guard)
    clock.advance(8 * DAY_S)
    r = await host.patch(
        f"/api/keys/{key.id}", json={"expires_at": iso(clock() + DAY_S)}, headers=ALICE
    )
    refused(r, "expires_at")
    assert guard.keys.get(key.id).status(datetime.fromtimestamp(clock(), UTC)) == "expired"


async def test_an_expiry_an_operator_shortens_meanwhile_holds(
    guard: KeyGuard, racy: tuple[httpx.AsyncClient, Meanwhile], clock: Clock
) -> None:
    """The tenant asks for day 5 (earlier than day 7, as read); the operator moves the
    key to day 2 before the change is made: day 5 would lengthen it, so it is refused."""
    c, meanwhile = racy
    key = trial(guard)
    day2 = clock() + 2 * DAY_S
    meanwhile.then.append(
        lambda: guard.keys.update(key.id, expires_at=datetime.fromtimestamp(day2, UTC))
    )
    r = await c.patch(
        f"/api/keys/{key.id}", json={"expires_at": iso(clock() + 5 * DAY_S)}, headers=ALICE
    )
    refused(r, "expires_at")
    assert meanwhile.actions == ["update"] and stored(guard, key.id).expires_at == day2


async def test_the_attackers_trial_key(guard: KeyGuard, host: httpx.AsyncClient) -> None:
    """/tmp/attack-admin/t2e_operator_limits.py: the operator's 7-day trial, its
    expiry cleared or moved to 2120 by the tenant."""
    r = await host.post(
        "/api/keys",
        headers=OPS,
        json={
            "name": "trial",
            "owner": "alice",
            "scopes": ["read"],
            "allowed_ips": ["203.0.113.0/24"],
            "expires_in": "7d",
            "max_uses": 100,
        },
    )
    key = r.json()["key"]
    for expires_at in (None, "2120-01-01T00:00:00Z"):
        r = await host.patch(
            f"/api/keys/{key['id']}", json={"expires_at": expires_at}, headers=ALICE
        )
        refused(r, "expires_at")
    assert (await host.get(f"/api/keys/{key['id']}", headers=ALICE)).json() == key


# -- a tenant does not resume an operator's suspension -----------------------------------


async def suspend(c: httpx.AsyncClient, key_id: str, h: dict[str, str]) -> dict[str, Any]:
    r = await c.post(f"/api/keys/{key_id}/suspend", headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("by", ["host-operator", "admin-key", "python"])
async def test_a_tenant_cannot_resume_what_an_operator_suspended(
    guard: KeyGuard,
    host: httpx.AsyncClient,
    keymode: httpx.AsyncClient,
    asked: Asked,
    by: str,
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    if by == "python":
        guard.keys.suspend(key.id)
    else:
        c, h = (host, OPS) if by == "host-operator" else (keymode, {})
        assert (await suspend(c, key.id, h))["suspended_by"] == "operator"
    asked.actions.clear()
    shown = (await host.get(f"/api/keys/{key.id}", headers=ALICE)).json()
    assert shown["status"] == "suspended" and shown["suspended_by"] == "operator"
    before = stored(guard, key.id)
    r = await host.post(f"/api/keys/{key.id}/resume", headers=ALICE)
    assert "only an operator can resume it" in refused(r, "key")["detail"]
    assert stored(guard, key.id) == before and asked.actions == []
    # Suspending it again as the tenant changes nothing: still the operator's.
    assert (await suspend(host, key.id, ALICE))["suspended_by"] == "operator"
    refused(await host.post(f"/api/keys/{key.id}/resume", headers=ALICE), "key")
    # An operator may resume it, in either mode.
    c, h = (keymode, {}) if by == "host-operator" else (host, OPS)
    r = await c.post(f"/api/keys/{key.id}/resume", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert r.json()["suspended_by"] is None


async def test_a_tenant_suspends_and_resumes_its_own_key(
    guard: KeyGuard, host: httpx.AsyncClient
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    assert (await suspend(host, key.id, ALICE))["suspended_by"] == "owner"
    listed = (await host.get("/api/keys", headers=OPS)).json()["keys"]
    assert [k["suspended_by"] for k in listed if k["id"] == key.id] == ["owner"]
    r = await host.post(f"/api/keys/{key.id}/resume", headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert guard.verify(key.token or "", client_ip=IP).id == key.id


@pytest.mark.parametrize("client", ["host", "keymode"])
async def test_an_operators_suspension_takes_over_the_owners(
    guard: KeyGuard, host: httpx.AsyncClient, keymode: httpx.AsyncClient, client: str
) -> None:
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    first = await suspend(host, key.id, ALICE)
    c, h = (host, OPS) if client == "host" else (keymode, {})
    taken = await suspend(c, key.id, h)
    assert taken["suspended_by"] == "operator" and taken["suspended_at"] == first["suspended_at"]
    refused(await host.post(f"/api/keys/{key.id}/resume", headers=ALICE), "key")


async def test_a_suspension_an_operator_takes_over_meanwhile_holds(
    guard: KeyGuard, racy: tuple[httpx.AsyncClient, Meanwhile]
) -> None:
    c, meanwhile = racy
    key = guard.keys.create(owner="alice", name="k", allowed_ips=[IP])
    guard.keys.suspend(key.id, by_owner=True)
    meanwhile.then.append(lambda: guard.keys.suspend(key.id))  # after the app's read
    refused(await c.post(f"/api/keys/{key.id}/resume", headers=ALICE), "key")
    assert meanwhile.actions == ["resume"]
    assert guard.keys.get(key.id).suspended_by == "operator"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_who_suspended_is_kept_in_every_backend(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    for url in store_url(backend, request, tmp_path):
        guard = KeyGuard({"store": url})
        try:
            app = admin_app(guard, authorize=principal)
            async for c in _client(app, **{"x-requested-with": "t"}):
                mine = guard.keys.create(owner="alice", name="mine", allowed_ips=[IP])
                held = guard.keys.create(owner="alice", name="held", allowed_ips=[IP])
                assert (await suspend(c, mine.id, ALICE))["suspended_by"] == "owner"
                assert (await suspend(c, held.id, OPS))["suspended_by"] == "operator"
                record = guard.store.get(mine.id)
                assert record is not None and record.suspended_by_owner is True
                listed = {k.id: k.suspended_by for k in guard.keys.list(owner="alice")}
                assert listed == {mine.id: "owner", held.id: "operator"}
                refused(await c.post(f"/api/keys/{held.id}/resume", headers=ALICE), "key")
                r = await c.post(f"/api/keys/{mine.id}/resume", headers=ALICE)
                assert r.status_code == 200 and r.json()["suspended_by"] is None
                record = guard.store.get(mine.id)
                assert record is not None and record.suspended_by_owner is False
        finally:
            guard.close()

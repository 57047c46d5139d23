"""Key lifecycle (SPEC section 3), sync and async twins, and the key policies."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyguard import (
    AuthenticationError,
    InvalidKeySettings,
    KeyGuard,
    KeyLimitExceeded,
    KeyNotFound,
)
from keyguard.tokens import TokenParser

from .kgutil import DAY_S, Clock, other_secret

PUBLIC_IP = "8.8.8.8"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/keys.db"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(store_url: str, clock: Clock) -> Iterator[KeyGuard]:
    g = KeyGuard({"store": store_url, "pepper": "p" * 32}, clock=clock)
    yield g
    g.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def op(mode: str, guard: KeyGuard, method: str, /, *args: Any, **kwargs: Any) -> Any:
    """Call guard.keys.<method> or its async twin guard.keys.a<method>."""
    if mode == "sync":
        return getattr(guard.keys, method)(*args, **kwargs)
    return await getattr(guard.keys, "a" + method)(*args, **kwargs)


def code_of(guard: KeyGuard, token: str, **kwargs: Any) -> str:
    try:
        guard.verify(token, **kwargs)
    except AuthenticationError as exc:
        return exc.code
    except Exception as exc:  # AuthorizationError and others
        return getattr(exc, "code", type(exc).__name__)
    return "ok"


async def test_create_shows_token_once(mode: str, guard: KeyGuard) -> None:
    issued = await op(
        mode, guard, "create", owner="acme", name="ci", scopes=["read"], metadata={"team": "x"}
    )
    assert issued.token and issued.secret is None
    assert issued.token not in repr(issued)
    info = issued.info
    assert (info.owner, info.name, info.kind, info.scopes) == ("acme", "ci", "bearer", ("read",))
    assert info.metadata == {"team": "x"} and not info.has_passphrase and info.revoked_at is None
    assert info.hint.startswith("kg_") and info.hint.endswith(issued.token[-4:])
    assert guard.verify(issued.token).id == info.id
    fetched = await op(mode, guard, "get", info.id)
    assert (
        fetched.id == info.id
        and issued.token not in repr(fetched)
        and issued.token not in str(fetched.to_dict())
    )


async def test_store_file_never_holds_token_secret_or_passphrase(mode: str, tmp_path: Path) -> None:
    g = KeyGuard({"store": f"sqlite:///{tmp_path}/k.db"})
    issued = await op(mode, g, "create", owner="o", name="n", passphrase="correct horse battery")
    rotated = await op(mode, g, "rotate", issued.id, grace=timedelta(hours=1))
    _, secret = TokenParser("kg").parse(issued.token)  # type: ignore[misc]
    _, secret2 = TokenParser("kg").parse(rotated.token)  # type: ignore[misc]
    g.verify(rotated.token, passphrase="correct horse battery")
    g.close()
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        for needle in (issued.token, secret, rotated.token, secret2, "correct horse battery"):
            assert needle.encode() not in data, (path.name, "holds a secret")


async def test_get_unknown(mode: str, guard: KeyGuard) -> None:
    with pytest.raises(KeyNotFound):
        await op(mode, guard, "get", "A" * 16)


async def test_list_sorted_owner_filter_and_hints_never_authenticate(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    made = []
    for i, owner in enumerate(["a", "b", "a", "b"]):
        made.append(await op(mode, guard, "create", owner=owner, name=f"k{i}"))
        clock.advance(1)
    listed = await op(mode, guard, "list")
    assert [k.id for k in listed] == [m.id for m in made]
    assert [k.name for k in await op(mode, guard, "list", owner="b")] == ["k1", "k3"]
    await op(mode, guard, "revoke", made[0].id)
    assert made[0].id not in [k.id for k in await op(mode, guard, "list")]
    assert made[0].id in [k.id for k in await op(mode, guard, "list", include_revoked=True)]
    for key in listed:
        assert code_of(guard, key.hint) == "invalid_key"
        assert code_of(guard, f"kg_{key.id}_" + key.hint[-4:]) == "invalid_key"
        for value in key.to_dict().values():
            assert code_of(guard, str(value)) == "invalid_key"


async def test_update_fields(mode: str, guard: KeyGuard, clock: Clock) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n", scopes=["read"])
    token = issued.token
    assert code_of(guard, token, scopes=["write"]) == "insufficient_scope"
    info = await op(mode, guard, "update", issued.id, name="renamed", scopes=["read", "write"])
    assert (info.name, info.scopes) == ("renamed", ("read", "write"))
    assert code_of(guard, token, scopes=["write"]) == "ok"  # takes effect at once
    info = await op(mode, guard, "update", issued.id, allowed_ips=[PUBLIC_IP])
    assert info.allowed_ips == ("8.8.8.8/32",) and info.expires_at is not None
    assert code_of(guard, token, client_ip="1.1.1.1") == "ip_not_allowed"
    assert code_of(guard, token, client_ip=PUBLIC_IP) == "ok"
    when = datetime.fromtimestamp(clock() + 10 * 86400, UTC)
    info = await op(mode, guard, "update", issued.id, expires_at=when)
    assert info.expires_at == when
    clock.advance(11 * 86400)
    assert code_of(guard, token, client_ip=PUBLIC_IP) == "expired_key"
    assert code_of(guard, other_secret(token), client_ip=PUBLIC_IP) == "invalid_key"


async def test_update_unknown(mode: str, guard: KeyGuard) -> None:
    with pytest.raises(KeyNotFound):
        await op(mode, guard, "update", "A" * 16, name="x")


async def test_revoke(mode: str, guard: KeyGuard) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n")
    assert code_of(guard, issued.token) == "ok"  # cached now
    info = await op(mode, guard, "revoke", issued.id)
    assert info.revoked_at is not None
    assert code_of(guard, issued.token) == "revoked_key"
    # the code is told only to a caller who proves the secret
    assert code_of(guard, other_secret(issued.token)) == "invalid_key"
    again = await op(mode, guard, "revoke", issued.id)
    assert again.revoked_at == info.revoked_at


async def test_delete(mode: str, guard: KeyGuard) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n")
    assert code_of(guard, issued.token) == "ok"
    assert await op(mode, guard, "delete", issued.id) is None
    assert code_of(guard, issued.token) == "invalid_key"
    with pytest.raises(KeyNotFound):
        await op(mode, guard, "get", issued.id)
    with pytest.raises(KeyNotFound):
        await op(mode, guard, "delete", issued.id)


async def test_rotate_with_grace(mode: str, guard: KeyGuard, clock: Clock) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n")
    old = issued.token
    assert code_of(guard, old) == "ok"
    rotated = await op(mode, guard, "rotate", issued.id, grace=timedelta(hours=1))
    assert rotated.id == issued.id and rotated.token != old
    assert code_of(guard, rotated.token) == "ok"
    clock.advance(3599)
    assert code_of(guard, old) == "ok"
    clock.advance(2)
    assert code_of(guard, old) == "invalid_key"
    assert code_of(guard, rotated.token) == "ok"
    # a second rotation: the first token is gone for good, the second in grace
    third = await op(mode, guard, "rotate", issued.id, grace=60)
    assert code_of(guard, old) == "invalid_key"
    assert code_of(guard, rotated.token) == "ok"
    assert code_of(guard, third.token) == "ok"


async def test_rotate_without_grace(mode: str, guard: KeyGuard) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n")
    rotated = await op(mode, guard, "rotate", issued.id)
    assert code_of(guard, issued.token) == "invalid_key"
    assert code_of(guard, rotated.token) == "ok"


async def test_revoked_after_rotate(mode: str, guard: KeyGuard, clock: Clock) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n")
    rotated = await op(mode, guard, "rotate", issued.id, grace=timedelta(minutes=5))
    await op(mode, guard, "revoke", issued.id)
    assert code_of(guard, rotated.token) == "revoked_key"
    assert code_of(guard, issued.token) == "revoked_key"  # old secret still proves, in grace
    clock.advance(301)
    assert code_of(guard, issued.token) == "invalid_key"  # grace over: not proven
    with pytest.raises(InvalidKeySettings):
        await op(mode, guard, "rotate", issued.id)


async def test_rotate_unknown(mode: str, guard: KeyGuard) -> None:
    with pytest.raises(KeyNotFound):
        await op(mode, guard, "rotate", "A" * 16)


async def test_passphrase(mode: str, guard: KeyGuard) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n", passphrase="open sesame 42")
    assert issued.info.has_passphrase
    assert code_of(guard, issued.token) == "invalid_passphrase"
    assert code_of(guard, issued.token, passphrase="open sesame 43") == "invalid_passphrase"
    assert code_of(guard, issued.token, passphrase="open sesame 42") == "ok"
    assert code_of(guard, other_secret(issued.token), passphrase="open sesame 42") == "invalid_key"


async def test_expiry(mode: str, guard: KeyGuard, clock: Clock) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n", expires_in=timedelta(days=1))
    assert issued.info.expires_at == datetime.fromtimestamp(clock() + 86400, UTC)
    clock.advance(86399)
    assert code_of(guard, issued.token) == "ok"
    clock.advance(1)
    assert code_of(guard, issued.token) == "expired_key"
    assert code_of(guard, other_secret(issued.token)) == "invalid_key"


# -- policies -------------------------------------------------------------------


async def test_unrestricted_cap(mode: str, guard: KeyGuard, clock: Clock) -> None:
    cap = clock() + 90 * DAY_S
    plain = await op(mode, guard, "create", owner="o", name="plain")
    assert plain.info.expires_at == datetime.fromtimestamp(cap, UTC)
    later = datetime.fromtimestamp(clock() + 200 * DAY_S, UTC)
    clamped = await op(mode, guard, "create", owner="o", name="late", expires_at=later)
    assert clamped.info.expires_at == datetime.fromtimestamp(cap, UTC)
    sooner = datetime.fromtimestamp(clock() + 30 * DAY_S, UTC)
    kept = await op(mode, guard, "create", owner="o", name="soon", expires_at=sooner)
    assert kept.info.expires_at == sooner
    pinned = await op(mode, guard, "create", owner="o", name="pinned", allowed_ips=[PUBLIC_IP])
    assert pinned.info.expires_at is None
    # the allowlist is removed 10 days later: at most 90 days from then
    clock.advance(10 * DAY_S)
    info = await op(mode, guard, "update", pinned.id, allowed_ips=[])
    assert info.expires_at == datetime.fromtimestamp(clock() + 90 * DAY_S, UTC)
    # removing an expiry does not lift the cap
    info = await op(mode, guard, "update", plain.id, expires_at=None)
    assert info.expires_at == datetime.fromtimestamp(cap, UTC)
    clock.advance(80 * DAY_S)
    assert code_of(guard, plain.token) == "expired_key"
    assert code_of(guard, pinned.token) == "ok"
    clock.advance(10 * DAY_S)
    assert code_of(guard, pinned.token) == "expired_key"


async def test_cap_disabled(mode: str, tmp_path: Path) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"unrestricted_max_days": None}})
    issued = await op(mode, g, "create", owner="o", name="n")
    assert issued.info.expires_at is None


BAD_IPS = [
    pytest.param(["10.1.2.0/24"], id="private"),
    pytest.param(["127.0.0.1"], id="loopback"),
    pytest.param(["::1"], id="loopback-v6"),
    pytest.param(["169.254.1.1"], id="link-local"),
    pytest.param(["0.0.0.0/0"], id="everything"),
    pytest.param(["::/0"], id="everything-v6"),
    pytest.param(["8.8.8.8", "nope"], id="garbage"),
]


@pytest.mark.parametrize("ips", BAD_IPS)
async def test_allowlist_refused(mode: str, guard: KeyGuard, ips: list[str]) -> None:
    with pytest.raises(InvalidKeySettings) as info:
        await op(mode, guard, "create", owner="o", name="n", allowed_ips=ips)
    assert info.value.field == "allowed_ips"
    ok = await op(mode, guard, "create", owner="o", name="n", allowed_ips=[PUBLIC_IP])
    with pytest.raises(InvalidKeySettings):
        await op(mode, guard, "update", ok.id, allowed_ips=ips)


async def test_private_ranges_when_allowed(mode: str) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"allow_private_ips": True}})
    issued = await op(mode, g, "create", owner="o", name="n", allowed_ips=["10.0.0.0/8", "::1"])
    assert issued.info.allowed_ips == ("10.0.0.0/8", "::1/128")
    assert code_of(g, issued.token, client_ip="10.2.3.4") == "ok"
    assert code_of(g, issued.token, client_ip="::1") == "ok"
    assert code_of(g, issued.token, client_ip="11.0.0.1") == "ip_not_allowed"
    with pytest.raises(InvalidKeySettings):
        await op(mode, g, "create", owner="o", name="n", allowed_ips=["0.0.0.0/0"])


FIELD_ERRORS = [
    pytest.param({"owner": ""}, "owner", id="owner-empty"),
    pytest.param({"owner": 5}, "owner", id="owner-type"),
    pytest.param({"name": "x" * 201}, "name", id="name-long"),
    pytest.param({"scopes": "read"}, "scopes", id="scopes-str"),
    pytest.param({"scopes": ["has space"]}, "scopes", id="scopes-bad"),
    pytest.param({"expires_at": datetime(2099, 1, 1)}, "expires_at", id="expires-naive"),  # noqa: DTZ001
    pytest.param({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "expires_at", id="expires-past"),
    pytest.param({"expires_at": "2099-01-01"}, "expires_at", id="expires-str"),
    pytest.param({"expires_in": -5}, "expires_in", id="expires_in-negative"),
    pytest.param({"expires_in": 0}, "expires_in", id="expires_in-zero"),
    pytest.param(
        {"expires_in": 5, "expires_at": datetime(2099, 1, 1, tzinfo=UTC)}, "expires_in", id="both"
    ),
    pytest.param({"kind": "hmac"}, "kind", id="kind"),
    pytest.param({"passphrase": "short"}, "passphrase", id="passphrase-short"),
    pytest.param({"rate_limit": "fast"}, "rate_limit", id="rate_limit"),
    pytest.param({"max_uses": 0}, "max_uses", id="max_uses"),
    pytest.param({"metadata": {"x": object()}}, "metadata", id="metadata-json"),
    pytest.param({"metadata": ["x"]}, "metadata", id="metadata-type"),
]


@pytest.mark.parametrize(("fields", "named"), FIELD_ERRORS)
async def test_create_field_errors(
    mode: str, guard: KeyGuard, fields: dict[str, Any], named: str
) -> None:
    kwargs = {"owner": "o", "name": "n", **fields}
    with pytest.raises(InvalidKeySettings) as info:
        await op(mode, guard, "create", **kwargs)
    assert info.value.field == named
    assert await op(mode, guard, "list") == []


async def test_passphrase_never_in_error(mode: str, guard: KeyGuard) -> None:
    with pytest.raises(InvalidKeySettings) as info:
        await op(mode, guard, "create", owner="o", name="n", passphrase="x" * 300)
    assert "xxxxxxxx" not in str(info.value)


async def test_owner_limit(mode: str, clock: Clock) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"max_keys_per_owner": 2}}, clock=clock)
    a = await op(mode, g, "create", owner="o", name="a")
    await op(mode, g, "create", owner="o", name="b", expires_in=60)
    await op(mode, g, "create", owner="other", name="c")
    with pytest.raises(KeyLimitExceeded):
        await op(mode, g, "create", owner="o", name="d")
    await op(mode, g, "revoke", a.id)  # revoked keys do not count
    await op(mode, g, "create", owner="o", name="e")
    clock.advance(61)  # nor expired ones
    await op(mode, g, "create", owner="o", name="f")
    with pytest.raises(KeyLimitExceeded) as info:
        await op(mode, g, "create", owner="o", name="g")
    assert info.value.field == "owner" and isinstance(info.value, InvalidKeySettings)


def test_owner_limit_threads_across_sqlite_connections(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    guards = [KeyGuard({"store": url, "policy": {"max_keys_per_owner": 5}}) for _ in range(3)]
    start = threading.Barrier(24)
    made: list[str] = []
    refused: list[Exception] = []

    def worker(g: KeyGuard) -> None:
        start.wait()
        try:
            made.append(g.keys.create(owner="racer", name="k").id)
        except KeyLimitExceeded as exc:
            refused.append(exc)

    threads = [threading.Thread(target=worker, args=(guards[i % 3],)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(made) == 5 and len(refused) == 19
    assert len(guards[0].keys.list(owner="racer")) == 5
    for g in guards:
        g.close()


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_owner_limit_async_gather(url: str, tmp_path: Path) -> None:
    if url == "sqlite":
        url = f"sqlite:///{tmp_path}/race.db"
    g = KeyGuard({"store": url, "policy": {"max_keys_per_owner": 4}})
    results = await asyncio.gather(
        *(g.keys.acreate(owner="racer", name=f"k{i}") for i in range(20)), return_exceptions=True
    )
    assert sum(1 for r in results if isinstance(r, KeyLimitExceeded)) == 16
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 4
    assert len(await g.keys.alist(owner="racer")) == 4
    g.close()


async def test_async_twins_exist_and_are_coroutines(guard: KeyGuard) -> None:
    import inspect

    for name in ("create", "get", "list", "update", "revoke", "delete", "rotate"):
        assert inspect.iscoroutinefunction(getattr(guard.keys, "a" + name)), name


def test_default_store_is_sqlite_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    g = KeyGuard()
    issued = g.keys.create(owner="o", name="n")
    assert g.verify(issued.token).id == issued.id
    g.close()
    assert (tmp_path / "keyguard.db").exists()
    again = KeyGuard()  # same file, pepper kept in the store: old keys still verify
    assert again.verify(issued.token).id == issued.id
    again.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"expires_in": 1e300}, "expires_in", id="expires_in-huge"),
        pytest.param({"expires_in": float("inf")}, "expires_in", id="expires_in-inf"),
        pytest.param({"expires_in": float("nan")}, "expires_in", id="expires_in-nan"),
        pytest.param({"expires_in": timedelta.max}, "expires_in", id="expires_in-timedelta-max"),
        pytest.param(
            {"expires_at": datetime.max.replace(tzinfo=UTC)}, "expires_at", id="expires_at-max"
        ),
    ],
)
def test_out_of_range_durations_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    g = KeyGuard({"store": "memory://"})
    with pytest.raises(InvalidKeySettings) as info:
        g.keys.create(owner="o", name="n", **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("grace", [float("nan"), 1e300, -1])
def test_rotate_refuses_unusable_grace(grace: float) -> None:
    g = KeyGuard({"store": "memory://"})
    issued = g.keys.create(owner="o", name="n")
    with pytest.raises(InvalidKeySettings) as info:
        g.keys.rotate(issued.id, grace=grace)
    assert info.value.field == "grace"


@pytest.mark.parametrize(
    "grace",
    [timedelta(days=30, seconds=1), 30 * DAY_S + 1, timedelta(days=36500), 3_153_600_000],
)
async def test_rotate_grace_is_at_most_30_days(mode: str, guard: KeyGuard, grace: Any) -> None:
    """Two live secrets for at most 30 days: a longer grace is refused, naming
    `grace`, and nothing changes (the old token keeps working alone)."""
    issued = await op(mode, guard, "create", owner="o", name="n")
    before = guard.store.get(issued.id)
    with pytest.raises(InvalidKeySettings) as info:
        await op(mode, guard, "rotate", issued.id, grace=grace)
    assert info.value.field == "grace" and "30 days" in info.value.message
    assert guard.store.get(issued.id) == before
    assert code_of(guard, issued.token) == "ok"


async def test_rotate_grace_of_30_days_ends_then(mode: str, guard: KeyGuard, clock: Clock) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n", allowed_ips=[PUBLIC_IP])
    rotated = await op(mode, guard, "rotate", issued.id, grace=timedelta(days=30))
    clock.advance(30 * DAY_S - 1)
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "ok"
    clock.advance(2)
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "invalid_key"
    assert code_of(guard, rotated.token, client_ip=PUBLIC_IP) == "ok"


@pytest.mark.parametrize("later", ["none", "later"])
async def test_a_grace_never_outlives_the_expiry_in_force(
    mode: str, guard: KeyGuard, clock: Clock, later: str
) -> None:
    """The old secret stops with the key at its expiry; an update that then moves
    the expiry later (or removes it) does not bring the old secret back with it."""
    issued = await op(
        mode, guard, "create", owner="o", name="n", allowed_ips=[PUBLIC_IP], expires_in=3600
    )
    rotated = await op(mode, guard, "rotate", issued.id, grace=timedelta(days=2))
    new_expiry = None if later == "none" else datetime.fromtimestamp(clock() + 10 * DAY_S, UTC)
    # Extended while the key is live: the grace ends at the old expiry (one hour).
    await op(mode, guard, "update", issued.id, expires_at=new_expiry)
    clock.advance(3599)
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "ok"
    clock.advance(2)
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "invalid_key"
    assert code_of(guard, rotated.token, client_ip=PUBLIC_IP) == "ok"


async def test_reviving_an_expired_key_does_not_revive_its_old_secret(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    issued = await op(
        mode, guard, "create", owner="o", name="n", allowed_ips=[PUBLIC_IP], expires_in=3600
    )
    rotated = await op(mode, guard, "rotate", issued.id, grace=timedelta(days=2))
    clock.advance(7200)  # expired; the grace (two days) would still run
    assert code_of(guard, rotated.token, client_ip=PUBLIC_IP) == "expired_key"
    later = datetime.fromtimestamp(clock() + 10 * DAY_S, UTC)
    await op(mode, guard, "update", issued.id, expires_at=later)
    assert code_of(guard, rotated.token, client_ip=PUBLIC_IP) == "ok"
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "invalid_key"
    record = guard.store.get(issued.id)
    assert record is not None and record.previous_secret_hash is None


async def test_an_expiry_moved_earlier_keeps_the_grace_within_it(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    issued = await op(mode, guard, "create", owner="o", name="n", allowed_ips=[PUBLIC_IP])
    await op(mode, guard, "rotate", issued.id, grace=timedelta(days=2))
    earlier = datetime.fromtimestamp(clock() + 3600, UTC)
    await op(mode, guard, "update", issued.id, expires_at=earlier)  # the key stops first
    clock.advance(3601)
    assert code_of(guard, issued.token, client_ip=PUBLIC_IP) == "expired_key"


async def test_update_with_grantable_adds_only_grantable_scopes(mode: str, guard: KeyGuard) -> None:
    """`update(grantable=...)`: a self-service caller's scopes, checked against the
    key as stored (inside the store's atomic change): held ones may stay, grantable
    ones may be added, nothing else."""
    key = await op(mode, guard, "create", owner="o", name="n", scopes=["billing", "read"])
    mine = {"read", "write"}
    info = await op(mode, guard, "update", key.id, scopes=["billing", "write"], grantable=mine)
    assert info.scopes == ("billing", "write")
    with pytest.raises(InvalidKeySettings) as caught:
        await op(mode, guard, "update", key.id, scopes=["read", "admin"], grantable=mine)
    assert caught.value.field == "scopes"
    # Dropped once, "billing" is no longer held: it cannot come back.
    await op(mode, guard, "update", key.id, scopes=["write"], grantable=mine)
    with pytest.raises(InvalidKeySettings):
        await op(mode, guard, "update", key.id, scopes=["billing"], grantable=mine)
    assert (await op(mode, guard, "get", key.id)).scopes == ("write",)
    # No grantable (an operator, plain Python): any scope.
    assert (await op(mode, guard, "update", key.id, scopes=["billing"])).scopes == ("billing",)


async def test_an_owner_may_shorten_an_expiry_never_lengthen_or_remove_it(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    """`update(by_owner=True)`: the owner changes its own key; its expiry may move
    earlier only (InvalidKeySettings naming `expires_at`); an operator's may not."""
    at = lambda days: datetime.fromtimestamp(clock() + days * DAY_S, UTC)  # noqa: E731
    key = await op(
        mode, guard, "create", owner="o", name="n", expires_in=7 * DAY_S, allowed_ips=[PUBLIC_IP]
    )
    for later in (None, at(8), at(36000)):
        with pytest.raises(InvalidKeySettings) as caught:
            await op(mode, guard, "update", key.id, expires_at=later, by_owner=True)
        assert caught.value.field == "expires_at"
        assert "only an operator can extend" in caught.value.message
    assert (await op(mode, guard, "get", key.id)).expires_at == at(7)
    info = await op(mode, guard, "update", key.id, expires_at=at(3), by_owner=True)
    assert info.expires_at == at(3)
    # The same expiry, as the API shows it (rounded to microseconds), is no longer one.
    same = datetime.fromisoformat(info.expires_at.isoformat())
    assert (await op(mode, guard, "update", key.id, expires_at=same, by_owner=True)).expires_at
    # Other fields are the owner's to change; an operator may lengthen or remove.
    assert (await op(mode, guard, "update", key.id, name="m", by_owner=True)).name == "m"
    assert (await op(mode, guard, "update", key.id, expires_at=at(30))).expires_at == at(30)
    assert (await op(mode, guard, "update", key.id, expires_at=None)).expires_at is None


async def test_suspensions_remember_who_and_an_owner_resumes_only_its_own(
    mode: str, guard: KeyGuard
) -> None:
    key = await op(mode, guard, "create", owner="o", name="n")
    assert (await op(mode, guard, "get", key.id)).suspended_by is None
    # The owner's own suspension: the owner may resume it.
    info = await op(mode, guard, "suspend", key.id, by_owner=True)
    assert info.suspended_by == "owner" and info.status() == "suspended"
    info = await op(mode, guard, "resume", key.id, by_owner=True)
    assert info.suspended_by is None and info.status() == "active"
    # An operator's (the default): the owner may not; an operator's takes over the owner's.
    await op(mode, guard, "suspend", key.id, by_owner=True)
    taken = await op(mode, guard, "suspend", key.id)
    assert taken.suspended_by == "operator"
    again = await op(mode, guard, "suspend", key.id, by_owner=True)  # changes nothing
    assert again.suspended_by == "operator" and again.suspended_at == taken.suspended_at
    with pytest.raises(InvalidKeySettings) as caught:
        await op(mode, guard, "resume", key.id, by_owner=True)
    assert caught.value.field == "key" and caught.value.status_code == 422
    assert "only an operator can resume it" in caught.value.message
    assert (await op(mode, guard, "get", key.id)).suspended_by == "operator"
    assert code_of(guard, key.token) == "suspended_key"
    assert (await op(mode, guard, "resume", key.id)).status() == "active"
    assert code_of(guard, key.token) == "ok"


def test_who_suspended_is_an_optional_field_of_the_stored_document() -> None:
    """`suspended_by_owner` is written only when True, so rows of keys an owner did
    not suspend are as earlier versions wrote (and read) them; a row without it
    (any row written before it) reads as an operator's suspension: the safe way."""
    import json

    from keyguard.models import KeyRecord

    base = KeyRecord(
        id="AbCdEfGh12345678", owner="o", name="n", kind="bearer", scopes=(),
        allowed_ips=(), created_at=1000.0, hint="kg_…abcd", suspended_at=2000.0,
    )  # fmt: skip
    doc = json.loads(base.to_json())
    assert "suspended_by_owner" not in doc
    old = KeyRecord.from_json(json.dumps(doc))
    assert old == base and old.suspended_by_owner is False
    assert old.info().suspended_by == "operator"
    owners = base.replace(suspended_by_owner=True)
    assert json.loads(owners.to_json())["suspended_by_owner"] is True
    assert KeyRecord.from_json(owners.to_json()).info().suspended_by == "owner"
    assert base.replace(suspended_at=None).info().suspended_by is None
    with pytest.raises(ValueError, match="suspended_by_owner"):
        KeyRecord.from_json(json.dumps({**doc, "suspended_by_owner": "yes"}))


def test_update_allowed_ips_none_removes_the_allowlist() -> None:
    g = KeyGuard({"store": "memory://"})
    issued = g.keys.create(owner="o", name="n", allowed_ips=["8.8.8.8"])
    assert g.keys.update(issued.id, allowed_ips=None).allowed_ips == ()


# -- allowlists that admit nearly everyone count as none (SPEC section 3) ------


def _every_public_v4() -> list[str]:
    """Every public IPv4 CIDR: the whole space less the private and special ranges."""
    from keyguard.network import PRIVATE_RANGES

    nets = [ipaddress.IPv4Network("0.0.0.0/0")]
    for hole in [n for n in PRIVATE_RANGES if n.version == 4] + [
        ipaddress.IPv4Network("224.0.0.0/3")
    ]:
        nets = [
            part
            for net in nets
            for part in (net.address_exclude(hole) if hole.subnet_of(net) else [net])
        ]
    return [str(n) for n in nets]


WIDE = [
    pytest.param(_every_public_v4(), {}, id="every-public-cidr"),
    pytest.param(["16.0.0.0/4"], {}, id="one-v4-slash-4"),
    # (it holds 6to4's 2002::/16, so every IPv4 address, private ones among them)
    pytest.param(["2000::/4"], {"allow_private_ips": True}, id="half-the-v6-unicast-space"),
    pytest.param(  # where IPv6 clients are, though a sliver of 2000::/3
        ["2001::/16", "2003::/18", "2400::/12", "2600::/12", "2800::/12", "2a00::/12"]
        + ["2a10::/12", "2c00::/12"],
        {},
        id="the-registries-v6-blocks",
    ),
    pytest.param(["2600::/12"], {}, id="one-registrys-v6-block"),
    pytest.param(["2410::/12", "2630::/12"], {}, id="two-later-registry-blocks"),
    pytest.param(["2002::/16"], {"allow_private_ips": True}, id="every-v4-through-6to4"),
    pytest.param(["2002:1000::/20"], {}, id="a-v4-slash-4-through-6to4"),
    pytest.param(["0.0.0.0/1", "128.0.0.0/1"], {"allow_private_ips": True}, id="two-halves"),
    pytest.param(["1.0.0.0/8"] * 3 + [f"{i}.0.0.0/8" for i in range(40, 56)], {}, id="many-8s"),
]
NARROW = [
    pytest.param(["203.0.113.0/24"], id="one-net"),
    pytest.param(["16.0.0.0/5"], id="a-slash-5"),
    pytest.param(["2001:db8::/32"], id="v6-slash-32"),
    pytest.param(["2003::/19"], id="one-large-providers-v6-block"),
    pytest.param(["10.0.0.0/8"], id="private-only"),
]


@pytest.mark.parametrize(("ips", "policy"), WIDE)
async def test_an_allowlist_of_nearly_everyone_is_capped_like_none(
    mode: str, clock: Clock, ips: list[str], policy: dict[str, Any]
) -> None:
    g = KeyGuard({"store": "memory://", "policy": policy}, clock=clock)
    cap = datetime.fromtimestamp(clock() + 90 * DAY_S, UTC)
    wide = await op(mode, g, "create", owner="o", name="wide", allowed_ips=ips)
    assert wide.info.expires_at == cap
    later = datetime.fromtimestamp(clock() + 300 * DAY_S, UTC)
    assert (await op(mode, g, "update", wide.id, expires_at=later)).expires_at == cap
    narrow = await op(mode, g, "create", owner="o", name="narrow", allowed_ips=[PUBLIC_IP])
    assert narrow.info.expires_at is None
    clock.advance(10 * DAY_S)  # widening an allowlist loses it, from now
    info = await op(mode, g, "update", narrow.id, allowed_ips=ips)
    assert info.expires_at == datetime.fromtimestamp(clock() + 90 * DAY_S, UTC)


@pytest.mark.parametrize("ips", NARROW)
def test_a_real_allowlist_is_not_capped(clock: Clock, ips: list[str]) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"allow_private_ips": True}}, clock=clock)
    assert g.keys.create(owner="o", name="n", allowed_ips=ips).info.expires_at is None


# -- revivals and resumes count against the owner limit (SPEC section 3) ------


async def test_reviving_an_expired_key_counts_against_the_owner_limit(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"max_keys_per_owner": 2}}, clock=clock)
    soon = datetime.fromtimestamp(clock() + DAY_S, UTC)
    old = await op(mode, g, "create", owner="o", name="old", expires_at=soon)
    await op(mode, g, "create", owner="o", name="b")
    clock.advance(2 * DAY_S)  # `old` expired: it no longer counts
    c = await op(mode, g, "create", owner="o", name="c")
    later = datetime.fromtimestamp(clock() + 30 * DAY_S, UTC)
    with pytest.raises(KeyLimitExceeded) as caught:
        await op(mode, g, "update", old.id, expires_at=later)
    assert caught.value.field == "owner"
    assert (await op(mode, g, "get", old.id)).expires_at == soon  # nothing changed
    renamed = await op(mode, g, "update", old.id, name="still expired")  # no revival: fine
    assert renamed.name == "still expired"
    await op(mode, g, "revoke", c.id)
    assert (await op(mode, g, "update", old.id, expires_at=later)).expires_at == later


async def test_resuming_counts_against_the_owner_limit(
    mode: str, guard: KeyGuard, clock: Clock
) -> None:
    g = KeyGuard({"store": "memory://", "policy": {"max_keys_per_owner": 2}}, clock=clock)
    a = await op(mode, g, "create", owner="o", name="a")
    await op(mode, g, "create", owner="o", name="b")
    await op(mode, g, "suspend", a.id)  # a suspended key does not count
    c = await op(mode, g, "create", owner="o", name="c")
    with pytest.raises(KeyLimitExceeded):
        await op(mode, g, "resume", a.id)
    assert (await op(mode, g, "get", a.id)).suspended_at is not None
    await op(mode, g, "delete", c.id)
    assert (await op(mode, g, "resume", a.id)).suspended_at is None

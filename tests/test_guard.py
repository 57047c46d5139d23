"""KeyGuard: verify/averify, the lookup chain (cache, negative cache, single-flight),
last_used_at batching, and failing closed when the store is unreachable."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from keyguard import AuthenticationError, AuthorizationError, KeyGuard, RequestRejected, StoreError
from keyguard.exceptions import ServiceUnavailable
from keyguard.tokens import make_token

from .kgutil import Clock, bad_checksum, counting_guard, other_secret, wait_for


def outcome(call: Any) -> str:
    try:
        call()
    except RequestRejected as exc:
        return f"{exc.status_code} {exc.code}"
    return "ok"


async def aoutcome(coro: Any) -> str:
    try:
        await coro
    except RequestRejected as exc:
        return f"{exc.status_code} {exc.code}"
    return "ok"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def g(clock: Clock) -> KeyGuard:
    return KeyGuard(
        {
            "store": "memory://",
            "scope_implies": {"write": ["read"]},
            "policy": {"allow_private_ips": True},
        },
        clock=clock,
    )


def cases(g: KeyGuard, clock: Clock) -> list[tuple[str, str, dict[str, Any], str]]:
    k = g.keys
    live = k.create(owner="o", name="live", scopes=["write", "models:*"]).token
    revoked = k.create(owner="o", name="revoked")
    k.revoke(revoked.id)
    expiring = k.create(owner="o", name="exp", expires_in=10).token
    pinned = k.create(owner="o", name="pinned", allowed_ips=["8.8.8.0/24", "2001:4860::/32"]).token
    secret = k.create(owner="o", name="pp", passphrase="a long passphrase").token
    clock.advance(11)
    return [
        ("live", live, {}, "ok"),
        ("implied", live, {"scopes": ["read"]}, "ok"),
        ("wildcard", live, {"scopes": ["models:list"]}, "ok"),
        ("missing-scope", live, {"scopes": ["admin"]}, "403 insufficient_scope"),
        ("bad-checksum", bad_checksum(live), {}, "401 invalid_key"),
        ("wrong-secret", other_secret(live), {}, "401 invalid_key"),
        ("unknown-id", make_token("kg", "Z" * 16)[0], {}, "401 invalid_key"),
        ("other-prefix", "xx" + live[2:], {}, "401 invalid_key"),
        ("empty", "", {}, "401 invalid_key"),
        ("revoked", revoked.token, {}, "401 revoked_key"),
        ("revoked-wrong-secret", other_secret(revoked.token), {}, "401 invalid_key"),
        ("expired", expiring, {}, "401 expired_key"),
        ("expired-wrong-secret", other_secret(expiring), {}, "401 invalid_key"),
        ("ip-ok", pinned, {"client_ip": "8.8.8.8"}, "ok"),
        ("ip-v6-ok", pinned, {"client_ip": "2001:4860::8888"}, "ok"),
        ("ip-refused", pinned, {"client_ip": "1.1.1.1"}, "403 ip_not_allowed"),
        ("ip-unknown", pinned, {}, "403 ip_not_allowed"),
        ("ip-garbage", pinned, {"client_ip": "not-an-ip"}, "403 ip_not_allowed"),
        ("ip-wrong-secret", other_secret(pinned), {"client_ip": "1.1.1.1"}, "401 invalid_key"),
        ("passphrase-missing", secret, {}, "401 invalid_passphrase"),
        ("passphrase-wrong", secret, {"passphrase": "a long passphrasf"}, "401 invalid_passphrase"),
        ("passphrase-ok", secret, {"passphrase": "a long passphrase"}, "ok"),
    ]


async def test_verify_and_averify_agree(g: KeyGuard, clock: Clock) -> None:
    for name, token, kwargs, expected in cases(g, clock):
        assert outcome(lambda: g.verify(token, **kwargs)) == expected, name  # noqa: B023
        assert await aoutcome(g.averify(token, **kwargs)) == expected, name


@pytest.mark.parametrize(
    "token", [None, 123, b"kg_x", ["kg"]], ids=["none", "int", "bytes", "list"]
)
async def test_non_string_tokens(g: KeyGuard, token: Any) -> None:
    assert outcome(lambda: g.verify(token)) == "401 invalid_key"
    assert await aoutcome(g.averify(token)) == "401 invalid_key"


def test_errors_carry_code_and_status(g: KeyGuard) -> None:
    issued = g.keys.create(owner="o", name="n")
    with pytest.raises(AuthorizationError) as info:
        g.verify(issued.token, scopes=["nope"])
    assert (info.value.status_code, info.value.code) == (403, "insufficient_scope")
    with pytest.raises(AuthenticationError) as auth:
        g.verify(bad_checksum(issued.token))
    assert (auth.value.status_code, auth.value.code) == (401, "invalid_key")
    assert issued.token not in str(auth.value) and bad_checksum(issued.token) not in str(auth.value)


# -- the lookup chain ---------------------------------------------------------


async def test_bad_checksum_touches_no_store() -> None:
    g, store = counting_guard()
    token = make_token("kg", "Q" * 16)[0]
    for _ in range(100):
        assert outcome(lambda: g.verify(bad_checksum(token))) == "401 invalid_key"
        assert await aoutcome(g.averify(bad_checksum(token))) == "401 invalid_key"
    assert store.gets == 0


async def test_warm_key_is_served_from_cache() -> None:
    g, store = counting_guard()
    issued = g.keys.create(owner="o", name="n")
    for _ in range(50):
        g.verify(issued.token)
        await g.averify(issued.token)
    assert store.gets == 1


async def test_unknown_ids_cached_negatively() -> None:
    g, store = counting_guard()
    fake = make_token("kg", "F" * 16)[0]
    for _ in range(50):
        assert outcome(lambda: g.verify(fake)) == "401 invalid_key"
        assert await aoutcome(g.averify(fake)) == "401 invalid_key"
    assert store.gets == 1


async def test_wrong_secret_does_not_refetch() -> None:
    g, store = counting_guard()
    issued = g.keys.create(owner="o", name="n")
    for _ in range(20):
        assert outcome(lambda: g.verify(other_secret(issued.token))) == "401 invalid_key"
    assert store.gets == 1


def test_local_cache_ttl_expires() -> None:
    g, store = counting_guard({"local_cache_ttl": 0.05})
    issued = g.keys.create(owner="o", name="n")
    g.verify(issued.token)
    g.verify(issued.token)
    assert store.gets == 1
    time.sleep(0.08)
    g.verify(issued.token)
    assert store.gets == 2


def test_local_cache_size_bound() -> None:
    g, store = counting_guard({"local_cache_size": 2})
    tokens = [g.keys.create(owner="o", name=f"k{i}").token for i in range(3)]
    for t in tokens:
        g.verify(t)
    assert store.gets == 3
    g.verify(tokens[2])
    assert store.gets == 3
    g.verify(tokens[0])  # the oldest was evicted
    assert store.gets == 4


def test_change_on_another_instance_seen_within_local_ttl(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    a = KeyGuard({"store": url, "local_cache_ttl": 0.05})
    b = KeyGuard({"store": url, "local_cache_ttl": 0.05})
    issued = b.keys.create(owner="o", name="n")
    assert outcome(lambda: a.verify(issued.token)) == "ok"
    b.keys.revoke(issued.id)
    assert wait_for(lambda: outcome(lambda: a.verify(issued.token)) == "401 revoked_key", 2)
    a.close()
    b.close()


async def test_single_flight_async() -> None:
    g, store = counting_guard()
    issued = g.keys.create(owner="o", name="n")
    fake = make_token("kg", "N" * 16)[0]
    store.hold = threading.Event()
    tasks = [asyncio.ensure_future(g.averify(issued.token)) for _ in range(25)]
    tasks += [asyncio.ensure_future(aoutcome(g.averify(fake))) for _ in range(25)]
    for _ in range(3):
        await asyncio.sleep(0)  # every task reaches its wait
    store.hold.set()
    results = await asyncio.gather(*tasks)
    assert all(r.id == issued.id for r in results[:25])
    assert set(results[25:]) == {"401 invalid_key"}
    assert store.gets == 2  # one per id


def test_single_flight_threads() -> None:
    g, store = counting_guard()
    issued = g.keys.create(owner="o", name="n")
    store.hold = threading.Event()
    start = threading.Barrier(16)
    seen: list[str] = []

    def worker() -> None:
        start.wait()
        seen.append(g.verify(issued.token).id)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: store.gets >= 1)
    time.sleep(0.1)  # let every thread queue behind the leader (not a timing assertion)
    store.hold.set()
    for t in threads:
        t.join(10)
    assert seen == [issued.id] * 16
    assert store.gets == 1


# -- last_used_at -------------------------------------------------------------


def test_last_used_batched_not_written_per_request() -> None:
    clock = Clock()
    g, store = counting_guard(clock=clock)
    a = g.keys.create(owner="o", name="a")
    b = g.keys.create(owner="o", name="b")
    for _ in range(100):
        g.verify(a.token)
        g.verify(b.token)
    assert store.touches == []
    # visible before the flush (the pending time is merged into reads)
    assert g.keys.get(a.id).last_used_at is not None
    clock.advance(61)
    g.verify(a.token)  # the interval passed: one batch is written in the background
    assert wait_for(lambda: len(store.touches) == 1)
    assert set(store.touches[0]) == {a.id, b.id}
    assert store.get(a.id).last_used_at == clock()  # type: ignore[union-attr]
    g.verify(b.token)
    assert len(store.touches) == 1
    g.close()  # close flushes what is pending
    assert store.touches[-1] == {b.id: clock()}


async def test_last_used_async_path_also_buffered() -> None:
    g, store = counting_guard()
    a = g.keys.create(owner="o", name="a")
    for _ in range(20):
        await g.averify(a.token)
    assert store.touches == []
    g.flush()
    assert len(store.touches) == 1
    g.flush()
    assert len(store.touches) == 1  # nothing pending, no write


def test_last_used_persisted_in_sqlite(tmp_path: Path) -> None:
    clock = Clock()
    url = f"sqlite:///{tmp_path}/lu.db"
    g = KeyGuard({"store": url}, clock=clock)
    a = g.keys.create(owner="o", name="a")
    g.verify(a.token)
    g.close()
    again = KeyGuard({"store": url})
    assert again.keys.get(a.id).last_used_at is not None
    assert again.keys.get(a.id).last_used_at.timestamp() == clock()  # type: ignore[union-attr]
    again.close()


# -- the store unreachable ----------------------------------------------------


def _break_sqlite(g: KeyGuard, db: Path, aside: Path) -> None:
    """Make the sqlite store unreachable for real: drop its connection and put a
    directory where the database file was (works as root, unlike chmod)."""
    g.store.close()
    aside.mkdir()
    for p in db.parent.glob(db.name + "*"):
        shutil.move(str(p), aside / p.name)
    os.mkdir(db)


def _heal_sqlite(db: Path, aside: Path) -> None:
    os.rmdir(db)
    for p in aside.iterdir():
        shutil.move(str(p), db.parent / p.name)


async def test_store_unreachable_uncached_503_cached_works(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    g = KeyGuard({"store": f"sqlite:///{db}"})
    warm = g.keys.create(owner="o", name="warm")
    cold = g.keys.create(owner="o", name="cold")
    g.verify(warm.token)
    _break_sqlite(g, db, tmp_path / "aside")

    assert outcome(lambda: g.verify(warm.token)) == "ok"
    assert await aoutcome(g.averify(warm.token)) == "ok"
    assert outcome(lambda: g.verify(cold.token)) == "503 unavailable"
    assert await aoutcome(g.averify(cold.token)) == "503 unavailable"
    assert (
        outcome(lambda: g.verify(make_token("kg", "U" * 16)[0])) == "503 unavailable"
    )  # fail closed
    assert outcome(lambda: g.verify(bad_checksum(cold.token))) == "401 invalid_key"  # no I/O needed
    with pytest.raises(ServiceUnavailable) as info:
        g.verify(cold.token)
    assert isinstance(info.value.__cause__, StoreError)
    assert cold.token not in str(info.value)
    with pytest.raises(StoreError):
        g.keys.create(owner="o", name="x")
    g.flush()  # best effort: keeps the pending times, never raises

    _heal_sqlite(db, tmp_path / "aside")
    assert outcome(lambda: g.verify(cold.token)) == "ok"  # the failure was not cached
    g.close()


async def test_store_unreachable_from_start(tmp_path: Path) -> None:
    db = tmp_path / "adir"
    db.mkdir()
    g = KeyGuard({"store": f"sqlite:///{db}"})
    token = make_token("kg", "S" * 16)[0]
    assert outcome(lambda: g.verify(token)) == "503 unavailable"
    assert await aoutcome(g.averify(token)) == "503 unavailable"
    results = await asyncio.gather(*(aoutcome(g.averify(token)) for _ in range(10)))
    assert set(results) == {"503 unavailable"}


def test_a_changed_pepper_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    issued = KeyGuard({"store": url}).keys.create(owner="o", name="n")  # generated pepper
    pepper = "a-pepper-set-later-0123456789"
    later = KeyGuard({"store": url, "pepper": pepper})
    with caplog.at_level("ERROR", logger="keyguard"), pytest.raises(AuthenticationError):
        later.verify(issued.token)
    assert "not the one the store's keys were issued under" in caplog.text
    assert pepper not in caplog.text

"""One store suite, every case against every backend (memory, sqlite, postgresql, redis).

PostgreSQL and Redis are the real servers (a fresh database / a random key prefix
per test). The concurrency cases run threads, and for the shared backends two
separate processes, against one store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyguard.exceptions import InvalidKeySettings, KeyLimitExceeded, KeyNotFound, StoreError
from keyguard.models import KeyRecord
from keyguard.stores import Store, open_store
from keyguard.stores.base import is_live

from . import servers

BACKENDS = ["memory", "sqlite", "postgresql", "redis"]


def _redis_cleanup(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    elif kind == "postgresql":
        yield request.getfixturevalue("postgres_url")
    else:
        base = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        yield f"{base}?prefix={prefix}"
        _redis_cleanup(base, prefix)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, request, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    s.setup()
    yield s
    s.close()


def rec(key_id: str, owner: str = "alice", created_at: float = 1000.0, **kw: object) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        owner=owner,
        name=f"name-{key_id}",
        kind="bearer",
        scopes=("read",),
        allowed_ips=("203.0.113.0/24",),
        created_at=created_at,
        hint="kg_...abcd",
        secret_hash="h$" + key_id,
        metadata={"team": "x"},
        **kw,  # type: ignore[arg-type]
    )


def test_insert_then_get_round_trips(store: Store) -> None:
    record = rec("k1", expires_at=5000.5, rate_limit="10/second", max_uses=3)
    store.insert(record, None, 1000.0)
    assert store.get("k1") == record
    assert store.get("nope") is None


def test_setup_is_idempotent(store: Store) -> None:
    store.insert(rec("k1"), None, 1000.0)
    store.setup()
    assert store.get("k1") is not None


@pytest.mark.parametrize(
    ("owner", "include_revoked", "expected"),
    [
        pytest.param(None, False, ["a", "b", "c", "e"], id="all-live"),
        pytest.param(None, True, ["a", "b", "c", "d", "e"], id="all-with-revoked"),
        pytest.param("bob", False, ["b", "e"], id="owner"),
        pytest.param("bob", True, ["b", "d", "e"], id="owner-with-revoked"),
        pytest.param("nobody", True, [], id="unknown-owner"),
    ],
)
def test_list_sorted_by_created_then_id(
    store: Store, owner: str | None, include_revoked: bool, expected: list[str]
) -> None:
    for record in [
        rec("e", "bob", 3000.0),
        rec("c", "alice", 2000.0),
        rec("b", "bob", 1000.0),
        rec("a", "alice", 1000.0),
        rec("d", "bob", 2500.0, revoked_at=2600.0),
    ]:
        store.insert(record, None, 1000.0)
    assert [r.id for r in store.list(owner, include_revoked)] == expected


def test_modify_replaces_atomically(store: Store) -> None:
    store.insert(rec("k1"), None, 1000.0)
    new = store.modify("k1", lambda r: r.replace(scopes=("read", "write"), revoked_at=1234.0))
    assert new.scopes == ("read", "write")
    assert store.get("k1") == new
    assert [r.id for r in store.list(include_revoked=False)] == []


def test_modify_refusal_leaves_record_unchanged(store: Store) -> None:
    store.insert(rec("k1"), None, 1000.0)

    def refuse(record: KeyRecord) -> KeyRecord:
        raise InvalidKeySettings("key", "no")

    with pytest.raises(InvalidKeySettings):
        store.modify("k1", refuse)
    assert store.get("k1") == rec("k1")


def test_modify_unknown_raises(store: Store) -> None:
    with pytest.raises(KeyNotFound):
        store.modify("nope", lambda r: r)


def test_delete(store: Store) -> None:
    store.insert(rec("k1"), None, 1000.0)
    store.touch({"k1": (1500.0, "198.51.100.7")})
    assert store.delete("k1") is True
    assert store.delete("k1") is False
    assert store.get("k1") is None
    assert store.list(include_revoked=True) == []


A, B = "198.51.100.7", "2001:db8::9"


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        pytest.param([{"k1": (1500.0, A)}], (1500.0, A), id="first"),
        pytest.param([{"k1": (1500.0, A)}, {"k1": (1200.0, B)}], (1500.0, A), id="never-backwards"),
        pytest.param([{"k1": (1500.0, A)}, {"k1": (1600.25, B)}], (1600.25, B), id="forwards"),
        pytest.param([{"k1": (1500.0, A)}, {"k1": (1600.0, None)}], (1600.0, None), id="no-ip"),
        pytest.param([{}, {"ghost": (9.0, A), "k1": (1.5, B)}], (1.5, B), id="unknown-ids-ignored"),
    ],
)
def test_touch_is_monotonic_and_keeps_the_client_ip(
    store: Store, batches: list[dict[str, tuple[float, str | None]]], expected: tuple[float, str]
) -> None:
    store.insert(rec("k1"), None, 1000.0)
    for batch in batches:
        store.touch(batch)
    record = store.get("k1")
    assert record is not None and (record.last_used_at, record.last_used_from) == expected
    listed = store.list()[0]
    assert (listed.last_used_at, listed.last_used_from) == expected
    assert store.get("ghost") is None
    # a later modify keeps the recorded use
    new = store.modify("k1", lambda r: r.replace(name="renamed"))
    assert (new.last_used_at, new.last_used_from) == expected
    again = store.get("k1")
    assert again is not None and (again.last_used_at, again.last_used_from) == expected


def test_meta(store: Store) -> None:
    assert store.get_meta("pepper") is None
    assert store.set_meta_default("pepper", "first") == "first"
    assert store.set_meta_default("pepper", "second") == "first"
    assert store.get_meta("pepper") == "first"
    store.set_meta("pepper", "third")
    assert store.get_meta("pepper") == "third"


@pytest.mark.parametrize(
    ("others", "allowed"),
    [
        pytest.param([], 3, id="empty"),
        pytest.param([rec("r", revoked_at=1.0)], 3, id="revoked-not-counted"),
        pytest.param([rec("x", expires_at=999.0)], 3, id="expired-not-counted"),
        pytest.param([rec("l", expires_at=2000.0)], 2, id="live-counted"),
        pytest.param([rec("o", owner="bob")], 3, id="other-owner-not-counted"),
    ],
)
def test_owner_limit(store: Store, others: list[KeyRecord], allowed: int) -> None:
    for record in others:
        store.insert(record, None, 1000.0)
    for i in range(allowed):
        store.insert(rec(f"k{i}"), 3, 1000.0)
    with pytest.raises(KeyLimitExceeded):
        store.insert(rec("over"), 3, 1000.0)
    assert store.get("over") is None


def test_owner_limit_holds_under_concurrent_threads(store: Store) -> None:
    limit, refused = 5, []
    barrier = threading.Barrier(12)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(3):
            try:
                store.insert(rec(f"t{n}-{i}"), limit, 1000.0)
            except KeyLimitExceeded:
                refused.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(store.list("alice")) == limit
    assert len(refused) == 12 * 3 - limit


def test_modify_loses_no_update_under_concurrent_threads(store: Store) -> None:
    store.insert(rec("k1"), None, 1000.0)
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(5):
            store.modify("k1", lambda r, s=f"s{n}-{i}": r.replace(scopes=(*r.scopes, s)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    record = store.get("k1")
    assert record is not None and len(record.scopes) == 1 + 8 * 5


_WORKER = textwrap.dedent(
    """
    import sys, threading
    from keyguard.exceptions import KeyLimitExceeded
    from keyguard.models import KeyRecord
    from keyguard.stores import open_store

    url, tag = sys.argv[1], sys.argv[2]
    store = open_store(url)
    store.setup()
    made = []

    def rec(key_id):
        return KeyRecord(id=key_id, owner="shared", name="n", kind="bearer", scopes=(),
                         allowed_ips=(), created_at=1000.0, hint="h", secret_hash="x")

    def work(n):
        for i in range(4):
            try:
                store.insert(rec(f"{tag}-{n}-{i}"), 7, 1000.0)
                made.append(1)
            except KeyLimitExceeded:
                pass
            store.modify("counter", lambda r, s=f"{tag}-{n}-{i}": r.replace(scopes=(*r.scopes, s)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    store.close()
    print(len(made))
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_invariants_hold_across_two_processes(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for url in store_url(kind, request, tmp_path):
        store = open_store(url)
        store.setup()
        store.insert(
            KeyRecord(
                id="counter",
                owner="c",
                name="n",
                kind="bearer",
                scopes=(),
                allowed_ips=(),
                created_at=1.0,
                hint="h",
            ),
            None,
            1.0,
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, url, tag],
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            for tag in ("p1", "p2")
        ]
        try:
            made = [int(p.communicate(timeout=60)[0]) for p in procs]
        finally:
            for p in procs:
                servers.kill(p)  # type: ignore[arg-type]
        assert [p.returncode for p in procs] == [0, 0]
        assert sum(made) == 7
        assert len(store.list("shared")) == 7
        counter = store.get("counter")
        assert counter is not None and len(counter.scopes) == 2 * 4 * 4
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_a_newer_schema_is_refused(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A store written by a newer keyguard is not silently used by an older one."""
    for url in store_url(kind, request, tmp_path):
        s = open_store(url)
        s.setup()
        s.setup()  # idempotent
        if kind == "redis":
            s._client.hset(s._k("meta"), "schema_version", "999")  # type: ignore[attr-defined]
        else:
            with s._db(write=True) as db:  # type: ignore[attr-defined]
                db.execute("UPDATE keyguard_meta SET value = '999' WHERE name = 'schema_version'")
        with pytest.raises(StoreError, match="schema version 999"):
            s.setup()
        s.close()


def test_sqlite_waits_for_another_connection_to_switch_a_new_database_to_wal(
    tmp_path: Path,
) -> None:
    """Opening a new database while another connection holds a lock on it: the
    switch to WAL waits (SQLite itself answers "locked" at once), as other
    statements wait for the busy timeout. Several guards or processes starting
    on one new file hit this."""
    import sqlite3

    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a write lock, on a file still in rollback mode
    release = threading.Timer(0.3, other.rollback)
    release.start()
    try:
        store = open_store(f"sqlite:///{path}")
        store.setup()  # connects, switches to WAL once the lock is gone
        assert store.get("nothing") is None
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        store.close()
    finally:
        release.join()
        other.close()


REVIVALS = [
    pytest.param(lambda r: r.replace(suspended_at=None), {"suspended_at": 900.0}, id="resume"),
    pytest.param(lambda r: r.replace(expires_at=9000.0), {"expires_at": 999.0}, id="revive"),
]


@pytest.mark.parametrize(("revive", "state"), REVIVALS)
def test_a_revival_is_refused_at_the_owner_limit(
    store: Store, revive: Any, state: dict[str, float]
) -> None:
    store.insert(rec("live"), None, 1000.0)
    store.insert(rec("dormant", **state), None, 1000.0)
    with pytest.raises(KeyLimitExceeded):
        store.modify("dormant", revive, 1, 1000.0)
    assert store.get("dormant") == rec("dormant", **state)
    # other changes of a key that does not come back to life are not limited
    store.modify("dormant", lambda r: r.replace(name="renamed"), 1, 1000.0)
    store.modify("live", lambda r: r.replace(name="renamed"), 1, 1000.0)
    assert store.modify("dormant", revive, 2, 1000.0).name == "renamed"


@pytest.mark.parametrize(("revive", "state"), REVIVALS)
def test_revivals_hold_the_owner_limit_under_concurrent_threads(
    store: Store, revive: Any, state: dict[str, float]
) -> None:
    """Twelve dormant keys come back at once, with creates racing them: the owner
    ends with exactly the limit of live keys."""
    limit, refused = 4, []
    for n in range(12):
        store.insert(rec(f"d{n}", **state), None, 1000.0)
    barrier = threading.Barrier(12)

    def worker(n: int) -> None:
        barrier.wait()
        for attempt in (
            lambda: store.modify(f"d{n}", revive, limit, 1000.0),
            lambda: store.insert(rec(f"new{n}"), limit, 1000.0),
        ):
            try:
                attempt()
            except KeyLimitExceeded:
                refused.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    live = [r for r in store.list("alice") if is_live(r, 1000.0)]
    assert len(live) == limit and len(refused) == 24 - limit


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_a_version_1_store_is_upgraded(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A store written by a keyguard of schema 1 (no suspension, no client of last
    use) opens, migrates once, and keeps its keys."""
    v1 = json.dumps(
        {
            "id": "old",
            "owner": "alice",
            "name": "from v1",
            "kind": "bearer",
            "scopes": ["read"],
            "allowed_ips": [],
            "created_at": 1000.0,
            "hint": "kg_…abcd",
            "secret_hash": "h$old",
            "expires_at": None,
            "revoked_at": None,
            "last_used_at": None,
            "previous_secret_hash": None,
            "previous_valid_until": None,
            "passphrase_hash": None,
            "encrypted_secret": None,
            "previous_encrypted_secret": None,
            "unrestricted_since": None,
            "rate_limit": None,
            "max_uses": None,
            "metadata": {},
        }
    )
    for url in store_url(kind, request, tmp_path):
        if kind == "redis":
            import redis

            base, _, prefix = url.partition("?prefix=")
            client = redis.Redis.from_url(base)
            client.hset(prefix + "meta", "schema_version", "1")
            client.set(prefix + "key:old", v1)
            client.zadd(prefix + "owner:alice", {"old": 1000.0})
            client.zadd(prefix + "all", {"old": 1000.0})
            client.hset(prefix + "used", "old", "1500.0")
            client.close()
        else:
            _write_v1_sql(kind, url, v1)
        store = open_store(url)
        store.setup()
        store.setup()  # idempotent
        old = store.get("old")
        assert old is not None and old.name == "from v1" and old.suspended_at is None
        assert old.last_used_at == 1500.0 and old.last_used_from is None
        store.modify("old", lambda r: r.replace(suspended_at=2000.0))
        store.touch({"old": (2500.0, "198.51.100.7")})
        again = store.get("old")
        assert again is not None and again.suspended_at == 2000.0
        assert (again.last_used_at, again.last_used_from) == (2500.0, "198.51.100.7")
        with pytest.raises(KeyLimitExceeded):  # the suspended key's column is there too
            store.insert(rec("x"), 0, 1000.0)
        store.insert(rec("y"), 1, 1000.0)  # `old` is suspended: it does not count
        if kind == "redis":
            version = store._client.hget(store._k("meta"), "schema_version")  # type: ignore[attr-defined]
        else:
            with store._db() as db:  # type: ignore[attr-defined]
                version = db.execute(
                    "SELECT value FROM keyguard_meta WHERE name = 'schema_version'"
                ).fetchone()[0]
        assert int(version) == 2
        store.close()


def _write_v1_sql(kind: str, url: str, doc: str) -> None:
    """The schema and one row exactly as keyguard's schema version 1 wrote them."""
    from keyguard.stores import postgresql, sqlite

    steps = (sqlite if kind == "sqlite" else postgresql).MIGRATIONS[0]
    mark = "?" if kind == "sqlite" else "%s"
    if kind == "sqlite":
        import sqlite3

        db: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    else:
        import psycopg

        db = psycopg.connect(url, autocommit=True)
    try:
        db.execute("CREATE TABLE keyguard_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO keyguard_meta VALUES ('schema_version', '1')")
        for sql in steps:
            db.execute(sql)
        db.execute(
            "INSERT INTO keyguard_keys"
            " (id, owner, created_at, expires_at, revoked_at, last_used_at, data)"
            f" VALUES ({', '.join([mark] * 7)})",
            ("old", "alice", 1000.0, None, None, 1500.0, doc),
        )
    finally:
        db.close()

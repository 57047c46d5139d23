"""One store suite, every case against every backend (memory, sqlite, postgresql, redis).

PostgreSQL and Redis are the real servers (a fresh database / a random key prefix
per test). The concurrency cases run threads, and for the shared backends two
separate processes, against one store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyguard.exceptions import InvalidKeySettings, KeyLimitExceeded, KeyNotFound, StoreError
from keyguard.models import KeyRecord
from keyguard.stores import Store, open_store

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
    store.touch({"k1": 1500.0})
    assert store.delete("k1") is True
    assert store.delete("k1") is False
    assert store.get("k1") is None
    assert store.list(include_revoked=True) == []


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        pytest.param([{"k1": 1500.0}], 1500.0, id="first"),
        pytest.param([{"k1": 1500.0}, {"k1": 1200.0}], 1500.0, id="never-backwards"),
        pytest.param([{"k1": 1500.0}, {"k1": 1600.25}], 1600.25, id="forwards"),
        pytest.param([{}, {"ghost": 9.0, "k1": 1.5}], 1.5, id="unknown-ids-ignored"),
    ],
)
def test_touch_is_monotonic(store: Store, batches: list[dict[str, float]], expected: float) -> None:
    store.insert(rec("k1"), None, 1000.0)
    for batch in batches:
        store.touch(batch)
    record = store.get("k1")
    assert record is not None and record.last_used_at == expected
    assert store.list()[0].last_used_at == expected
    assert store.get("ghost") is None
    # a later modify keeps the recorded time
    assert store.modify("k1", lambda r: r.replace(name="renamed")).last_used_at == expected


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

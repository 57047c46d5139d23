"""Many-instance costs: per-request time by cache tier, revocation propagation, big stores.

    PYTHONPATH=src python benchmarks/bench_cluster.py [--keys N] [--redis URL] [--postgres URL]

Needs the local Redis and PostgreSQL (defaults: redis://127.0.0.1:6379/0,
postgresql://postgres@127.0.0.1:5432/test as the admin database). Creates and drops
its own databases and uses a random Redis key prefix (deleted at the end); never
flushes anything. Per-request rows time `KeyGuard.check` (steps 1-7 on a
request's facts), i.e. the guard's share of a request without the HTTP server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from keyguard import KeyGuard, tokens
from keyguard.decision import Facts
from keyguard.hashing import Hasher
from keyguard.models import KeyRecord

PEPPER = "bench-pepper-not-a-secret-0123456789"


@contextlib.contextmanager
def fresh_database(admin_url: str, tag: str) -> Iterator[str]:
    name = f"kg_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    p = conninfo_to_dict(admin_url)
    host = f"{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}"
    url = f"postgresql://{p.get('user', 'postgres')}@{host}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings(store: str, cache: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "store": store,
        "cache": cache,
        "pepper": PEPPER,
        "local_cache_ttl": 60,
        "policy": {"allow_private_ips": True, "max_keys_per_owner": None},
        **extra,
    }


def facts_for(token: str) -> Facts:
    return Facts("GET", "/v1/hello", "127.0.0.1", {"authorization": [f"Bearer {token}"]})


def per_op(
    fn: Callable[[], object], n: int, prep: Callable[[], object] = lambda: None
) -> list[float]:
    """Microseconds per call of `fn`, one call at a time (`prep` runs untimed before each)."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        prep()
        t = clock()
        fn()
        out.append((clock() - t) / 1000)
    return out


def warm_us(guard: KeyGuard, token: str, n: int = 200_000) -> float:
    """Mean µs of the warm path (local hit), timed in one block to keep clock overhead out."""
    facts = facts_for(token)
    auth = guard.check
    for _ in range(1000):
        auth(facts)
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        for _ in range(n // 10):
            auth(facts)
        best = min(best, (time.perf_counter() - t) / (n // 10) * 1e6)
    return best


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, values: list[float] | float, unit: str = "µs") -> None:
    if isinstance(values, float):
        ROWS.append((what, f"{values:.2f}", "", unit))
    else:
        ROWS.append((what, f"{statistics.median(values):.1f}", f"{pct(values, 0.99):.1f}", unit))
    print(f"  {what}: {ROWS[-1][1]} {unit}", file=sys.stderr, flush=True)


# -- 1. per-request time by tier -------------------------------------------------


def bench_tiers(pg_admin: str, redis_base: str, prefix: str) -> None:
    with fresh_database(pg_admin, "tiers") as store:
        cache = f"{redis_base}?prefix={prefix}"
        mem = KeyGuard(settings(store, "memory://"))
        red = KeyGuard(settings(store, cache))
        try:
            token = mem.keys.create(owner="o", name="n", scopes=["read"]).token
            assert token is not None
            facts = facts_for(token)
            mem.check(facts)
            red.check(facts)
            best = {"memory://": float("inf"), "redis://": float("inf")}
            for _ in range(3):  # interleaved, best of each: the machine's noise hits both alike
                best["memory://"] = min(best["memory://"], warm_us(mem, token, 100_000))
                best["redis://"] = min(best["redis://"], warm_us(red, token, 100_000))
            row("local hit, cache memory:// (best mean)", best["memory://"])
            row("local hit, cache redis:// (best mean)", best["redis://"])

            auth_red, auth_mem = (
                (lambda: red.check(facts)),
                (lambda: mem.check(facts)),
            )
            # bench only: `_local.clear()` forgets the in-process copy before each timed call
            row("only in Redis (local miss)", per_op(auth_red, 3000, red.cache._local.clear))

            client = redis.Redis.from_url(redis_base)
            entry = f"{prefix}cache:{tokens.TokenParser('kg').parse(token)[0]}"  # type: ignore[index]

            def forget_both() -> None:
                red.cache._local.clear()
                client.delete(entry)

            row("from PostgreSQL, cache memory://", per_op(auth_mem, 3000, mem.cache._local.clear))
            row("from PostgreSQL, cache redis:// (miss both)", per_op(auth_red, 3000, forget_both))
            client.close()
        finally:
            mem.close()
            red.close()


# -- 2. revocation propagation between two processes ------------------------------

_PEER = textwrap.dedent(
    """
    import sys, time
    from keyguard import KeyGuard
    from keyguard.exceptions import RequestRejected
    store, cache, pepper = sys.argv[1:4]
    guard = KeyGuard({"store": store, "cache": cache, "pepper": pepper, "local_cache_ttl": 60})
    for line in sys.stdin:
        token = line.strip()
        guard.verify(token)               # warm: cached locally and in Redis
        print("ready", flush=True)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                guard.verify(token)
            except RequestRejected:
                break
            time.sleep(0.0002)
        print(repr(time.time()), flush=True)
    guard.close()
    """
)


def bench_propagation(pg_admin: str, redis_base: str, prefix: str, rounds: int) -> None:
    with fresh_database(pg_admin, "prop") as store:
        cache = f"{redis_base}?prefix={prefix}"
        guard = KeyGuard(settings(store, cache))
        guard.keys.create(owner="o", name="setup")  # sets the store up before the peer starts
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        peer = subprocess.Popen(
            [sys.executable, "-c", _PEER, store, cache, PEPPER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert peer.stdin is not None and peer.stdout is not None
        delays, calls = [], []
        try:
            for _ in range(rounds):
                issued = guard.keys.create(owner="o", name="n")
                peer.stdin.write(f"{issued.token}\n")
                peer.stdin.flush()
                assert peer.stdout.readline().strip() == "ready"
                time.sleep(0.005)
                t0 = time.time()
                guard.keys.revoke(issued.id)
                calls.append((time.time() - t0) * 1000)
                t1 = float(peer.stdout.readline())
                delays.append((t1 - t0) * 1000)
        finally:
            peer.stdin.close()
            peer.wait(10)
            guard.close()
        row("revoke call itself (store write + publish)", calls, "ms")
        row(f"revocation propagation, 2 processes ({rounds} rounds)", delays, "ms")


# -- 3. a PostgreSQL store with many keys -----------------------------------------


def bulk_load(url: str, n: int, sample: int) -> list[str]:
    """COPY `n` keys into a fresh store; return tokens for `sample` of them (spread out)."""
    guard = KeyGuard(settings(url, None))
    guard.hasher  # noqa: B018 - creates the schema
    guard.close()
    hasher = Hasher(PEPPER.encode())
    template = KeyRecord(
        id="@ID@",
        owner="@OWNER@",
        name="bulk",
        kind="bearer",
        scopes=("read",),
        allowed_ips=("127.0.0.0/8",),
        created_at=1_700_000_000.0,
        hint="kg_...",
        secret_hash="@HASH@",
    ).to_json()
    every = max(1, n // sample)
    out: list[str] = []
    t = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY keyguard_keys (id, owner, created_at, data) FROM STDIN") as copy:
            for i in range(n):
                key_id = tokens.new_key_id()
                digest = "x"
                if i % every == 0:
                    token, secret = tokens.make_token("kg", key_id)
                    digest = hasher.hash_secret(secret)
                    out.append(token)
                owner = f"owner{i % 50_000}"
                doc = template.replace("@ID@", key_id).replace("@OWNER@", owner)
                copy.write_row((key_id, owner, 1_700_000_000.0 + i, doc.replace("@HASH@", digest)))
        cur.execute("ANALYZE keyguard_keys")
    print(f"  loaded {n} keys in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    return out


def bench_store_size(pg_admin: str, n: int, label: str) -> None:
    with fresh_database(pg_admin, "size") as url:
        toks = bulk_load(url, n, 2000)
        guard = KeyGuard(settings(url, "memory://"))
        try:
            facts = [facts_for(t) for t in toks]
            for f in facts[:50]:  # connections open, plans cached
                guard.check(f)
            it = iter(facts * 2)

            def cold() -> None:
                guard.check(next(it))

            row(
                f"cold lookup from PostgreSQL, {label} keys",
                per_op(cold, len(facts), guard.cache._local.clear),
            )
            row(f"warm path (local hit), {label} keys (mean)", warm_us(guard, toks[0]))
        finally:
            guard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the big store")
    parser.add_argument("--rounds", type=int, default=200, help="revocation rounds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    prefix = f"kgbench:{uuid.uuid4().hex[:8]}:"
    started = time.perf_counter()
    try:
        bench_tiers(args.postgres, args.redis, prefix)
        bench_propagation(args.postgres, args.redis, prefix + "p:", args.rounds)
        bench_store_size(args.postgres, 1000, "1,000")
        bench_store_size(args.postgres, args.keys, f"{args.keys:,}")
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    width = max(len(r[0]) for r in ROWS)
    print(f"\n{'measurement':<{width}}  {'p50/mean':>9}  {'p99':>9}  unit")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  ----")
    for what, p50, p99, unit in ROWS:
        print(f"{what:<{width}}  {p50:>9}  {p99:>9}  {unit}")
    print(f"\n(total {time.perf_counter() - started:.0f} s; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()

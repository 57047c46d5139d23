"""Two app processes share one Redis and one PostgreSQL; a key revoked through one is refused
by the other.

    .venv/bin/python examples/multi_instance/demo.py      # after bash scripts/demo.sh

Needs a PostgreSQL at 127.0.0.1:5432 (database `test`, or --postgres-admin URL) and a
Redis at 127.0.0.1:6379; imports only what scripts/demo.sh installs (HTTP via urllib).

Starts two uvicorn processes of app.py (ports picked free), issues an admin key and a
user key, calls instance B with the user key, revokes it through instance A, and
polls B until it refuses. By default it works in a new PostgreSQL database and a
random Redis key prefix, both removed at the end; pass --store/--cache to use yours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from keyguard import KeyGuard

HERE = Path(__file__).resolve().parent


def call(method: str, url: str, token: str | None = None) -> tuple[int, Any]:
    """(status, JSON body) of one request; an error status is an answer, not an exception."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"kg_example_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    p = conninfo_to_dict(admin_url)
    try:
        host = f"{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}"
        yield f"postgresql://{p.get('user', 'postgres')}@{host}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def instance(name: str, store: str, cache: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "KEYGUARD_STORE": store,
        "KEYGUARD_CACHE": cache,
        "INSTANCE": name,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=HERE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                if call("GET", url + "/health")[0] == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit(f"instance {name} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def run(store: str, cache: str) -> None:
    guard = KeyGuard({"store": store, "cache": cache, "policy": {"allow_private_ips": True}})
    admin = guard.keys.create(owner="ops", name="admin", scopes=["keyguard:admin"])
    user = guard.keys.create(owner="alice", name="alice's key", scopes=["read"])
    with instance("A", store, cache) as a, instance("B", store, cache) as b:
        for url in (a, b):
            status, body = call("GET", url + "/v1/hello", user.token)
            print(f"GET {url}/v1/hello with alice's key -> {status} {body}")
        t0 = time.perf_counter()
        status, body = call("POST", f"{a}/admin/keys/{user.id}/revoke", admin.token)
        t1 = time.perf_counter()
        print(f"POST {a}/admin/keys/{user.id}/revoke -> {status} {body}")
        polls = 0
        for polls in range(1, 501):  # noqa: B007 - reported after the loop
            status, body = call("GET", b + "/v1/hello", user.token)
            if status != 200:
                break
            time.sleep(0.002)
        ms = (time.perf_counter() - t0) * 1000
        print(f"GET {b}/v1/hello with alice's key -> {status} {body['code']}")
        print(
            f"instance B refused the key {ms:.1f} ms after the revoke request was sent to A"
            f" (the revoke request took {(t1 - t0) * 1000:.1f} ms; B refused at poll {polls})"
        )
    guard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--store",
        metavar="URL",
        help="a postgresql:// or redis:// store (default: a scratch database)",
    )
    parser.add_argument(
        "--cache", metavar="URL", help="a redis:// cache (default: local Redis, random prefix)"
    )
    parser.add_argument(
        "--postgres-admin",
        default="postgresql://postgres@127.0.0.1:5432/test",
        metavar="URL",
        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE, where the scratch "
        "database is made (default: %(default)s; not used with --store)",
    )
    args = parser.parse_args()
    prefix = f"kgexample:{uuid.uuid4().hex[:8]}:"
    cache = args.cache or f"redis://127.0.0.1:6379/0?prefix={prefix}"
    try:
        if args.store:
            run(args.store, cache)
        else:
            with scratch_database(args.postgres_admin) as store:
                run(store, cache)
    finally:
        if not args.cache:
            client = redis.Redis.from_url(cache.split("?")[0])
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()


if __name__ == "__main__":
    main()

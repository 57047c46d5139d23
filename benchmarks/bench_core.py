"""keyguard core benchmark: per-request cost in-process, and offline rejections.

Calls the ASGI and WSGI apps directly with prepared scopes/environs: no server,
no HTTP client, no sockets. ASGI requests are driven in batches by one
coroutine on one event loop (`loop.run_until_complete(batch())`), so loop
start-up is not paid per request; WSGI requests call the app with a no-op
`start_response` and drain the body. Each request gets a fresh copy of the
prepared scope/environ (as a server would), which every variant pays alike.

Variants (all answer GET /v1/hello with a small JSON body):

- Starlette, FastAPI and Flask hello-world apps, bare;
- each behind keyguard: `memory://` store, a warm Bearer key in the local
  cache, one matching rule requiring a scope, and an IP allowlist containing
  the test peer 203.0.113.7 (a documentation address);
- FastAPI with a hand-written `APIKeyHeader` dependency doing a dict look-up;
- FastAPI behind keyshield 2.0.1's `CachedApiKeyService` (aiocache memory
  cache, its argon2 hasher, its artificial delay set to 0) through its own
  `create_depends_api_key(..., required_scopes=[...])` dependency, warm.

Each round times every variant once (interleaved, so drift hits all alike),
with the garbage collector off during the timed loop; the table shows the
median per-request time over the rounds, and the overhead over the same bare
app measured in the same run. Then `guard.verify` is fed random well-formed
tokens with a wrong checksum, counting rejections per second and the store
calls they caused (a counting `MemoryStore` subclass; must be 0).

Run (about a minute with the defaults):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_core.py [--rounds 9] [--requests 3000]

Needs the `bench` extra (fastapi, flask, keyshield[aiocache]==2.0.1, argon2).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

PEER = "203.0.113.7"
PATH = "/v1/hello"
SCOPE = "hello:read"

# -- targets of issue 2 --------------------------------------------------------

TARGET_FASTAPI = 0.10  # keyguard overhead / bare FastAPI time
TARGET_STARLETTE = 0.50  # keyguard overhead / bare Starlette time
TARGET_FLASK = 0.15  # keyguard overhead / bare Flask time
TARGET_KEYSHIELD = 0.10  # keyguard FastAPI overhead / keyshield cached overhead
TARGET_REJECTIONS = 300_000  # bad-checksum rejections per second by guard.verify


# -- keyguard ------------------------------------------------------------------


def counting_store_class() -> type:
    """A MemoryStore that counts every call of a Store method."""
    from keyguard.stores.base import Store
    from keyguard.stores.memory import MemoryStore

    names = [n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")]

    def wrap(name: str) -> Callable[..., Any]:
        method = getattr(MemoryStore, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(self, *args, **kwargs)

        return counted

    ns: dict[str, Any] = {name: wrap(name) for name in names}
    ns["calls"] = {}
    return type("CountingStore", (MemoryStore,), ns)


def make_guard() -> tuple[Any, str]:
    from keyguard import KeyGuard

    guard = KeyGuard(
        {
            "store": "memory://",
            "pepper": "bench-pepper-0123456789abcdef0123456789",
            # one round of requests must stay warm; the default (5 s) would
            # add one store load per 5 s, amortised to nothing but noisy.
            "local_cache_ttl": 3600,
            "rules": [{"path": "/v1/*", "methods": ["GET"], "scopes": [SCOPE]}],
        }
    )
    issued = guard.keys.create(
        owner="bench", name="bench", scopes=[SCOPE], allowed_ips=["203.0.113.0/24"]
    )
    assert issued.token is not None
    guard.verify(issued.token, client_ip=PEER, scopes=[SCOPE])  # warm the local cache
    return guard, issued.token


# -- apps ----------------------------------------------------------------------


def starlette_app(guard: Any = None) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"message": "hello"})

    middleware = []
    if guard is not None:
        from keyguard.asgi import KeyGuardMiddleware

        middleware.append(Middleware(KeyGuardMiddleware, guard=guard))
    return Starlette(routes=[Route(PATH, hello)], middleware=middleware)


def fastapi_app(guard: Any = None, dependency: Any = None) -> Any:
    from fastapi import Depends, FastAPI

    app = FastAPI()
    deps = [Depends(dependency)] if dependency is not None else []

    @app.get(PATH, dependencies=deps)
    async def hello() -> dict[str, str]:
        return {"message": "hello"}

    if guard is not None:
        from keyguard.asgi import KeyGuardMiddleware

        app.add_middleware(KeyGuardMiddleware, guard=guard)
    return app


def apikeyheader_dependency(token: str) -> Any:
    """The hand-written baseline: FastAPI's APIKeyHeader and a dict of keys."""
    from fastapi import HTTPException, Security
    from fastapi.security import APIKeyHeader

    header = APIKeyHeader(name="X-API-Key", auto_error=False)
    keys = {token: "bench"}

    async def check(api_key: str | None = Security(header)) -> str:
        owner = keys.get(api_key) if api_key else None
        if owner is None:
            raise HTTPException(status_code=401, detail="Invalid API key")
        return owner

    return check


def keyshield_dependency(loop: asyncio.AbstractEventLoop) -> tuple[Any, str]:
    """keyshield 2.0.1 wired as its README shows, with its cached service."""
    from keyshield.api import create_depends_api_key
    from keyshield.hasher.argon2 import Argon2ApiKeyHasher
    from keyshield.repositories.in_memory import InMemoryApiKeyRepository
    from keyshield.services.cached import CachedApiKeyService

    service = CachedApiKeyService(
        repo=InMemoryApiKeyRepository(),
        hasher=Argon2ApiKeyHasher(pepper="bench-pepper-0123456789abcdef"),
        min_delay=0.0,  # its artificial 0.1-0.3 s delay, off
        max_delay=0.0,
    )
    _entity, token = loop.run_until_complete(service.create(name="bench", scopes=[SCOPE]))

    async def inject_service() -> CachedApiKeyService:
        return service

    return create_depends_api_key(inject_service, required_scopes=[SCOPE]), token


def flask_app(guard: Any = None) -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get(PATH)
    def hello() -> dict[str, str]:
        return {"message": "hello"}

    if guard is not None:
        from keyguard.wsgi import KeyGuardMiddleware

        app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=guard)  # type: ignore[method-assign]
    return app


# -- drivers -------------------------------------------------------------------


def asgi_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"accept", b"*/*"), *headers],
        "client": (PEER, 50000),
        "server": ("testserver", 80),
        "extensions": {},
    }


def wsgi_environ(headers: dict[str, str]) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER,
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "testserver",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    env.update(headers)
    return env


_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST


async def _send(message: dict[str, Any]) -> None:
    pass


class AsgiCase:
    def __init__(self, app: Any, scope: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.scope, self.loop = app, scope, loop

    def status(self, scope: dict[str, Any] | None = None) -> int:
        seen: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen.append(message["status"])

        self.loop.run_until_complete(self.app(dict(scope or self.scope), _receive, send))
        return seen[0]

    def run(self, n: int) -> int:
        app, scope = self.app, self.scope

        async def batch() -> int:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                await app(dict(scope), _receive, _send)
            return time.perf_counter_ns() - t0

        return self.loop.run_until_complete(batch())


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    pass


class WsgiCase:
    def __init__(self, app: Any, environ: dict[str, Any]) -> None:
        self.app, self.environ = app, environ

    def status(self, environ: dict[str, Any] | None = None) -> int:
        seen: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(status)
            return _write

        result = self.app(dict(environ or self.environ), start_response)
        b"".join(result)
        getattr(result, "close", lambda: None)()
        return int(seen[0].split()[0])

    def run(self, n: int) -> int:
        app, environ, start_response = self.app, self.environ, _start_response
        t0 = time.perf_counter_ns()
        for _ in range(n):
            result = app(dict(environ), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return time.perf_counter_ns() - t0


def timed(case: Any, n: int) -> float:
    """Per-request nanoseconds for n requests, gc off."""
    gc.collect()
    gc.disable()
    try:
        return case.run(n) / n
    finally:
        gc.enable()


# -- rejections ----------------------------------------------------------------


def bad_checksum_tokens(prefix: str, count: int, seed: int = 7) -> list[str]:
    from keyguard.tokens import ALPHABET, CHECKSUM_LEN, ID_LEN, SECRET_LEN, checksum

    rng = random.Random(seed)
    out = []
    while len(out) < count:
        key_id = "".join(rng.choices(ALPHABET, k=ID_LEN))
        secret = "".join(rng.choices(ALPHABET, k=SECRET_LEN))
        body = f"{prefix}_{key_id}_{secret}"
        check = "".join(rng.choices(ALPHABET, k=CHECKSUM_LEN))
        if check != checksum(body):
            out.append(body + check)
    return out


def rejections(rounds: int, count: int) -> tuple[float, dict[str, int]]:
    from keyguard import KeyGuard
    from keyguard.exceptions import AuthenticationError

    guard = KeyGuard({"store": "memory://", "pepper": "bench-pepper-0123456789abcdef0123456789"})
    store = counting_store_class()()
    guard.store = store
    guard.keys.create(owner="bench", name="real", scopes=[SCOPE], expires_in=3600)
    tokens = bad_checksum_tokens(guard.settings.token_prefix, count)
    verify = guard.verify
    store.calls.clear()  # count only what the rejections cause
    rates = []
    for _ in range(rounds):
        rejected = 0
        gc.collect()
        gc.disable()
        t0 = time.perf_counter_ns()
        for token in tokens:
            try:
                verify(token)
            except AuthenticationError:
                rejected += 1
        elapsed = time.perf_counter_ns() - t0
        gc.enable()
        assert rejected == len(tokens)
        rates.append(rejected / (elapsed / 1e9))
    return statistics.median(rates), dict(store.calls)


# -- main ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per variant (median)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per variant per round")
    parser.add_argument("--tokens", type=int, default=50_000, help="bad tokens per rejection round")
    parser.add_argument("--only-keyguard", action="store_true", help="skip keyshield (profiling)")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")  # keyshield warns about its own defaults
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    guard, token = make_guard()
    bearer = [(b"authorization", b"Bearer " + token.encode())]

    cases: dict[str, Any] = {}
    cases["Starlette bare"] = AsgiCase(starlette_app(), asgi_scope(bearer), loop)
    cases["Starlette + keyguard"] = AsgiCase(starlette_app(guard), asgi_scope(bearer), loop)
    cases["FastAPI bare"] = AsgiCase(fastapi_app(), asgi_scope(bearer), loop)
    cases["FastAPI + keyguard"] = AsgiCase(fastapi_app(guard), asgi_scope(bearer), loop)
    cases["FastAPI + APIKeyHeader dict"] = AsgiCase(
        fastapi_app(dependency=apikeyheader_dependency(token)),
        asgi_scope([(b"x-api-key", token.encode())]),
        loop,
    )
    if not args.only_keyguard:
        dep, ks_token = keyshield_dependency(loop)
        cases["FastAPI + keyshield cached"] = AsgiCase(
            fastapi_app(dependency=dep),
            asgi_scope([(b"authorization", b"Bearer " + ks_token.encode())]),
            loop,
        )
    environ = wsgi_environ({"HTTP_AUTHORIZATION": "Bearer " + token})
    cases["Flask bare"] = WsgiCase(flask_app(), environ)
    cases["Flask + keyguard"] = WsgiCase(flask_app(guard), environ)

    # Sanity: every variant answers 200, and the guarded ones really check.
    for name, case in cases.items():
        status = case.status()
        assert status == 200, f"{name}: status {status}"
    no_key_asgi = asgi_scope([])
    assert cases["Starlette + keyguard"].status(no_key_asgi) == 401
    assert cases["FastAPI + keyguard"].status(no_key_asgi) == 401
    assert cases["FastAPI + APIKeyHeader dict"].status(no_key_asgi) == 401
    if "FastAPI + keyshield cached" in cases:
        assert cases["FastAPI + keyshield cached"].status(no_key_asgi) == 401
    assert cases["Flask + keyguard"].status(wsgi_environ({})) == 401

    # Warm-up, then rounds. A round times each framework's variants back to
    # back in a shuffled order; the overhead of a variant is taken per round
    # (variant minus its bare app in the same round), then the median of
    # those. Pairing keeps noise from a busy machine out of the differences.
    for case in cases.values():
        timed(case, max(200, args.requests // 5))
    groups: dict[str, list[str]] = {}
    for name in cases:
        groups.setdefault(name.split()[0], []).append(name)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    rng = random.Random(0)
    for _ in range(args.rounds):
        group_order = list(groups)
        rng.shuffle(group_order)
        for group in group_order:
            order = groups[group][:]
            rng.shuffle(order)
            for name in order:
                samples[name].append(timed(cases[name], args.requests) / 1000)  # µs

    med = {name: statistics.median(v) for name, v in samples.items()}
    bare_name = {name: name.split()[0] + " bare" for name in cases}
    overhead: dict[str, float] = {}
    share: dict[str, float] = {}
    for name in cases:
        if name != bare_name[name]:
            bare = samples[bare_name[name]]
            overhead[name] = statistics.median(
                v - b for v, b in zip(samples[name], bare, strict=True)
            )
            share[name] = statistics.median(
                (v - b) / b for v, b in zip(samples[name], bare, strict=True)
            )

    print(
        f"\nkeyguard core benchmark: {args.rounds} rounds x {args.requests} requests per variant, "
        f"in-process, Python {sys.version.split()[0]}\n"
        "(µs/request: median over rounds; overhead: median over rounds of the time added "
        "over the same bare app in the same round)\n"
    )
    head = ("variant", "µs/request", "overhead µs", "overhead / bare")
    print(f"| {head[0]:<28} | {head[1]:>10} | {head[2]:>11} | {head[3]:>15} |")
    print(f"|{'-' * 30}|{'-' * 11}:|{'-' * 12}:|{'-' * 16}:|")
    for name in cases:
        if name not in overhead:
            print(f"| {name:<28} | {med[name]:>10.1f} | {'':>11} | {'':>15} |")
        else:
            print(
                f"| {name:<28} | {med[name]:>10.1f} | {overhead[name]:>11.1f} | "
                f"{share[name]:>15.1%} |"
            )

    rate, calls = rejections(max(3, args.rounds // 3), args.tokens)

    print("\nTargets:\n")
    checks = [
        (
            "keyguard overhead <= 10% of bare FastAPI",
            share["FastAPI + keyguard"],
            TARGET_FASTAPI,
            "{:.1%}",
        ),
        (
            "keyguard overhead <= 50% of bare Starlette",
            share["Starlette + keyguard"],
            TARGET_STARLETTE,
            "{:.1%}",
        ),
        (
            "keyguard overhead <= 15% of bare Flask",
            share["Flask + keyguard"],
            TARGET_FLASK,
            "{:.1%}",
        ),
    ]
    if "FastAPI + keyshield cached" in overhead:
        checks.append(
            (
                "keyguard overhead <= 1/10 of keyshield's (FastAPI)",
                overhead["FastAPI + keyguard"] / overhead["FastAPI + keyshield cached"],
                TARGET_KEYSHIELD,
                "{:.3f}",
            )
        )
    failed = 0
    for label, value, target, fmt in checks:
        ok = value <= target
        failed += not ok
        print(f"- {label:<52} {fmt.format(value):>8}  {'ok' if ok else 'MISSED'}")
    ok = rate >= TARGET_REJECTIONS and not calls
    failed += not ok
    print(
        f"- {'bad-checksum rejections by guard.verify >= 300,000/s':<52} {rate:>8,.0f}  "
        f"{'ok' if rate >= TARGET_REJECTIONS else 'MISSED'} (store calls: {sum(calls.values())})"
    )
    loop.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

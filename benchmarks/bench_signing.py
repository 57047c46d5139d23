"""Per-request overhead of signed requests next to Bearer, in-process.

Calls a Starlette app directly through the ASGI interface (no server, no
socket) with prepared scopes, so the figure is keyguard's own cost: the time
per request with `KeyGuardMiddleware` minus the same app without it. The key is
warm (in the in-process cache) and the store is memory://. Every signed
request carries its own timestamp, hence its own signature, so none is a
replay; the replay cache therefore grows as it would under real traffic.

    PYTHONPATH=src python benchmarks/bench_signing.py [--rounds 31] [--requests 1000] [--wall]

Prints medians over rounds and the ratio of each overhead to the Bearer
overhead (target: signed <= 2x Bearer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware
from keyguard.crypto import generate_master_key
from keyguard.signing import format_timestamp, sign

# CPU time of this process: on a shared machine, other processes' load shifts wall-clock
# figures far more than the differences measured here (the loop does no I/O, so CPU time
# is the whole cost). `--wall` switches to time.perf_counter_ns.
CLOCK = time.process_time_ns
BODY = b'{"pad":"' + b"x" * (1024 - 10) + b'"}'  # 1 KiB of JSON
assert len(BODY) == 1024


async def endpoint(request: Request) -> PlainTextResponse:
    await request.body()  # the app reads the body in every variant, so only keyguard differs
    return PlainTextResponse("ok")


def make_app(guard: KeyGuard | None) -> Any:
    app = Starlette(routes=[Route("/v1/items", endpoint, methods=["GET", "POST"])])
    if guard is not None:
        app.add_middleware(KeyGuardMiddleware, guard=guard)
    return app


def scope(method: str, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    raw = [(b"host", b"bench"), (b"user-agent", b"bench/1"), (b"accept", b"*/*"), *headers]
    if body:
        raw += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/v1/items",
        "raw_path": b"/v1/items",
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("198.51.100.7", 50000),
        "server": ("bench", 80),
    }


Runner = Callable[[int], Awaitable[float]]


def runner(app: Any, scopes: Callable[[int], dict[str, Any]], body: bytes) -> Runner:
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    statuses: list[int] = []

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    async def run(n: int) -> float:
        batch = [scopes(i) for i in range(n)]  # prepared before the clock starts
        statuses.clear()
        start = CLOCK()
        for s in batch:
            await app(s, receive, send)
        elapsed = CLOCK() - start
        if any(code != 200 for code in statuses):
            raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
        return elapsed / n / 1000.0  # microseconds per request

    return run


async def main(rounds: int, per_round: int) -> None:
    now = time.time()
    guard = KeyGuard(
        {
            "store": "memory://",
            "local_cache_ttl": 3600,
            "policy": {"allow_private_ips": True},  # 198.51.100.0/24 is a documentation range
            "signing": {"master_keys": [generate_master_key()], "max_skew_seconds": 3600},
        },
        clock=lambda: now,
    )
    bearer = guard.keys.create(owner="bench", name="bearer", allowed_ips=["198.51.100.0/24"])
    signer = guard.keys.create(
        owner="bench", name="signer", kind="signing", allowed_ips=["198.51.100.0/24"]
    )
    key_id, secret = signer.info.id, signer.secret
    assert secret is not None
    bare, guarded = make_app(None), make_app(guard)
    auth = [(b"authorization", f"Bearer {bearer.token}".encode())]
    counter = iter(range(10**9))

    def signed_headers(method: str, body: bytes) -> list[tuple[bytes, bytes]]:
        # A distinct millisecond per request, all inside the window: no replays.
        ts = format_timestamp(now - next(counter) / 1000.0)
        sig = sign(secret, ts, method, "/v1/items", "", body)
        return [
            (b"kg-access-key", key_id.encode()),
            (b"kg-timestamp", ts.encode()),
            (b"kg-signature", sig.encode()),
        ]

    cases: dict[str, Runner] = {
        "GET, no middleware": runner(bare, lambda i: scope("GET", [], b""), b""),
        "GET, Bearer": runner(guarded, lambda i: scope("GET", auth, b""), b""),
        "GET, signed": runner(
            guarded, lambda i: scope("GET", signed_headers("GET", b""), b""), b""
        ),
        "POST 1 KiB, no middleware": runner(bare, lambda i: scope("POST", [], BODY), BODY),
        "POST 1 KiB, Bearer": runner(guarded, lambda i: scope("POST", auth, BODY), BODY),
        "POST 1 KiB, signed": runner(
            guarded, lambda i: scope("POST", signed_headers("POST", BODY), BODY), BODY
        ),
    }
    for run in cases.values():  # warm-up: caches, argon2-free paths, JIT-less but allocator-warm
        await run(200)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):  # interleaved, so drift hits every case alike
        for name, run in cases.items():
            samples[name].append(await run(per_round))
    med = {name: statistics.median(values) for name, values in samples.items()}

    def overhead(method: str, kind: str) -> float:
        return med[f"{method}, {kind}"] - med[f"{method}, no middleware"]

    bearer_get, bearer_post = overhead("GET", "Bearer"), overhead("POST 1 KiB", "Bearer")
    clock = "wall-clock" if CLOCK is time.perf_counter_ns else "process CPU"
    print(
        f"keyguard signed-request overhead: {rounds} rounds x {per_round} requests, "
        f"medians of {clock} time\n"
    )
    print(f"{'case':<28}{'per request':>14}{'overhead':>12}{'vs Bearer':>12}")
    for name in cases:
        method, _, kind = name.partition(", ")
        line = f"{name:<28}{med[name]:>11.1f} us"
        if kind != "no middleware":
            over = overhead(method, kind)
            base = bearer_get if method == "GET" else bearer_post
            line += f"{over:>9.1f} us{over / base:>11.2f}x"
        print(line)
    worst = max(
        overhead("GET", "signed") / bearer_get, overhead("POST 1 KiB", "signed") / bearer_post
    )
    verdict = "meets" if worst <= 2.0 else "MISSES"
    print(f"\nworst signed/Bearer overhead ratio: {worst:.2f}x ({verdict} the <= 2x target)")
    guard.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--wall", action="store_true", help="measure wall-clock time instead")
    args = parser.parse_args()
    if args.wall:
        CLOCK = time.perf_counter_ns
    asyncio.run(main(args.rounds, args.requests))

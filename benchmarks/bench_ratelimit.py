"""The warm Bearer path with per-key rate limiting on (memory, Redis) next to
the same path without, in-process on a Starlette app whose route needs a
scope (rules prepared at start-up). Requests are driven straight through the
ASGI stack (no HTTP client, no sockets), so the figures are the middleware's
cost plus Starlette's routing.

    PYTHONPATH=src python benchmarks/bench_ratelimit.py [--redis redis://127.0.0.1:6379/0]

Prints medians (µs per request) over several rounds and the ratio to the
figure without a limit. Target: the memory limiter adds at most 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware

ROUNDS = 31
PER_ROUND = 500


async def chat(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def build(settings: dict[str, Any], rate_limit: str | None) -> tuple[Any, str]:
    guard = KeyGuard(
        {
            "store": "memory://",
            "policy": {"allow_private_ips": True},
            "rules": [{"path": "/v1/chat", "methods": ["POST"], "scopes": ["inference"]}],
            **settings,
        }
    )
    token = guard.keys.create(
        owner="bench", name="b", scopes=["inference"], rate_limit=rate_limit
    ).token
    app = Starlette(routes=[Route("/v1/chat", chat, methods=["POST"])])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    assert token is not None
    return app, token


def request(token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat",
        "raw_path": b"/v1/chat",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "headers": [
            (b"host", b"api"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ],
    }


async def run(cases: dict[str, tuple[Any, str]]) -> dict[str, list[float]]:
    """Rounds interleave the cases, so machine noise falls on all of them alike."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scopes = {name: request(token) for name, (_app, token) in cases.items()}
    for name, (app, _token) in cases.items():  # warm: key cached, limiter storage connected
        for _ in range(200):
            await app(dict(scopes[name]), receive, send)
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, (app, _token) in cases.items():
            scope = scopes[name]
            start = time.perf_counter()
            for _ in range(PER_ROUND):
                await app(dict(scope), receive, send)
            rounds[name].append((time.perf_counter() - start) / PER_ROUND * 1e6)
    assert set(statuses) == {200}, set(statuses)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    big = "1000000/minute"
    cases = [
        ("no rate limit", {}, None),
        ("rate_limit memory (1 window)", {}, big),
        ("rate_limit memory (2 windows)", {}, f"{big};100000000/day"),
        ("no rate limit, Redis cache", {"cache": args.redis}, None),
        ("rate_limit Redis", {"cache": args.redis}, big),
    ]
    apps = {name: build(settings, limit) for name, settings, limit in cases}
    results = {name: statistics.median(r) for name, r in asyncio.run(run(apps)).items()}
    base = results["no rate limit"]
    print(f"{'case':<34} {'median µs/req':>14} {'vs no limit':>12}")
    for name, value in results.items():
        print(f"{name:<34} {value:>14.1f} {value / base:>11.2f}x")


if __name__ == "__main__":
    main()

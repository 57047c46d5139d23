"""Why keyguard's wall-time share of a FastAPI request is twice its share of
instructions: the same work costs more inside FastAPI's middleware stack.

Runs bench_core.py's FastAPI app (in-process, prepared scopes) bare and with
one extra middleware that does one thing per request:

- `no-op layer`: only awaits the app (the price of any middleware);
- `3 clock calls`: `time.time()` twice and `time.monotonic()` once;
- `collect headers`: the door's loop gathering the headers keyguard reads;
- `step (warm)`: the async driver's first call, which the warm path ends in
  (`guard.drivers.start`), with facts as the door makes them;
- `keyguard`: the whole `KeyGuardMiddleware`.

and prints each one's overhead over the bare app (median of paired rounds)
next to the same work timed alone in a loop. On this project's 2-core VM the
work costs several times more inside the stack than alone: FastAPI's larger
per-request working set leaves keyguard's code and data out of the CPU caches.

    PYTHONPATH=src python benchmarks/bench_context.py [--rounds 40] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

import bench_core as bc

from keyguard.asgi import KeyGuardMiddleware
from keyguard.decision import Facts, Verdict

PEER = "203.0.113.7"  # bench_core's peer


def layer(work: Callable[[dict[str, Any]], object]) -> type:
    """A pure ASGI middleware that does `work(scope)`, then calls the app."""

    class Layer:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            work(scope)
            await self.app(scope, receive, send)

    return Layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()

    guard, token = bc.make_guard()
    wanted = KeyGuardMiddleware(bc.fastapi_app(), guard=guard)._wanted
    facts = {"authorization": [f"Bearer {token}"]}

    def clocks(scope: dict[str, Any]) -> None:
        time.time()
        time.time()
        time.monotonic()

    def collect(scope: dict[str, Any]) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            text = wanted.get(name)
            if text is not None:
                headers.setdefault(text, []).append(value.decode("latin-1"))
        return headers

    def warm(scope: dict[str, Any]) -> object:
        verdict = guard.drivers.start(Facts("GET", bc.PATH, PEER, facts, "http"))
        assert isinstance(verdict, Verdict) and verdict.entry is not None
        return verdict

    works: dict[str, Callable[[dict[str, Any]], object] | None] = {
        "no-op layer": lambda scope: None,
        "3 clock calls": clocks,
        "collect headers": collect,
        "step (warm)": warm,
    }
    loop = asyncio.new_event_loop()
    scope = bc.asgi_scope([(b"authorization", f"Bearer {token}".encode())])
    apps = {"bare": bc.fastapi_app()}
    for name, work in works.items():
        app = bc.fastapi_app()
        app.add_middleware(layer(work))  # type: ignore[arg-type]
        apps[name] = app
    apps["keyguard"] = bc.fastapi_app(guard)
    cases = {name: bc.AsgiCase(app, scope, loop) for name, app in apps.items()}
    for case in cases.values():
        assert case.status() == 200
        case.run(300)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so drift hits every case alike
        for name, case in cases.items():
            samples[name].append(bc.timed(case, args.requests) / 1000)
    bare = samples["bare"]
    print(
        f"FastAPI in-process, {args.rounds} rounds x {args.requests} requests "
        f"(bare: {statistics.median(bare):.1f} µs/request)\n"
    )
    print("| work per request | in FastAPI's stack µs | alone µs |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        if name == "bare":
            continue
        inside = statistics.median(a - b for a, b in zip(values, bare, strict=True))
        work = works.get(name)
        alone = ""
        if work is not None:
            times = timeit.repeat(lambda w=work: w(scope), number=20_000, repeat=5)
            alone = f"{min(times) / 20_000 * 1e6:.2f}"
        print(f"| {name} | {inside:.2f} | {alone} |")
    guard.close()


if __name__ == "__main__":
    main()

"""keyguard's per-request cost in CPU instructions, which a noisy machine cannot blur.

Runs the same in-process apps as bench_core.py (Starlette, FastAPI, Flask; bare
and behind keyguard with a warm Bearer key, one scope rule and an IP allowlist)
under `valgrind --tool=callgrind`, twice per variant with different request
counts, and divides the difference: instructions per request, without start-up.
With the garbage collector off in the loop and a fixed hash seed, the counts
repeat to within about ten instructions; wall time on a shared 2-core
machine moves 20% between runs. (Instructions are not time: cache misses
and branch mispredictions are not in them.)

    python benchmarks/bench_instructions.py [Starlette] [FastAPI] [Flask]   # needs valgrind; ~4 min
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = {"Starlette": 0.50, "FastAPI": 0.10, "Flask": 0.15}


def child(framework: str, guarded: bool, count: int) -> None:
    import bench_core as b

    guard, token = b.make_guard()
    gc.collect()
    gc.disable()  # as in bench_core's timed loops: a collection would land in one count only
    if framework == "Flask":
        app = b.flask_app(guard if guarded else None)
        environ = b.wsgi_environ({"HTTP_AUTHORIZATION": "Bearer " + token})
        for _ in range(count):
            list(app(dict(environ), lambda status, headers, exc_info=None: None))
        return
    maker = b.starlette_app if framework == "Starlette" else b.fastapi_app
    asgi = maker(guard if guarded else None)
    scope = b.asgi_scope([(b"authorization", b"Bearer " + token.encode())])

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        pass

    async def run() -> None:
        for _ in range(count):
            await asgi(dict(scope), receive, send)

    asyncio.run(run())


def instructions(framework: str, guarded: bool, count: int) -> int:
    out = subprocess.run(  # noqa: S603
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            framework,
            str(int(guarded)),
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
    ).stderr
    line = next(line for line in out.splitlines() if "Collected" in line)
    return int(line.split()[-1])


def per_request(framework: str, guarded: bool, low: int = 1000, high: int = 3000) -> float:
    return (instructions(framework, guarded, high) - instructions(framework, guarded, low)) / (
        high - low
    )


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH (Debian: apt-get install valgrind)")
        return 2
    print("| app | bare instr/request | + keyguard | overhead | overhead / bare | target |")
    print("|---|---:|---:|---:|---:|---:|")
    missed = 0
    only = sys.argv[1:]  # e.g. Starlette Flask
    for framework, target in TARGETS.items():
        if only and framework not in only:
            continue
        bare, guarded = per_request(framework, False), per_request(framework, True)
        ratio = (guarded - bare) / bare
        missed += ratio > target
        print(
            f"| {framework} | {bare:,.0f} | {guarded:,.0f} | {guarded - bare:,.0f} "
            f"| {ratio:.1%} | <= {target:.0%} {'ok' if ratio <= target else 'MISSED'} |"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
    else:
        sys.exit(main())

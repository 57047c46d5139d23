"""keyguard end to end: a real uvicorn server (one worker) per variant, loaded by
wrk on loopback, the variants interleaved round by round; requests/s and the
ratio to bare FastAPI (medians over the rounds).

    python benchmarks/bench_e2e.py [--rounds 5] [--seconds 5] [--connections 32]

Variants: bare FastAPI; FastAPI with a hand-written `APIKeyHeader` dependency
and a dict of keys; FastAPI + keyguard with a warm Bearer key and one scope
rule; FastAPI + keyguard with signed requests (kg profile). Signed requests
are never replayed (keyguard refuses a replay), so wrk sends a different
pre-signed request each time (a Lua table of them, each used once; the bench
app's signing window is 600 s, so they are still fresh when wrk sends them).
That script costs wrk, on the same cores, more than a fixed request, so the
signed variant is compared with bare FastAPI loaded by the same script
(`bare_signed`); the others with bare FastAPI loaded by a fixed request.

Needs `wrk` (Debian: apt-get install wrk). Loopback only; every run is bounded
in time, and the servers are stopped at the end. wrk and uvicorn share this
machine's cores, so read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ["bare", "bare_signed", "header_dependency", "keyguard_bearer", "keyguard_signed"]
GOALS = {"keyguard_bearer": 0.97, "keyguard_signed": 0.92}
# What each variant is compared with: bare FastAPI, loaded the same way. The signed
# variants' wrk runs a Lua script per request (a different pre-signed request each
# time), which costs the load generator, on the same two cores, more than a fixed
# request does; so keyguard_signed is compared with the bare app loaded by that script.
BASELINE = {"bare_signed": "bare_signed", "keyguard_signed": "bare_signed"}
APP = {"bare_signed": "bare"}  # the e2e_apps app each variant serves
SIGNED = {"bare_signed", "keyguard_signed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(workdir: Path) -> dict[str, str]:
    """A SQLite store with a bearer key and a signing key; their credentials."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from keyguard import KeyGuard
    from keyguard.crypto import generate_master_key

    master = generate_master_key()
    store = f"sqlite:///{workdir / 'bench.db'}"
    env = {"KG_BENCH_STORE": store, "KG_BENCH_MASTER": master}
    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    import e2e_apps

    guard = KeyGuard(e2e_apps._settings())
    bearer = guard.keys.create(owner="bench", name="bearer", scopes=[e2e_apps.SCOPE])
    signer = guard.keys.create(
        owner="bench", name="signer", scopes=[e2e_apps.SCOPE], kind="signing"
    )
    guard.close()
    assert bearer.token is not None and signer.secret is not None
    return {
        **env,
        "KG_BENCH_TOKEN": bearer.token,
        "KG_BENCH_ACCESS": signer.info.id,
        "KG_BENCH_SECRET": signer.secret,
    }


def signed_script(path: Path, access: str, secret: str, count: int) -> None:
    """A wrk Lua script that sends `count` distinct signed GETs, one each. The
    signatures are in a data file the script reads (a Lua chunk holding them all
    would pass Lua's limit on constants and fail to load)."""
    from keyguard.signing import format_timestamp, sign

    now = time.time()
    data = path.with_suffix(".txt")
    with data.open("w") as out:
        for i in range(count):
            ts = format_timestamp(now + i / count)  # a new timestamp, so a new signature
            query = f"n={i}"
            out.write(f"{query} {ts} {sign(secret, ts, 'GET', '/v1/x', query)}\n")
    path.write_text(
        f"""
local requests = {{}}
for line in io.lines("{data}") do
  local query, ts, mac = line:match("(%S+) (%S+) (%S+)")
  requests[#requests + 1] = wrk.format("GET", "/v1/x?" .. query,
    {{["Host"] = "127.0.0.1", ["KG-ACCESS-KEY"] = "{access}", ["KG-TIMESTAMP"] = ts,
      ["KG-SIGNATURE"] = mac}})
end
local i = 0
request = function()
  i = i + 1
  return requests[i] or requests[#requests]  -- past the end: replays (401s, counted)
end
"""
    )


def serve(variant: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"e2e_apps:{APP.get(variant, variant)}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=HERE,
        env={**os.environ, **env, "KG_BENCH_VARIANT": APP.get(variant, variant)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{variant}: uvicorn did not start")


def wrk(
    port: int, seconds: int, connections: int, headers: list[str], script: Path | None
) -> float:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(  # noqa: S603
        [*argv, f"http://127.0.0.1:{port}/v1/x"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw refusals from {headers or script}: {out}")
    line = next(line for line in out.splitlines() if line.startswith("Requests/sec"))
    return float(line.split()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian: apt-get install wrk)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = prepare(workdir)
        headers = {
            "bare": [],
            "header_dependency": [f"X-API-Key: {env['KG_BENCH_TOKEN']}"],
            "keyguard_bearer": [f"Authorization: Bearer {env['KG_BENCH_TOKEN']}"],
            "keyguard_signed": [],
            "bare_signed": [],
        }
        servers = {v: serve(v, env) for v in VARIANTS}
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        try:
            for v, (_, port) in servers.items():  # warm up: the first use loads the key
                script = None
                if v in SIGNED:
                    script = workdir / "warm.lua"
                    signed_script(script, env["KG_BENCH_ACCESS"], env["KG_BENCH_SECRET"], 20_000)
                wrk(port, 1, 4, headers[v], script)
            for round_ in range(args.rounds):
                for v in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
                    script = None
                    if v in SIGNED:  # fresh signatures, none seen before
                        script = workdir / f"{v}{round_}.lua"
                        count = 20_000 * args.seconds
                        signed_script(script, env["KG_BENCH_ACCESS"], env["KG_BENCH_SECRET"], count)
                    _, port = servers[v]
                    results[v].append(wrk(port, args.seconds, args.connections, headers[v], script))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)
    print(f"rounds: {args.rounds} x {args.seconds} s, {args.connections} connections, wrk -t1")
    print("| variant | requests/s (median) | range | compared with | ratio | goal |")
    print("|---|---:|---:|---|---:|---|")
    for v in VARIANTS:
        med = statistics.median(results[v])
        base = BASELINE.get(v, "bare")
        ratio = med / statistics.median(results[base])
        goal = GOALS.get(v)
        mark = "" if goal is None else f">= {goal:.2f} {'met' if ratio >= goal else 'NOT met'}"
        print(
            f"| {v} | {med:,.0f} | {min(results[v]):,.0f}-{max(results[v]):,.0f} "
            f"| {base} | {ratio:.3f} | {mark} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

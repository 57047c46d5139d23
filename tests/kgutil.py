"""Shared helpers for the core tests: a settable clock, counting stores, ASGI drivers.

The counting stores are real stores (subclasses of MemoryStore / SQLiteStore),
not mocks: they store and answer exactly as the parent does and only count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from keyguard import KeyGuard
from keyguard.models import KeyRecord
from keyguard.stores.memory import MemoryStore

T0 = 1_900_000_000.0  # a fixed "now" for tests that drive the clock


class Clock:
    """A clock the test moves by hand: `KeyGuard(clock=clock)`."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryStore):
    """A MemoryStore that counts get/touch calls and can hold `get` until released."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.gets = 0
        self.touches: list[dict[str, float]] = []
        self.hold: threading.Event | None = None
        self._count_lock = threading.Lock()

    def get(self, key_id: str) -> KeyRecord | None:
        with self._count_lock:
            self.gets += 1
        if self.hold is not None:
            self.hold.wait(5)
        return super().get(key_id)

    def touch(self, last_used: Mapping[str, tuple[float, str | None]]) -> None:
        self.touches.append({key_id: ts for key_id, (ts, _ip) in last_used.items()})
        super().touch(last_used)


def counting_guard(
    settings: Mapping[str, Any] | None = None, **kwargs: Any
) -> tuple[KeyGuard, CountingStore]:
    merged = {
        "store": "memory://",
        "policy": {"allow_private_ips": True},
        "abuse": {"max_failures": None},  # many failures per test; throttling has its own tests
        **(settings or {}),
    }
    store = CountingStore()
    return KeyGuard(merged, store=store, **kwargs), store


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def bad_checksum(token: str) -> str:
    """The same token with its last character changed (checksum no longer matches)."""
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


def other_secret(token: str) -> str:
    """A well-formed token (valid checksum) with the same id and a different secret."""
    from keyguard import tokens

    prefix, key_id, _ = token.split("_", 2)
    return tokens.make_token(prefix, key_id)[0]


async def run_websocket(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] = ("127.0.0.1", 5000),
    path: str = "/ws",
    http_response_ext: bool = True,
) -> list[dict[str, Any]]:
    """Drive one websocket connection through an ASGI app: connect, then disconnect.

    Returns every message the app sent. Used because httpx has no websocket
    transport and Starlette's TestClient warns under filterwarnings=error.
    """
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": client,
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if http_response_ext else {},
    }
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


DAY_S = 86_400.0


def break_sqlite(guard: KeyGuard, db: Any, aside: Any) -> None:
    """Make a sqlite store unreachable for real: drop its connection and put a
    directory where the database file was (works as root, unlike chmod)."""
    import os
    import shutil

    guard.store.close()
    aside.mkdir()
    for p in db.parent.glob(db.name + "*"):
        shutil.move(str(p), aside / p.name)
    os.mkdir(db)


def stop_process(proc: Any, timeout: float = 10.0) -> None:
    """Terminate a child process started by a test; kill it if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except Exception:  # subprocess.TimeoutExpired
        proc.kill()
        proc.wait(timeout=timeout)

"""Shared helpers for the signed-request tests: a settable clock, echo apps for
both doors, a door-agnostic HTTP client, and a local WSGI server thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.serving import make_server
from werkzeug.wrappers import Request as WRequest
from werkzeug.wrappers import Response as WResponse

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware as ASGIGuard
from keyguard.client import SignedAuth
from keyguard.crypto import generate_master_key
from keyguard.wsgi import KeyGuardMiddleware as WSGIGuard

MASTER = generate_master_key()
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


class Clock:
    """A clock the test moves by hand (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_guard(clock: Clock | None = None, **settings: Any) -> KeyGuard:
    base: dict[str, Any] = {
        "store": "memory://",
        "policy": {"allow_private_ips": True},
        "signing": {"master_keys": [MASTER]},
    }
    for key, value in settings.items():
        if key == "signing":
            base["signing"] = {**base["signing"], **value}
        else:
            base[key] = value
    return KeyGuard(base, clock=clock or time.time)


def signed(
    key_id: str,
    secret: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    now: float | None = None,
    profile: str = "kg",
    passphrase: str | None = None,
) -> dict[str, str]:
    """Headers for a request signed under `profile` at `now` (as `SignedAuth` signs)."""
    at = time.time() if now is None else now
    auth = SignedAuth(key_id, secret, passphrase, profile, clock=lambda: at)
    return auth.headers(method, path + ("?" + query if query else ""), body)


async def _asgi_echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "key": request.scope["keyguard.key"].id,
            "body": body.decode("latin-1"),
            "path": request.url.path,
        }
    )


def asgi_app(guard: KeyGuard) -> Any:
    app = Starlette(routes=[Route("/{path:path}", _asgi_echo, methods=METHODS)])
    app.add_middleware(ASGIGuard, guard=guard)
    return app


def _wsgi_echo(environ: dict[str, Any], start_response: Any) -> Any:
    request = WRequest(environ)
    body = request.get_data()
    payload = {
        "key": environ["keyguard.key"].id,
        "body": body.decode("latin-1"),
        "path": request.path,
    }
    return WResponse(json.dumps(payload), content_type="application/json")(environ, start_response)


def wsgi_app(guard: KeyGuard) -> Any:
    return WSGIGuard(_wsgi_echo, guard=guard)


class Door:
    """Sends requests over HTTP (httpx transports) to the ASGI or WSGI door."""

    def __init__(self, kind: str, guard: KeyGuard) -> None:
        self.kind = kind
        self.guard = guard
        if kind == "asgi":
            self._async = httpx.AsyncClient(
                transport=httpx.ASGITransport(asgi_app(guard)), base_url="http://t"
            )
        else:
            self._sync = httpx.Client(
                transport=httpx.WSGITransport(wsgi_app(guard)), base_url="http://t"
            )

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        **kw: Any,
    ) -> httpx.Response:
        if self.kind == "asgi":
            return await self._async.request(method, url, headers=headers, content=content, **kw)
        return self._sync.request(method, url, headers=headers, content=content, **kw)

    async def aclose(self) -> None:
        if self.kind == "asgi":
            await self._async.aclose()
        else:
            self._sync.close()


@contextlib.contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    """A real threaded werkzeug server on 127.0.0.1, port chosen by the OS."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

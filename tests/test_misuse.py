"""Misconfigurations a newcomer makes, and the clear answer each gets: the
middleware added twice (a start-up error, not every request counted twice),
`current_key` without the middleware (an error naming the fix, never "An API
key is required" when one was sent), and the middleware order with CORS that
the README shows (a preflight must not get 401)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from keyguard import AuthenticationError, ConfigurationError, KeyGuard, KeyInfo
from keyguard.asgi import KeyGuardMiddleware
from keyguard.fastapi import current_key
from keyguard.flask import KeyGuardExtension
from keyguard.wsgi import KeyGuardMiddleware as WSGIKeyGuardMiddleware

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture
def guard() -> Any:
    g = KeyGuard({"store": "memory://", "public_paths": ["/open", "/api/open"], "cache": None,
                  "policy": {"allow_private_ips": True}})  # fmt: skip
    yield g
    g.close()


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    def me(key: KeyInfo = Depends(current_key)) -> dict[str, str]:
        return {"name": key.name}

    @app.get("/open")
    def open_(key: KeyInfo = Depends(current_key)) -> dict[str, str]:
        return {"name": key.name}

    @app.post("/v1/chat")
    def chat(key: KeyInfo = Depends(current_key)) -> dict[str, str]:
        return {"name": key.name}

    return app


async def call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kw)


# --- the middleware added twice: refused when the app is built ----------------------


async def lifespan_start(app: Any) -> None:
    """What a server does first: the lifespan start-up, where Starlette builds its stack."""
    messages = [{"type": "lifespan.startup"}]

    async def receive() -> dict[str, str]:
        return messages.pop() if messages else {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)


@pytest.mark.parametrize("between", [False, True], ids=["adjacent", "cors-between"])
async def test_add_middleware_twice_fails_at_start_up(
    guard: KeyGuard, between: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = fastapi_app()
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    if between:
        app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    caplog.set_level(logging.ERROR, logger="keyguard")
    with pytest.raises(ConfigurationError) as info:
        await lifespan_start(app)
    assert "installed twice" in str(info.value)
    assert any("installed twice" in r.getMessage() for r in caplog.records)  # under uvicorn too


@pytest.mark.parametrize("inner", ["add_middleware", "wrapped"])
def test_wrapping_twice_fails_at_once(guard: KeyGuard, inner: str) -> None:
    app = fastapi_app()
    if inner == "add_middleware":
        app.add_middleware(KeyGuardMiddleware, guard=guard)
        wrapped: Any = app
    else:
        wrapped = KeyGuardMiddleware(app, guard=guard)
    with pytest.raises(ConfigurationError):
        KeyGuardMiddleware(wrapped, guard=guard)


def test_wsgi_twice_fails_at_once(guard: KeyGuard) -> None:
    def inner(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    once = WSGIKeyGuardMiddleware(inner, guard=guard)
    WSGIKeyGuardMiddleware(inner, guard=guard)  # another chain around the same app is fine
    with pytest.raises(ConfigurationError) as info:
        WSGIKeyGuardMiddleware(once, guard=guard)
    assert "installed twice" in str(info.value)


async def test_one_middleware_counts_each_request_once(guard: KeyGuard) -> None:
    app = fastapi_app()
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    issued = guard.keys.create(owner="o", name="n", max_uses=2)
    auth = {"Authorization": f"Bearer {issued.token}"}
    assert [(await call(app, "GET", "/me", headers=auth)).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]


# --- current_key without the middleware ----------------------------------------------


async def test_fastapi_current_key_without_the_middleware_names_the_fix(guard: KeyGuard) -> None:
    app = fastapi_app()  # no add_middleware
    issued = guard.keys.create(owner="o", name="n")
    with pytest.raises(ConfigurationError) as info:
        await call(app, "GET", "/me", headers={"Authorization": f"Bearer {issued.token}"})
    message = str(info.value)
    assert "keyguard.fastapi.current_key needs the KeyGuard middleware" in message
    assert "app.add_middleware(KeyGuardMiddleware, guard=guard)" in message
    assert "API key is required" not in message and issued.token not in message


@pytest.mark.parametrize("how", ["add_middleware", "wrapped", "mounted", "wrapped-mounted"])
async def test_current_key_on_a_public_path_is_missing_credentials_however_installed(
    guard: KeyGuard, how: str
) -> None:
    """With the middleware, a public path is `missing_credentials` (no key is checked
    there), never the misconfiguration error: installed any of the usual ways."""
    app: Any = fastapi_app()
    path = "/open"
    if how.endswith("mounted"):
        app = Starlette(routes=[Mount("/api", app=app)])
        path = "/api/open"
    if how in ("add_middleware", "mounted"):
        app.add_middleware(KeyGuardMiddleware, guard=guard)
    else:
        app = KeyGuardMiddleware(app, guard=guard)
    headers = {"Authorization": "Bearer kg_sent"}
    if how == "add_middleware":
        r = await call(app, "GET", path, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "missing_credentials", r.text
        assert "public" in r.json()["detail"]
        return
    # Around (or above) a FastAPI app, FastAPI's own ServerErrorMiddleware meets the
    # dependency's error before the door can render it; what matters here is which error.
    with pytest.raises(AuthenticationError) as info:
        await call(app, "GET", path, headers=headers)
    assert info.value.code == "missing_credentials"


# --- CORS: the order the README shows -------------------------------------------------


async def test_fastapi_cors_outside_keyguard(guard: KeyGuard) -> None:
    issued = guard.keys.create(owner="o", name="web")
    right = fastapi_app()
    right.add_middleware(KeyGuardMiddleware, guard=guard)  # added first: inner
    right.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["*"],
                         allow_headers=["authorization", "content-type"])  # fmt: skip
    r = await call(right, "OPTIONS", "/v1/chat", headers=PREFLIGHT)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = await call(right, "POST", "/v1/chat", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN  # readable
    auth = {"Origin": ORIGIN, "Authorization": f"Bearer {issued.token}"}
    r = await call(right, "POST", "/v1/chat", headers=auth)
    assert r.status_code == 200 and r.json() == {"name": "web"}

    wrong = fastapi_app()
    wrong.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["*"])
    wrong.add_middleware(KeyGuardMiddleware, guard=guard)  # added last: outermost
    r = await call(wrong, "OPTIONS", "/v1/chat", headers=PREFLIGHT)
    assert r.status_code == 401  # what the README warns about


def test_flask_cors_preflight_passes_around_keyguard(guard: KeyGuard) -> None:
    """The README's Flask snippet: preflights go to the app (flask-cors answers them),
    everything else through keyguard."""
    flask_cors = pytest.importorskip("flask_cors")
    issued = guard.keys.create(owner="o", name="web")
    app = Flask(__name__)

    @app.post("/v1/chat")
    def chat() -> dict[str, str]:
        from keyguard.flask import current_key as key

        return {"name": key.name}

    flask_cors.CORS(app, origins=[ORIGIN])
    KeyGuardExtension(app, guard=guard)
    # -- the README's lines --
    guarded, unguarded = app.wsgi_app, app.wsgi_app.app  # type: ignore[attr-defined]

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        preflight = environ["REQUEST_METHOD"] == "OPTIONS" and (
            "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        )
        return (unguarded if preflight else guarded)(environ, start_response)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    # -- end --
    client = app.test_client()
    r = client.options("/v1/chat", headers=PREFLIGHT)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert client.post("/v1/chat", headers={"Origin": ORIGIN}).status_code == 401
    auth = {"Origin": ORIGIN, "Authorization": f"Bearer {issued.token}"}
    r = client.post("/v1/chat", headers=auth)
    assert r.status_code == 200 and r.json == {"name": "web"}
    r = client.open("/v1/chat", method="OPTIONS")  # a plain OPTIONS is no preflight: guarded
    assert r.status_code == 401

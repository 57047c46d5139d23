"""The ASGI door over HTTP (httpx.ASGITransport) on Starlette and FastAPI apps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from keyguard import AuthorizationError, ConfigurationError, KeyGuard
from keyguard.asgi import KeyGuardMiddleware
from keyguard.tokens import make_token

from .doors import OK, PARAMS, ROUTES, World, check_response, make_world, render
from .kgutil import run_websocket


def _key_name(request: Request) -> Any:
    key = request.scope.get("keyguard.key")
    return None if key is None else key.name


def starlette_app(world: World) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        world.calls.append(request.url.path)
        return JSONResponse({"key": _key_name(request)})

    @requires("admin")
    async def admin(request: Request) -> PlainTextResponse:
        world.calls.append("admin")
        return PlainTextResponse(f"hello {request.user.display_name} {request.user.identity}")

    async def raises(request: Request) -> JSONResponse:
        world.calls.append("raises")
        raise AuthorizationError("insufficient_scope", "Needs more.", scopes=["deep"])

    async def ws(websocket: WebSocket) -> None:
        world.calls.append("ws")
        await websocket.accept()
        await websocket.send_text(websocket.scope["keyguard.key"].name)
        await websocket.close()

    routes = [Route(path, endpoint, methods=methods) for path, methods in ROUTES]
    routes += [Route("/needs-admin", admin), Route("/raises", raises), WebSocketRoute("/ws", ws)]
    return Starlette(routes=routes)


def fastapi_app(world: World) -> FastAPI:
    app = FastAPI()

    for path, methods in ROUTES:

        async def endpoint(request: Request) -> dict[str, Any]:
            world.calls.append(request.url.path)
            return {"key": _key_name(request)}

        app.add_api_route(path, endpoint, methods=methods)
    app.add_middleware(KeyGuardMiddleware, guard=world.guard)
    return app


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


def build(kind: str, world: World) -> Any:
    if kind == "starlette":
        app = starlette_app(world)
        app.add_middleware(KeyGuardMiddleware, guard=world.guard)
        return app
    if kind == "wrapped":  # the middleware outside the whole Starlette app
        return KeyGuardMiddleware(starlette_app(world), guard=world.guard)
    return fastapi_app(world)


async def request(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    peer: str | None = None,
    raise_app_exceptions: bool = True,
) -> httpx.Response:
    kwargs: dict[str, Any] = {} if peer is None else {"client": (peer, 4711)}
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions, **kwargs)
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=raw)


@pytest.mark.parametrize("kind", ["starlette", "wrapped", "fastapi"])
@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "peer", "status", "expected", "wsgi"), PARAMS
)
async def test_request_table(
    kind: str,
    world: World,
    case: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    peer: str | None,
    status: int,
    expected: str | None,
    wsgi: Any,
) -> None:
    app = build(kind, world)
    before = len(world.calls)
    resp = await request(app, method, path, render(headers, world.tokens), peer)
    check_response(resp.status_code, resp.headers, resp.content, status, expected, world.tokens)
    # a rejection never reaches the app; a pass reaches it once
    assert len(world.calls) - before == (1 if status == OK else 0)


async def test_head_follows_get_rule(world: World) -> None:
    app = build("starlette", world)
    resp = await request(
        app, "HEAD", "/v1/models", [("X-API-Key", world.tokens["pinned"])], "8.8.8.8"
    )
    assert resp.status_code == 403
    resp = await request(app, "HEAD", "/v1/models", [("X-API-Key", world.tokens["narrow"])])
    assert resp.status_code == 200


async def test_starlette_requires_sees_scopes(world: World) -> None:
    app = build("starlette", world)
    admin = world.guard.keys.create(owner="o", name="boss", scopes=["admin"]).token
    assert admin is not None
    resp = await request(app, "GET", "/needs-admin", [("Authorization", f"Bearer {admin}")])
    assert resp.status_code == 200
    assert resp.text.startswith("hello boss ")
    resp = await request(
        app, "GET", "/needs-admin", [("Authorization", f"Bearer {world.tokens['full']}")]
    )
    assert resp.status_code == 403  # Starlette's own answer


async def test_rejection_raised_by_the_app_is_rendered(world: World) -> None:
    app = build("starlette", world)
    resp = await request(app, "GET", "/raises", [("X-API-Key", world.tokens["full"])])
    assert resp.status_code == 403 and resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "insufficient_scope"
    assert (
        resp.headers["www-authenticate"]
        == 'Bearer realm="api", error="insufficient_scope", scope="deep"'
    )


async def test_rejection_after_app_answered_is_not_sent_twice(world: World) -> None:
    # Wrapped outside the Starlette app, Starlette's ServerErrorMiddleware answers
    # first (500); the middleware must not start a second response.
    app = build("wrapped", world)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/raises",
        "raw_path": b"/raises",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "headers": [(b"x-api-key", world.tokens["full"].encode())],
    }
    with pytest.raises(AuthorizationError):
        await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [500]


async def test_settings_instead_of_guard() -> None:
    inner = Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))])
    mw = KeyGuardMiddleware(inner, settings={"store": "memory://"})
    issued = mw.guard.keys.create(owner="o", name="n")
    assert (await request(mw, "GET", "/", [])).status_code == 401
    assert (await request(mw, "GET", "/", [("X-API-Key", issued.token or "")])).status_code == 200
    with pytest.raises(ConfigurationError):
        KeyGuardMiddleware(inner, guard=mw.guard, settings={"store": "memory://"})
    with pytest.raises(ConfigurationError):
        KeyGuardMiddleware(inner, settings={"colour": "red"})


async def test_custom_header_name() -> None:
    mw = KeyGuardMiddleware(
        Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))]),
        settings={"store": "memory://", "header": "X-Service-Token"},
    )
    issued = mw.guard.keys.create(owner="o", name="n")
    assert (
        await request(mw, "GET", "/", [("X-Service-Token", issued.token or "")])
    ).status_code == 200
    assert (await request(mw, "GET", "/", [("X-API-Key", issued.token or "")])).status_code == 401


# -- websocket ---------------------------------------------------------------


@pytest.mark.parametrize("ext", [True, False], ids=["http-response-ext", "no-ext"])
async def test_websocket_rejected_before_accept(world: World, ext: bool) -> None:
    app = build("starlette", world)
    before = len(world.calls)
    sent = await run_websocket(app, [], http_response_ext=ext)
    assert len(world.calls) == before
    assert all(m["type"] != "websocket.accept" for m in sent)
    if ext:
        assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
        assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
        assert b"missing_credentials" in sent[1]["body"]
    else:
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_credentials"}]


async def test_websocket_refused_key(world: World) -> None:
    app = build("starlette", world)
    sent = await run_websocket(app, [(b"x-api-key", world.tokens["revoked"].encode())])
    assert sent[0]["status"] == 401 and b"revoked_key" in sent[1]["body"]
    sent = await run_websocket(
        app, [(b"x-api-key", world.tokens["pinned"].encode())], client=("1.1.1.1", 1)
    )
    assert sent[0]["status"] == 403 and b"ip_not_allowed" in sent[1]["body"]


async def test_websocket_accepted_with_key(world: World) -> None:
    app = build("starlette", world)
    sent = await run_websocket(app, [(b"authorization", f"Bearer {world.tokens['full']}".encode())])
    assert sent[0]["type"] == "websocket.accept"
    assert (
        sent[1] == {"type": "websocket.send", "text": "full", "bytes": None}
        or sent[1].get("text") == "full"
    )


# -- lifespan ----------------------------------------------------------------


async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        seen.append(message["type"])
        await send({"type": "lifespan.startup.complete"})

    mw = KeyGuardMiddleware(inner, settings={"store": "memory://"})
    out: list[Any] = []

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        out.append(message)

    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert seen == ["lifespan.startup"] and out == [{"type": "lifespan.startup.complete"}]


# -- the store unreachable ---------------------------------------------------


async def test_store_unreachable_503_while_cached_key_works(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    g = KeyGuard({"store": f"sqlite:///{db}", "policy": {"allow_private_ips": True}})
    warm = g.keys.create(owner="o", name="warm").token or ""
    cold = g.keys.create(owner="o", name="cold").token or ""
    calls: list[str] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        calls.append("x")
        return PlainTextResponse("ok")

    app = KeyGuardMiddleware(Starlette(routes=[Route("/", endpoint)]), guard=g)
    assert (await request(app, "GET", "/", [("X-API-Key", warm)])).status_code == 200
    # drop the connection and put a directory where the database was (chmod does not stop root)
    g.store.close()
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in tmp_path.glob("keys.db*"):
        shutil.move(str(p), aside / p.name)
    os.mkdir(db)

    resp = await request(app, "GET", "/", [("X-API-Key", cold)])
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "unavailable" and resp.headers["retry-after"]
    assert cold not in resp.text
    fake = make_token("kg", "W" * 16)[0]
    assert (await request(app, "GET", "/", [("X-API-Key", fake)])).status_code == 503
    assert (await request(app, "GET", "/", [("X-API-Key", warm)])).status_code == 200
    assert calls == ["x", "x"]


APP_SOURCE = """
import os
from fastapi import FastAPI
from keyguard.asgi import KeyGuardMiddleware

app = FastAPI()
app.add_middleware(KeyGuardMiddleware, settings={"store": os.environ["KG_STORE"]})

@app.get("/v1/x")
def x():
    return {"ok": True}
"""


def test_a_last_use_reaches_the_store_when_uvicorn_is_stopped_with_sigterm(
    tmp_path: Path,
) -> None:
    """uvicorn ends a SIGTERM'd process by that signal after its shutdown, so atexit
    never runs: the door writes the buffered last uses on lifespan.shutdown."""
    import subprocess
    import sys
    import time

    from . import servers
    from .kgutil import stop_process, wait_for

    store = f"sqlite:///{tmp_path / 'k.db'}"
    guard = KeyGuard({"store": store})
    issued = guard.keys.create(owner="o", name="n")
    (tmp_path / "app.py").write_text(APP_SOURCE)
    port = servers.free_port()
    env = {**os.environ, "KG_STORE": store}
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/x"

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 401
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout=20)
        r = httpx.get(url, headers={"Authorization": f"Bearer {issued.token}"}, timeout=5)
        assert r.status_code == 200
        started = time.monotonic()
        proc.terminate()  # SIGTERM
        proc.wait(timeout=15)
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            stop_process(proc)
    info = guard.keys.get(issued.id)
    assert info.last_used_at is not None and info.last_used_from == "127.0.0.1"
    guard.close()

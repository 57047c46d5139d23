"""The WSGI door over HTTP: a Flask app behind KeyGuardMiddleware, played through
httpx.WSGITransport and Flask's test client (REMOTE_ADDR varied)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from flask import Flask, request

from keyguard import ConfigurationError
from keyguard.wsgi import KeyGuardMiddleware

from .doors import OK, PARAMS, ROUTES, World, check_response, make_world, render


def flask_app(world: World) -> Flask:
    app = Flask(__name__)

    def endpoint() -> dict[str, Any]:
        world.calls.append(request.path)
        key = request.environ.get("keyguard.key")
        return {"key": None if key is None else key.name}

    for path, methods in ROUTES:
        app.add_url_rule(path, endpoint=path, view_func=endpoint, methods=methods)
    app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=world.guard)  # type: ignore[method-assign]
    return app


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def app(world: World) -> Flask:
    return flask_app(world)


def expected_for_wsgi(status: int, expected: str | None, wsgi: Any) -> tuple[int, str | None]:
    return (status, expected) if wsgi is None else wsgi


@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "peer", "status", "expected", "wsgi"), PARAMS
)
def test_request_table_flask_client(
    app: Flask,
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
    status, expected = expected_for_wsgi(status, expected, wsgi)
    before = len(world.calls)
    environ = {"REMOTE_ADDR": peer or "127.0.0.1"}
    resp = app.test_client().open(
        path, method=method, headers=render(headers, world.tokens), environ_base=environ
    )
    check_response(resp.status_code, resp.headers, resp.get_data(), status, expected, world.tokens)
    assert len(world.calls) - before == (1 if status == OK else 0)


# httpx's WSGITransport keeps only the last of repeated headers (real servers join them, as
# Flask's client does) and cannot carry non-ASCII header bytes: those rows run above only.
REPEATED = {"two-authorization", "two-authorization-same", "two-keys-different", "two-keys-same"}
HTTPX_PARAMS = [
    p
    for p in PARAMS
    if p.values[-1] is None
    and not p.values[0].startswith("non-ascii")
    and p.values[0] not in REPEATED
]


@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "peer", "status", "expected", "wsgi"), HTTPX_PARAMS
)
def test_request_table_httpx(
    app: Flask,
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
    before = len(world.calls)
    transport = httpx.WSGITransport(app=app, remote_addr=peer or "127.0.0.1")
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in render(headers, world.tokens)]
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        resp = client.request(method, path, headers=raw)
    check_response(resp.status_code, resp.headers, resp.content, status, expected, world.tokens)
    assert len(world.calls) - before == (1 if status == OK else 0)


def test_rules_match_the_path_below_the_mount_point(world: World) -> None:
    """Mounted under a prefix (SCRIPT_NAME), the app routes PATH_INFO; rules match that."""
    seen: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["keyguard.key"].name)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    # Its rule is for /v1/chat/*; httpx sends the URL path as PATH_INFO, SCRIPT_NAME apart.
    mw = KeyGuardMiddleware(inner, guard=world.guard)
    transport = httpx.WSGITransport(app=mw, script_name="/api")
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        narrow = client.post("/v1/chat/x", headers={"X-API-Key": world.tokens["narrow"]})
        full = client.post("/v1/chat/x", headers={"X-API-Key": world.tokens["full"]})
    assert (narrow.status_code, full.status_code) == (403, 200)
    assert seen == ["full"]


def test_settings_instead_of_guard() -> None:
    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mw = KeyGuardMiddleware(inner, settings={"store": "memory://"})
    issued = mw.guard.keys.create(owner="o", name="n")
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as client:
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"X-API-Key": issued.token or ""}).status_code == 200
    with pytest.raises(ConfigurationError):
        KeyGuardMiddleware(inner, guard=mw.guard, settings={"store": "memory://"})


def test_store_unreachable_503_while_cached_key_works(tmp_path: Any) -> None:
    from keyguard import KeyGuard
    from keyguard.tokens import make_token

    from .kgutil import break_sqlite

    db = tmp_path / "keys.db"
    g = KeyGuard({"store": f"sqlite:///{db}"})
    warm = g.keys.create(owner="o", name="warm").token or ""
    cold = g.keys.create(owner="o", name="cold").token or ""
    calls: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append("x")
        start_response("200 OK", [])
        return [b"ok"]

    client = httpx.Client(
        transport=httpx.WSGITransport(app=KeyGuardMiddleware(inner, guard=g)), base_url="http://t"
    )
    assert client.get("/", headers={"X-API-Key": warm}).status_code == 200
    break_sqlite(g, db, tmp_path / "aside")
    resp = client.get("/", headers={"X-API-Key": cold})
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable"
    assert resp.headers["content-type"] == "application/problem+json" and cold not in resp.text
    fake = make_token("kg", "V" * 16)[0]
    assert client.get("/", headers={"Authorization": f"Bearer {fake}"}).status_code == 503
    assert client.get("/", headers={"X-API-Key": warm}).status_code == 200
    assert calls == ["x", "x"]
    client.close()

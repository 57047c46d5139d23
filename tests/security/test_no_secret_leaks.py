"""The leak watch of tests/conftest.py is live: planted leaks are caught, in
every place it watches, so the suite-wide check cannot pass vacuously."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import AuthorizationError, KeyGuard, StoreError
from keyguard.asgi import KeyGuardMiddleware as ASGIMiddleware
from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

from .leakwatch import SecretWatch


@pytest.fixture
def watch(secret_watch: SecretWatch) -> Iterator[SecretWatch]:
    yield secret_watch
    secret_watch.leaks.clear()  # the planted leaks are this test's own doing


@pytest.fixture
def issued(guard: KeyGuard) -> tuple[KeyGuard, str]:
    return guard, guard.keys.create(owner="o", name="n", passphrase="correct horse").token  # type: ignore[return-value]


def _caught(watch: SecretWatch) -> bool:
    found = bool(watch.leaks)
    watch.leaks.clear()
    return found


def test_issued_tokens_and_passphrases_are_recorded(
    watch: SecretWatch, issued: tuple[KeyGuard, str]
) -> None:
    _guard, token = issued
    assert token.split("_", 2)[2][:24] in watch.token_parts
    assert "correct horse" in watch.others


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(
            lambda t: logging.getLogger("keyguard.x").debug("t=%s", t), id="keyguard-debug-log"
        ),
        pytest.param(
            lambda t: logging.getLogger("someapp").warning("t=%s!", t), id="any-warning-log"
        ),
        pytest.param(
            lambda t: logging.getLogger("someapp").error("oops", exc_info=ValueError(t)),
            id="log-exc",
        ),
        pytest.param(lambda t: StoreError(f"cannot store {t}"), id="exception-message"),
        pytest.param(
            lambda t: AuthorizationError("insufficient_scope", f"x{t[10:]}y"), id="cut-token"
        ),
    ],
)
def test_planted_leak_is_caught(watch: SecretWatch, issued: tuple[KeyGuard, str], plant) -> None:
    _guard, token = issued
    assert not watch.leaks
    plant(token)
    assert _caught(watch)


def test_passphrase_in_log_is_caught(watch: SecretWatch, issued: tuple[KeyGuard, str]) -> None:
    logging.getLogger("keyguard").warning("pass %s", "correct horse")
    assert _caught(watch)


async def test_leak_in_asgi_body_is_caught(
    watch: SecretWatch, issued: tuple[KeyGuard, str]
) -> None:
    guard, token = issued

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.headers["authorization"])

    app = Starlette(routes=[Route("/", echo)])
    app.add_middleware(ASGIMiddleware, guard=guard)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get(
            "/", headers={"Authorization": f"Bearer {token}", "KG-Passphrase": "correct horse"}
        )
    assert r.status_code == 200
    assert _caught(watch)


def test_leak_in_wsgi_body_is_caught(watch: SecretWatch, issued: tuple[KeyGuard, str]) -> None:
    guard, token = issued

    def app(environ, start_response):
        start_response("200 OK", [("content-type", "text/plain")])
        return [environ["HTTP_AUTHORIZATION"].encode()]

    with httpx.Client(
        transport=httpx.WSGITransport(app=WSGIMiddleware(app, guard=guard)), base_url="http://t"
    ) as c:
        r = c.get(
            "/", headers={"Authorization": f"Bearer {token}", "KG-Passphrase": "correct horse"}
        )
    assert r.status_code == 200
    assert _caught(watch)


async def test_leak_in_a_rejection_rendered_by_the_door_is_caught(
    watch: SecretWatch, issued: tuple[KeyGuard, str]
) -> None:
    guard, token = issued

    async def bad(request: Request) -> PlainTextResponse:
        raise AuthorizationError("insufficient_scope", detail=f"no {token[-30:]}")

    app = Starlette(routes=[Route("/", bad)])
    app.add_middleware(ASGIMiddleware, guard=guard)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get(
            "/", headers={"Authorization": f"Bearer {token}", "KG-Passphrase": "correct horse"}
        )
    assert r.status_code == 403
    assert _caught(watch)


def test_clean_traffic_is_scanned_and_passes(
    watch: SecretWatch, issued: tuple[KeyGuard, str]
) -> None:
    guard, token = issued

    def app(environ, start_response):
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"hello"]

    before = watch.scanned
    with httpx.Client(
        transport=httpx.WSGITransport(app=WSGIMiddleware(app, guard=guard)), base_url="http://t"
    ) as c:
        assert c.get("/", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
        ok = c.get(
            "/", headers={"Authorization": f"Bearer {token}", "KG-Passphrase": "correct horse"}
        )
        assert ok.status_code == 200
    assert watch.scanned > before
    assert not watch.leaks

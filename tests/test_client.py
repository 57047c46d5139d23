"""`keyguard.client.SignedAuth` with httpx (sync and async) and requests, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from keyguard import KeyGuard
from keyguard.client import SignedAuth

from .signing_util import Clock, asgi_app, make_guard, wsgi_app, wsgi_server

PROFILES = [pytest.param(p, id=p) for p in ("kg", "bitget", "okx", "bybit", "rfc9421")]
# bybit and rfc9421 have no passphrase header of their own: name one (server and client alike)
PASSPHRASE_HEADER = {
    "bybit": {"passphrase": "X-KG-Passphrase"},
    "rfc9421": {"passphrase": "X-KG-Passphrase"},
}
REQUESTS = [
    pytest.param("GET", "/items", {}, id="get"),
    pytest.param("GET", "/items/a%20b", {"params": {"q": "x/y", "z": "1"}}, id="get-encoded"),
    pytest.param(
        "GET", "/assets", {"params": {"coin": "USDT,BTC", "n": "a b ü"}}, id="get-decoded"
    ),
    pytest.param("POST", "/orders", {"json": {"side": "buy", "size": "8"}}, id="post-json"),
    pytest.param("POST", "/orders", {"content": b""}, id="post-empty"),
    pytest.param("PUT", "/blob", {"content": bytes(range(256))}, id="put-bytes"),
    pytest.param("DELETE", "/items/1", {}, id="delete"),
]


@pytest.fixture(params=PROFILES)
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[KeyGuard, Any]]:
    headers = PASSPHRASE_HEADER.get(request.param, {})
    guard = make_guard(signing={"profile": request.param, "headers": headers})
    issued = guard.keys.create(
        owner="acme", name="client", kind="signing", passphrase="open sesame!"
    )
    yield guard, issued
    guard.close()


def _auth(guard: KeyGuard, issued: Any, **kw: Any) -> SignedAuth:
    profile = guard.settings.signing.profile
    return SignedAuth(
        issued.info.id,
        issued.secret,
        "open sesame!",
        profile,
        headers=PASSPHRASE_HEADER.get(profile),
        **kw,
    )


@pytest.mark.parametrize(("method", "url", "kwargs"), REQUESTS)
async def test_httpx_async_client(
    setup: tuple[KeyGuard, Any], method: str, url: str, kwargs: dict[str, Any]
) -> None:
    guard, issued = setup
    transport = httpx.ASGITransport(asgi_app(guard))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", auth=_auth(guard, issued)
    ) as c:
        r = await c.request(method, url, **kwargs)
    assert r.status_code == 200, r.text
    assert r.json()["key"] == issued.info.id


@pytest.mark.parametrize(("method", "url", "kwargs"), REQUESTS)
def test_httpx_sync_client(
    setup: tuple[KeyGuard, Any], method: str, url: str, kwargs: dict[str, Any]
) -> None:
    guard, issued = setup
    with httpx.Client(transport=httpx.WSGITransport(wsgi_app(guard)), base_url="http://t") as c:
        r = c.request(method, url, auth=_auth(guard, issued), **kwargs)
    assert r.status_code == 200, r.text
    assert r.json()["key"] == issued.info.id


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        *REQUESTS,
        pytest.param("POST", "/form", {"data": {"a": "1", "b": "two words"}}, id="post-form"),
        pytest.param("POST", "/text", {"data": "héllo wörld"}, id="post-str-body"),
    ],
)
def test_requests_against_a_real_wsgi_server(
    setup: tuple[KeyGuard, Any], method: str, url: str, kwargs: dict[str, Any]
) -> None:
    guard, issued = setup
    if "content" in kwargs:  # requests spells it data=
        kwargs = {"data": kwargs["content"]}
    with wsgi_server(wsgi_app(guard)) as base, requests.Session() as s:
        s.trust_env = False  # loopback only, never a proxy from the environment
        r = s.request(method, base + url, auth=_auth(guard, issued), timeout=5, **kwargs)
    assert r.status_code == 200, r.text
    assert r.json()["key"] == issued.info.id


def test_requests_streamed_body_cannot_be_signed(setup: tuple[KeyGuard, Any]) -> None:
    guard, issued = setup
    prepared = requests.Request("POST", "http://t/x", data=iter([b"a", b"b"])).prepare()
    with pytest.raises(ValueError, match="streamed"):
        _auth(guard, issued)(prepared)


async def test_wrong_secret_and_wrong_passphrase_are_refused() -> None:
    guard = make_guard()
    issued = guard.keys.create(owner="a", name="n", kind="signing", passphrase="open sesame!")
    transport = httpx.ASGITransport(asgi_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/x", auth=SignedAuth(issued.info.id, "x" * 43, "open sesame!"))
        assert r.status_code == 401 and r.json()["code"] == "invalid_signature"
        r = await c.get("/x", auth=SignedAuth(issued.info.id, issued.secret, "wrong phrase"))
        assert r.status_code == 401 and r.json()["code"] == "invalid_passphrase"
    guard.close()


def test_clock_is_used_and_secret_never_shown() -> None:
    clock = Clock()
    clock.now = 1607418537.715
    auth = SignedAuth("A" * 16, "s3cr3t-value", profile="okx", clock=clock)
    headers = auth.headers("get", "/api/v5/account/balance?ccy=BTC", b"")
    assert headers["OK-ACCESS-TIMESTAMP"] == "2020-12-08T09:08:57.715Z"
    assert "OK-ACCESS-PASSPHRASE" not in headers
    assert "s3cr3t" not in repr(auth)
    with pytest.raises(ValueError, match="profile"):
        SignedAuth("A" * 16, "s", profile="aws")

"""Property tests over HTTP, both doors: whatever headers, schemes, token-shaped
strings, forwarding chains and peers arrive, keyguard answers without a 5xx,
never passes a request that lacks the live key, never shows a traceback, and
every refusal is problem+json with a code from SPEC section 5."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware as ASGIMiddleware
from keyguard.crypto import generate_master_key
from keyguard.tokens import ALPHABET, CHECKSUM_LEN, ID_LEN, SECRET_LEN, checksum
from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

CODES = {
    "missing_credentials",
    "invalid_request",
    "invalid_key",
    "expired_key",
    "revoked_key",
    "invalid_passphrase",
    "invalid_signature",
    "stale_request",
    "replayed_request",
    "ip_not_allowed",
    "insufficient_scope",
    "rate_limited",
    "too_many_failures",
    "quota_exhausted",
    "payload_too_large",
    "unavailable",
    "suspended_key",
    "tls_required",
}
SKIP_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
}
PATHS = ["/", "/admin", "/health", "/v1/x", "/%2e%2e/admin", "/admin/", "/ADMIN"]

MASTER = generate_master_key()
GUARD = KeyGuard(
    {
        "store": "memory://",
        "policy": {"allow_private_ips": True},
        "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
        "public_paths": ["/health"],
        "rules": [{"path": "/admin*", "scopes": ["admin"]}],
        "abuse": {"max_failures": None},  # throttling would turn most examples into 429s
        "signing": {"master_keys": [MASTER]},  # so signed-request headers are parsed too
    }
)
LIVE = GUARD.keys.create(owner="o", name="live", scopes=["read"]).token
LOCKED = GUARD.keys.create(owner="o", name="locked", allowed_ips=["192.0.2.0/24"]).token
PASS = GUARD.keys.create(owner="o", name="pass", passphrase="right passphrase").token
DEAD = GUARD.keys.create(owner="o", name="dead").token
GUARD.keys.revoke(DEAD.split("_")[1])
LIVE_TOKENS = (LIVE, LOCKED, PASS)
ASSERT_TOKENS = (LIVE, LOCKED, PASS, DEAD)

base62 = st.text(alphabet=ALPHABET, min_size=1, max_size=8)


@st.composite
def token_shaped(draw: st.DrawFn) -> str:
    key_id = draw(
        st.sampled_from([LIVE.split("_")[1], DEAD.split("_")[1]])
        | st.text(ALPHABET, min_size=ID_LEN, max_size=ID_LEN)
    )
    secret = draw(st.text(ALPHABET, min_size=SECRET_LEN, max_size=SECRET_LEN))
    prefix = draw(st.sampled_from(["kg", "KG", "kg_", "sk"]))
    body = f"{prefix}_{key_id}_{secret}"
    check = draw(
        st.just(checksum(body)) | st.text(ALPHABET, min_size=CHECKSUM_LEN, max_size=CHECKSUM_LEN)
    )
    return body + check


def mutated(token: str) -> st.SearchStrategy[str]:
    i = st.integers(0, len(token) - 1)
    return st.one_of(
        st.just(token),
        i.map(lambda n: token[:n]),
        st.tuples(i, st.sampled_from(ALPHABET)).map(
            lambda t: token[: t[0]] + t[1] + token[t[0] + 1 :]
        ),
        base62.map(lambda s: token + s),
        st.just(f" {token} "),
        st.just(token.upper()),
    )


tokens = st.one_of(
    token_shaped(),
    st.sampled_from(ASSERT_TOKENS).flatmap(mutated),
    st.text(max_size=80).filter(lambda s: s.isprintable()),
)
ip_text = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(
        [
            "10.0.0.1",
            "10.1.2.3",
            "192.0.2.7",
            "fd00::1",
            "unknown",
            "_hidden",
            "[::1]:80",
            "1.2.3.4:5",
            "",
        ]
    ),
    st.text(alphabet="0123456789abcdef.:[]%_ ", max_size=20),
)
xff = st.lists(ip_text, max_size=4).map(", ".join)
forwarded = st.lists(
    st.tuples(
        st.sampled_from(["for", "For", "by", "proto"]), ip_text.map(lambda s: f'"{s}"') | ip_text
    ),
    max_size=3,
).map(lambda pairs: ", ".join(f"{k}={v}" for k, v in pairs))
scheme = st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "Digest", ""]) | st.text(
    alphabet=ALPHABET, max_size=8
)
header_name = st.text(alphabet=ALPHABET + "-_", min_size=1, max_size=20).filter(
    lambda n: n.lower() not in SKIP_HEADERS
)
header_value = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, list[tuple[str, bytes]]]:
    headers: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Authorization", f"{draw(scheme)} {draw(tokens)}".encode()))
    if draw(st.booleans()):
        headers.append(("X-API-Key", draw(tokens).encode()))
    if draw(st.booleans()):
        headers.append(("X-Forwarded-For", draw(xff).encode()))
    if draw(st.booleans()):
        headers.append(("Forwarded", draw(forwarded).encode()))
    if draw(st.booleans()):
        headers.append(
            ("KG-Passphrase", draw(st.sampled_from(["right passphrase", "wrong", ""])).encode())
        )
    if draw(st.booleans()):  # a signed request's headers, well-formed or not
        for name in draw(
            st.sets(st.sampled_from(["KG-ACCESS-KEY", "KG-TIMESTAMP", "KG-SIGNATURE"]))
        ):
            value = draw(
                st.sampled_from([LIVE.split("_")[1], str(int(time.time() * 1000)), "x" * 44, ""])
                | st.text(alphabet=ALPHABET + "+/=²٣ -", max_size=50)
            )
            headers.append((name, value.encode()))
    headers += draw(st.lists(st.tuples(header_name, header_value), max_size=4))
    peer = draw(
        st.sampled_from(["10.0.0.1", "127.0.0.1", "192.0.2.9", "203.0.113.9", "fd00::2"]) | ip_text
    )
    return (
        draw(st.sampled_from(["GET", "POST", "DELETE", "HEAD"])),
        draw(st.sampled_from(PATHS)),
        peer,
        headers,
    )


def ascii_only(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """httpx's WSGI transport decodes header values as ASCII; real WSGI servers pass latin-1."""
    return [(n, bytes(c for c in v if c < 0x7F)) for n, v in headers]


def check(
    method: str, path: str, headers: list[tuple[str, bytes]], response: httpx.Response
) -> None:
    assert response.status_code < 500, response.text
    text = response.text
    assert "Traceback" not in text and 'File "' not in text
    if response.status_code < 400:
        public = path == "/health"
        sent = b" ".join(v for n, v in headers if n.lower() in ("authorization", "x-api-key"))
        assert public or any(t.encode() in sent for t in LIVE_TOKENS), (method, path, headers)
        return
    assert response.headers["content-type"] == "application/problem+json"
    if method == "HEAD":
        return
    doc = json.loads(text)
    assert doc["code"] in CODES
    assert doc["status"] == response.status_code
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


ASGI_APP = Starlette(routes=[Route("/{p:path}", _ok, methods=["GET", "POST", "DELETE", "HEAD"])])
ASGI_APP.add_middleware(ASGIMiddleware, guard=GUARD)


def _wsgi_ok(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


WSGI_APP = WSGIMiddleware(_wsgi_ok, guard=GUARD)
LOOP = asyncio.new_event_loop()  # one loop for every example (closed at module teardown)


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    LOOP.close()


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(requests())
def test_asgi_door_holds(request: tuple[str, str, str, list[tuple[str, bytes]]]) -> None:
    method, path, peer, headers = request

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGI_APP, client=(peer, 1234))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", trust_env=False
        ) as client:
            return await client.request(method, path, headers=headers)

    check(method, path, headers, LOOP.run_until_complete(go()))


@FAST
@given(requests())
def test_wsgi_door_holds(request: tuple[str, str, str, list[tuple[str, bytes]]]) -> None:
    method, path, peer, headers = request
    headers = ascii_only(headers)
    transport = httpx.WSGITransport(app=WSGI_APP, remote_addr=peer)
    with httpx.Client(transport=transport, base_url="http://t", trust_env=False) as client:
        check(method, path, headers, client.request(method, path, headers=headers))


@pytest.mark.parametrize(
    ("headers", "peer", "status"),
    [
        pytest.param(
            [("Authorization", f"Bearer {LIVE}".encode())], "203.0.113.9", 200, id="live-passes"
        ),
        pytest.param(
            [("Authorization", f"Bearer {DEAD}".encode())], "203.0.113.9", 401, id="revoked"
        ),
        pytest.param(
            [("Authorization", f"Bearer {LOCKED}".encode())],
            "203.0.113.9",
            403,
            id="locked-elsewhere",
        ),
        pytest.param(
            [("Authorization", f"Bearer {LOCKED}".encode()), ("X-Forwarded-For", b"192.0.2.1")],
            "10.0.0.1",
            200,
            id="locked-through-proxy",
        ),
        pytest.param(
            [("Authorization", f"Bearer {LOCKED}".encode()), ("X-Forwarded-For", b"192.0.2.1")],
            "203.0.113.9",
            403,
            id="spoofed-xff-untrusted-peer",
        ),
    ],
)
def test_the_property_setup_can_pass_and_refuse(headers, peer, status) -> None:
    """Guards the properties against vacuity: the live keys really pass."""
    transport = httpx.WSGITransport(app=WSGI_APP, remote_addr=peer)
    with httpx.Client(transport=transport, base_url="http://t") as client:
        response = client.get("/", headers=headers)
    assert response.status_code == status
    check("GET", "/", headers, response)

"""The `rfc9421` signing profile (SPEC section 6): RFC 9421 HTTP Message
Signatures with hmac-sha256 on http-message-signatures, through both doors.

Requests are signed here with the library's own `HTTPMessageSigner` (what any
RFC 9421 client does), then changed where a case says so; `SignedAuth`'s round
trips are in tests/test_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

pytest.importorskip("http_message_signatures", reason="pip install http-message-signatures")

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms  # noqa: E402

from keyguard import KeyGuard  # noqa: E402
from keyguard.client import SignedAuth  # noqa: E402
from keyguard.guard import Facts  # noqa: E402

from .signing_util import Clock, Door, asgi_app, make_guard  # noqa: E402

# -- RFC 9421 Appendix B.2.5 -------------------------------------------------------
# The test-request of Appendix B.2, the shared secret of B.1.5 and the signature
# and signature base that B.2.5 publishes for it (label sig-b25).
B2_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
B2_BODY = b'{"hello": "world"}'
B2_HEADERS = [
    ("host", "example.com"),
    ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("content-type", "application/json"),
    (
        "content-digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("content-length", "18"),
    (
        "signature-input",
        'sig-b25=("date" "@authority" "content-type")'
        ';created=1618884473;keyid="test-shared-secret"',
    ),
    ("signature", "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"),
]
B25_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"@signature-params": ("date" "@authority" "content-type")'
    b';created=1618884473;keyid="test-shared-secret"'
)
B25_CREATED = 1618884473


def _b2_facts() -> Facts:
    headers: dict[str, list[str]] = {}
    for name, value in B2_HEADERS:
        headers.setdefault(name, []).append(value)
    facts = Facts("POST", "/foo", "203.0.113.1", headers, "https")
    facts.query, facts.body, facts.raw_path = "param=Value&Pet=dog", B2_BODY, "/foo"
    facts.fields = B2_HEADERS  # as the body need sets them for rfc9421
    return facts


@pytest.mark.parametrize(
    ("offset", "admitted"),
    [
        pytest.param(1.0, True, id="a-second-later"),
        pytest.param(-4.0, True, id="created-4s-ahead"),
        pytest.param(31.0, False, id="older-than-max_skew"),
    ],
)
def test_appendix_b_2_5_verifies_with_its_shared_secret(offset: float, admitted: bool) -> None:
    """The RFC's own example, read by the profile: its signature base, its keyid
    and created, and a MAC that HMAC-SHA256 under the example secret gives, when
    the guard's clock puts `created` inside the window."""
    clock = Clock()
    clock.now = B25_CREATED + offset
    guard = make_guard(clock, signing={"profile": "rfc9421"})
    try:
        if not admitted:
            with pytest.raises(Exception) as info:
                guard.signing.read_rfc9421(_b2_facts())
            assert getattr(info.value, "code", None) == "stale_request"
            return
        signed, _ = guard.signing.read_rfc9421(_b2_facts())
        assert signed.message == B25_BASE
        assert (signed.key_id, signed.ts) == ("test-shared-secret", float(B25_CREATED))
        assert signed.mac == base64.b64decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")
        assert hmac.compare_digest(hmac.digest(B2_SECRET, signed.message, "sha256"), signed.mac)
        # keyguard's own policy then asks for more than the example covers (SPEC section 6).
        with pytest.raises(Exception) as info:
            guard.signing.begin(_b2_facts())
        assert getattr(info.value, "code", None) == "invalid_request"
        assert "@method" in str(info.value)
    finally:
        guard.close()


# -- signing with the library, as any RFC 9421 client does -------------------------


def _signed(
    method: str,
    url: str,
    key_id: str,
    secret: str,
    *,
    body: bytes | None = None,
    covered: Sequence[str] = ("@method", "@authority", "@path"),
    created: float | None = None,
    expires: float | None = None,
    nonce: str | None = "n0",
    headers: dict[str, str] | None = None,
    digest: str | None = None,
) -> httpx.Request:
    request = httpx.Request(method, url, content=body, headers=headers)
    if digest is not None:  # a Content-Digest of the client's choice, covered as given
        request.headers["Content-Digest"] = digest
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: secret.encode()}),
    )
    signer.sign(
        request,
        key_id=key_id,
        created=datetime.fromtimestamp(created, UTC) if created is not None else None,
        expires=datetime.fromtimestamp(expires, UTC) if expires is not None else None,
        nonce=nonce,
        covered_component_ids=list(covered),
        body=body if digest is None else None,
        use_existing_digest=digest is not None,
    )
    return request


DOORS = [pytest.param("asgi", id="asgi"), pytest.param("wsgi", id="wsgi")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock: Clock) -> Any:
    g = make_guard(clock, signing={"profile": "rfc9421"}, abuse={"max_failures": None})
    yield g
    g.close()


@pytest.fixture(params=DOORS)
async def door(request: pytest.FixtureRequest, guard: KeyGuard) -> AsyncIterator[Door]:
    d = Door(request.param, guard)
    yield d
    await d.aclose()


@pytest.fixture
def key(guard: KeyGuard) -> Any:
    return guard.keys.create(owner="acme", name="rfc", kind="signing", scopes=["read"])


async def _send(door: Door, request: httpx.Request, **change: Any) -> httpx.Response:
    """Send `request` through `door`, with its method, URL or body changed as told."""
    url = change.get("url", str(request.url)).removeprefix("http://t")
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers.update({k.lower(): v for k, v in change.get("headers", {}).items()})
    for name in ("host", "content-length", *change.get("drop", ())):  # the door sends its own
        headers.pop(name, None)
    body = change.get("body", request.content)
    return await door.request(change.get("method", request.method), url, headers, body)


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return str(r.json()["code"])


Q = ("@method", "@authority", "@path", "@query")


@pytest.mark.parametrize(
    ("method", "url", "body", "covered"),
    [
        pytest.param("GET", "http://t/items", None, Q[:3], id="get"),
        pytest.param("GET", "http://t/items/a%20b?q=x%2Fy&z=1", None, Q, id="get-query"),
        pytest.param("POST", "http://t/orders", b'{"side":"buy"}', Q[:3], id="post-json"),
        pytest.param("PUT", "http://t/blob?v=2", bytes(range(256)), Q, id="put-bytes"),
        pytest.param("DELETE", "http://t/items/1", None, Q[:3], id="delete"),
        pytest.param(
            "POST", "http://t/orders", b"{}", (*Q[:3], "content-type"), id="covers-a-field-too"
        ),
    ],
)
async def test_signed_requests_pass(
    door: Door, key: Any, method: str, url: str, body: bytes | None, covered: tuple[str, ...]
) -> None:
    request = _signed(
        method,
        url,
        key.info.id,
        key.secret,
        body=body,
        covered=covered,
        headers={"content-type": "application/json"},
    )
    r = await _send(door, request)
    assert r.status_code == 200, r.text
    assert r.json()["key"] == key.info.id
    assert r.json()["body"].encode("latin-1") == (body or b"")


def _digest(name: str, body: bytes) -> str:
    value = base64.b64encode(hashlib.new(name.replace("-", ""), body).digest()).decode()
    return f"{name}=:{value}:"


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
async def test_content_digest_is_checked_against_the_body(
    door: Door, key: Any, algorithm: str
) -> None:
    body = B2_BODY

    def request(nonce: str) -> httpx.Request:
        digest = _digest(algorithm, body)
        covered = (*Q[:3], "content-digest")
        return _signed(
            "POST", "http://t/x", key.info.id, key.secret, body=body, digest=digest,
            covered=covered, nonce=nonce,
        )  # fmt: skip

    assert (await _send(door, request("n0"))).status_code == 200
    again = request("n1")
    r = await _send(door, again, body=b'{"hello": "there"}')
    assert r.status_code == 401 and _code(r) == "invalid_signature"


@pytest.mark.parametrize(
    ("sign", "change", "status", "code"),
    [
        pytest.param({}, {"method": "PUT"}, 401, "invalid_signature", id="method"),
        pytest.param({}, {"url": "http://t/other?a=1"}, 401, "invalid_signature", id="path"),
        pytest.param({}, {"url": "http://t/orders?a=2"}, 401, "invalid_signature", id="query"),
        pytest.param({}, {"body": b'{"amount":2}'}, 401, "invalid_signature", id="body"),
        pytest.param({"secret": "x" * 43}, {}, 401, "invalid_signature", id="wrong-secret"),
        pytest.param({"key_id": "A" * 16}, {}, 401, "invalid_signature", id="unknown-keyid"),
        pytest.param({"key_id": "not a key"}, {}, 401, "invalid_signature", id="malformed-keyid"),
        pytest.param({"created": -31}, {}, 401, "stale_request", id="created-too-old"),
        pytest.param({"created": +6}, {}, 401, "stale_request", id="created-ahead"),
        pytest.param({"expires": -1}, {}, 401, "stale_request", id="expired"),
        pytest.param({"covered": Q[1:]}, {}, 400, "invalid_request", id="no-@method"),
        pytest.param(
            {"covered": ("@method", "@path", "@query")},
            {},
            400,
            "invalid_request",
            id="no-@authority",
        ),
        pytest.param({"covered": Q[:3]}, {}, 400, "invalid_request", id="query-not-covered"),
        pytest.param(
            {"no_digest": True}, {"body": b"{}"}, 400, "invalid_request", id="body-not-covered"
        ),
        pytest.param({}, {"alg": 'alg="rsa-pss-sha512"'}, 400, "invalid_request", id="another-alg"),
        pytest.param({}, {"created_gone": True}, 400, "invalid_request", id="no-created"),
        pytest.param({}, {"two": True}, 400, "invalid_request", id="two-signatures"),
        pytest.param(
            {}, {"headers": {"Signature-Input": "kg=(("}}, 400, "invalid_request", id="malformed"
        ),
        pytest.param({}, {"drop": ["signature"]}, 400, "invalid_request", id="no-signature"),
        pytest.param(
            {}, {"headers": {"Signature": "pyhms=:AAAA:"}}, 401, "invalid_signature", id="short-mac"
        ),
    ],
)
async def test_what_is_refused(
    door: Door,
    key: Any,
    clock: Clock,
    sign: dict[str, Any],
    change: dict[str, Any],
    status: int,
    code: str,
) -> None:
    body = b'{"amount":1}'
    covered = sign.get("covered", Q)
    request = _signed(
        "POST",
        "http://t/orders?a=1",
        sign.get("key_id", key.info.id),
        sign.get("secret", key.secret),
        body=None if sign.get("no_digest") else body,
        covered=covered,
        created=clock.now + sign.get("created", 0),
        expires=clock.now + sign["expires"] if "expires" in sign else None,
    )
    headers = dict(change.get("headers", {}))
    signature_input = request.headers["signature-input"]
    if "alg" in change:
        headers["Signature-Input"] = signature_input.replace('alg="hmac-sha256"', change["alg"])
    if change.get("created_gone"):
        headers["Signature-Input"] = ";".join(
            p for p in signature_input.split(";") if not p.startswith("created=")
        )
    if change.get("two"):
        headers["Signature-Input"] = signature_input + ", " + signature_input.replace("pyhms", "b")
        headers["Signature"] = request.headers["signature"] + ", b=:AAAA:"
    r = await _send(door, request, **{**change, "headers": headers})
    assert (r.status_code, _code(r)) == (status, code), r.text


async def test_replays_are_refused_and_a_new_nonce_passes(door: Door, key: Any) -> None:
    request = _signed("POST", "http://t/pay", key.info.id, key.secret, body=b"{}", nonce="a")
    assert (await _send(door, request)).status_code == 200
    r = await _send(door, request)
    assert r.status_code == 401 and _code(r) == "replayed_request"
    # The same request in the same second, with another nonce: another signature.
    other = _signed("POST", "http://t/pay", key.info.id, key.secret, body=b"{}", nonce="b")
    assert (await _send(door, other)).status_code == 200


async def test_signed_auth_sends_a_fresh_nonce_each_time(
    guard: KeyGuard, key: Any, clock: Clock
) -> None:
    """Identical requests from `SignedAuth` in one second all pass (SPEC section 6's
    replay note), since each carries its own nonce."""
    auth = SignedAuth(key.info.id, key.secret, profile="rfc9421", clock=lambda: clock.now)
    transport = httpx.ASGITransport(asgi_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", auth=auth) as c:
        codes = [(await c.post("/x", content=b"same")).status_code for _ in range(3)]
    assert codes == [200, 200, 200]


def test_settings_refuse_header_names_the_rfc_fixes() -> None:
    from keyguard import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"signing\.headers\.key: unknown for profile"):
        make_guard(signing={"profile": "rfc9421", "headers": {"key": "X-Key"}})
    guard = make_guard(signing={"profile": "rfc9421", "headers": {"passphrase": "X-Phrase"}})
    assert "x-phrase" in guard.signing.header_names
    guard.close()


def test_a_caller_without_the_header_lines_gets_a_400(guard: KeyGuard, key: Any) -> None:
    """`guard.check` called with Facts that carry the body but not `fields` (as for
    the other profiles): refused plainly, never a 500."""
    request = _signed("GET", "http://t/x", key.info.id, key.secret)
    headers = {k.lower(): [v] for k, v in request.headers.items()}
    facts = Facts("GET", "/x", "203.0.113.1", headers)
    facts.body, facts.raw_path = b"", "/x"
    error = guard.check(facts).error
    assert error is not None and error.code == "invalid_request"

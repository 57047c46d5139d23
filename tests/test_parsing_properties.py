"""Property-based tests of everything a caller controls before the key is proven:
token text, the Authorization / key headers (`credential()` via the guard and the
two doors) and forwarding headers. Never an unexpected exception, never a pass."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyguard import KeyGuard, RequestRejected
from keyguard.asgi import KeyGuardMiddleware as ASGIMiddleware
from keyguard.decision import Facts
from keyguard.tokens import make_token
from keyguard.wsgi import KeyGuardMiddleware as WSGIMiddleware

from .kgutil import bad_checksum, other_secret

CODES = {"missing_credentials", "invalid_request", "invalid_key", "ip_not_allowed"}

# Throttling off: every example is a failure from few addresses (tests/test_ratelimit.py
# covers the throttle).
GUARD = KeyGuard(
    {"store": "memory://", "trusted_proxies": ["10.0.0.0/8"], "abuse": {"max_failures": None}}
)
REAL = GUARD.keys.create(owner="o", name="pinned", allowed_ips=["8.8.8.8"]).token or ""
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

latin1 = st.text(alphabet=st.characters(codec="latin-1"), max_size=120)
base62 = st.text(alphabet=string.ascii_letters + string.digits, min_size=16, max_size=16)
fake_token = base62.map(lambda i: make_token("kg", i)[0])  # well-formed, checksum valid, unknown id
near_real = st.sampled_from(
    [bad_checksum(REAL), other_secret(REAL), REAL[:-1], REAL + "x", REAL.upper()]
)
token_like = st.one_of(latin1, fake_token, near_real)
auth_value = st.one_of(
    latin1,
    token_like.map(lambda t: "Bearer " + t),
    token_like.map(lambda t: "bearer  " + t + " "),
    st.sampled_from(["Bearer", "Bearer ", "Basic abc", "Bearer a b", ""]),
)
xff = st.lists(st.one_of(st.ip_addresses().map(str), latin1), max_size=4).map(", ".join)
headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.lists(auth_value, min_size=1, max_size=3),
        "x-api-key": st.lists(token_like, min_size=1, max_size=3),
        "x-forwarded-for": st.lists(xff, min_size=1, max_size=2),
        "forwarded": st.lists(latin1, min_size=1, max_size=2),
        "kg-passphrase": st.lists(latin1, min_size=1, max_size=2),
    },
)
peer = st.one_of(
    st.none(), st.ip_addresses().map(str), st.sampled_from(["10.0.0.1", "8.8.8.8"]), latin1
)


@PROPS
@given(headers, peer, st.sampled_from(["GET", "POST", "DELETE", "\x00"]), latin1)
def test_guard_check_never_passes(
    h: dict[str, list[str]], p: str | None, method: str, path: str
) -> None:
    exc = GUARD.check(Facts(method, path, p, h)).error
    assert exc is not None, "a request without the real token passed"
    assert exc.code in CODES
    assert REAL not in str(exc)


@PROPS
@given(token_like)
def test_verify_never_passes(token: str) -> None:
    try:
        GUARD.verify(token, client_ip="8.8.8.8")
    except RequestRejected as exc:
        assert exc.code == "invalid_key"
    else:
        raise AssertionError("passed")


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a rejected request reached the app")


ASGI = ASGIMiddleware(_inner, guard=GUARD)


raw_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"authorization",
                b"x-api-key",
                b"x-forwarded-for",
                b"forwarded",
                b"kg-passphrase",
                b"x-other",
            ]
        ),
        st.one_of(st.binary(max_size=100), auth_value.map(lambda v: v.encode("latin-1"))),
    ),
    max_size=5,
)


@PROPS
@given(
    raw_headers,
    st.one_of(
        st.none(),
        st.tuples(st.sampled_from(["10.0.0.1", "8.8.8.8", "::1", "x"]), st.integers(0, 65535)),
    ),
)
def test_asgi_door_never_passes_never_500(hs: list[tuple[bytes, bytes]], client: Any) -> None:
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
        "path": "/x",
        "raw_path": b"/x",
        "root_path": "",
        "query_string": b"",
        "headers": hs,
        "client": client,
        "server": ("t", 80),
    }
    asyncio.run(ASGI(scope, receive, send))
    assert sent[0]["status"] in (400, 401, 403)
    assert json.loads(sent[1]["body"])["code"] in CODES


def _wsgi_inner(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("a rejected request reached the app")


WSGI = WSGIMiddleware(_wsgi_inner, guard=GUARD)


@PROPS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "HTTP_AUTHORIZATION": auth_value,
            "HTTP_X_API_KEY": token_like,
            "HTTP_X_FORWARDED_FOR": xff,
            "HTTP_FORWARDED": latin1,
            "HTTP_KG_PASSPHRASE": latin1,
            "REMOTE_ADDR": st.one_of(st.ip_addresses().map(str), latin1),
            "PATH_INFO": latin1,
        },
    )
)
def test_wsgi_door_never_passes_never_500(environ: dict[str, str]) -> None:
    got: list[str] = []
    body = WSGI({"REQUEST_METHOD": "GET", **environ}, lambda status, headers: got.append(status))
    assert got[0].split()[0] in ("400", "401", "403")
    assert json.loads(b"".join(body))["code"] in CODES

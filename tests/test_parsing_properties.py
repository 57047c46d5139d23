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
        # A comma may mean several credentials (a WSGI server joins repeated headers so):
        # 400 for a value that cannot be one token (see decision.malformed).
        assert exc.code in (
            ("invalid_request", "invalid_key") if "," in token else ("invalid_key",)
        )
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


# -- the decoded query of bitget and bybit (SPEC section 6) -----------------------------
# Their clients sign the query text they wrote and send it percent-encoded, so the
# server decodes the query it received. No two raw queries the app parses
# differently may share one decoded text, or a signature for one would pass the other.

from urllib.parse import parse_qsl, quote, unquote, urlencode  # noqa: E402

from starlette.datastructures import QueryParams  # noqa: E402
from werkzeug.wrappers import Request as WerkzeugRequest  # noqa: E402

from keyguard.signing import decoded_message, decoded_query  # noqa: E402

from .kgutil import Clock  # noqa: E402
from .kgutil import facts as make_facts  # noqa: E402
from .signing_util import MASTER  # noqa: E402

Params = list[tuple[str, str]]
SIGNERS: dict[str, tuple[KeyGuard, str, str, Clock]] = {}


def _signer(profile: str) -> tuple[KeyGuard, str, str, Clock]:
    """A guard under `profile` and a signing key (made once per profile)."""
    if profile not in SIGNERS:
        clock = Clock()
        guard = KeyGuard(
            {
                "store": "memory://",
                "signing": {"profile": profile, "master_keys": [MASTER]},
                "abuse": {"max_failures": None},
            },
            clock=clock,
        )
        issued = guard.keys.create(owner="o", name=profile, kind="signing")
        SIGNERS[profile] = (guard, issued.info.id, issued.secret or "", clock)
    return SIGNERS[profile]


def _answer(profile: str, wire: str, signed_text: bytes) -> str:
    """What the guard answers a GET /x?`wire` whose signature covers the query text
    `signed_text` (as the client signed it), with a timestamp of its own."""
    import hmac as hmac_

    guard, key_id, secret, clock = _signer(profile)
    clock.advance(0.001)  # a new timestamp: a new signature, never a replay
    ts = str(round(clock.now * 1000))
    if profile == "bitget":
        string = (ts + "GET/x?").encode() + signed_text
        headers = {"access-key": key_id, "access-timestamp": ts}
        mac = hmac_.digest(secret.encode(), string, "sha256")
        headers["access-sign"] = __import__("base64").b64encode(mac).decode()
    else:  # bybit
        string = (ts + key_id + "5000").encode() + signed_text
        headers = {"x-bapi-api-key": key_id, "x-bapi-timestamp": ts, "x-bapi-recv-window": "5000"}
        headers["x-bapi-sign"] = hmac_.digest(secret.encode(), string, "sha256").hex()
    facts = make_facts(
        "GET",
        "/x",
        "203.0.113.7",
        {k: [v] for k, v in headers.items()},
        body=b"",
        raw_path="/x",
        query=wire,
    )
    error = guard.check(facts).error
    return "ok" if error is None else error.code


def _parsed(wire: str) -> tuple[Params, list[tuple[str, list[str]]]]:
    """The parameters as Starlette and as Werkzeug read the raw query `wire`
    (Werkzeug's MultiDict groups a key's values: compared as its `lists()`)."""
    starlette = list(QueryParams(wire.encode("latin-1")).multi_items())
    werkzeug = list(WerkzeugRequest({"QUERY_STRING": wire}).args.lists())
    return starlette, werkzeug


def _grouped(ps: Params) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for key, value in ps:
        grouped.setdefault(key, []).append(value)
    return list(grouped.items())


def _ccxt(params: Params) -> tuple[str, bytes]:
    """(the wire query, the signed text) as ccxt's bitget sign(): urlencode with
    quote on the wire, and its unquoted text signed."""
    wire = urlencode(params, quote_via=quote)
    return wire, unquote(wire).encode()


def _python_bitget(params: Params) -> tuple[str, bytes]:
    """As python-bitget: k=v joined raw and signed, then requests quotes the URL."""
    from requests.utils import requote_uri

    text = "&".join(f"{k}={v}" for k, v in params)
    return requote_uri("/x?" + text).partition("?")[2], text.encode()


# Values as SDK users write them, without "&" and "=" (which no decoded query can
# carry unambiguously: refused, below), with spaces, "+", "%" and non-ASCII text.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="&=#"),
    max_size=8,
)
params = st.lists(st.tuples(text.filter(bool), text), min_size=1, max_size=4)


def _spellings(signed_text: str) -> st.SearchStrategy[str]:
    """Raw queries whose characters each spell one of `signed_text`'s: as is (where a
    query may carry it), percent-encoded in either case, a space as "+", a "+" as
    is (which decodes to a space), and "&" or "=" encoded."""

    def spell(char: str) -> st.SearchStrategy[str]:
        escapes = "".join(f"%{b:02X}" for b in char.encode())
        choices = [escapes, escapes.lower()]
        if char.isascii() and (char.isalnum() or char in "-._~!$'()*,;:@/?&=+"):
            choices.append(char)
        if char == " ":
            choices.append("+")
        return st.sampled_from(choices)

    return st.tuples(*(spell(c) for c in signed_text)).map("".join)


@PROPS
@given(params, st.sampled_from(["bitget", "bybit"]), st.data())
def test_a_decoded_query_verifies_only_where_the_app_reads_the_signed_parameters(
    ps: Params, profile: str, data: st.DataObject
) -> None:
    """The raw query ccxt sends verifies, and so does python-bitget's where it
    means what was signed; any other raw query that verifies with the same
    signature parses (Starlette's and Werkzeug's parse_qsl) to the same
    parameters; one with an encoded & or = is refused (400)."""
    wire, signed_text = _ccxt(ps)
    assert _answer(profile, wire, signed_text) == "ok"
    assert decoded_query(wire) == signed_text
    expected = _parsed(wire)
    assert expected == (ps, _grouped(ps))
    if profile == "bitget":
        theirs, their_text = _python_bitget(ps)
        if "+" not in their_text.decode() and "%" not in their_text.decode():
            assert _answer(profile, theirs, their_text) == "ok"  # ("+", "%": sent as is)
    other = data.draw(_spellings(signed_text.decode()))
    answer = _answer(profile, other, signed_text)
    if answer == "ok":
        assert _parsed(other) == expected, (wire, other)
    else:
        assert answer in ("invalid_signature", "invalid_request"), answer


def _respellings(decoded: bytes) -> st.SearchStrategy[str]:
    """Raw queries that decode (`decoded_query`) to `decoded`: each byte as is where
    a query may carry it, or percent-encoded in either case, a space also as "+"."""

    def spell(byte: int) -> st.SearchStrategy[str]:
        choices = [f"%{byte:02X}", f"%{byte:02x}"]
        char = chr(byte)
        if char.isascii() and (char.isalnum() or char in "-._~!$'()*,;:@/?&="):
            choices.append(char)
        if char == " ":
            choices.append("+")
        return st.sampled_from(choices)

    return st.tuples(*(spell(b) for b in decoded)).map("".join)


@PROPS
@given(st.text(alphabet="ab=&+%2B0F6Dd3 ", min_size=1, max_size=12), st.data())
def test_two_raw_queries_with_one_decoded_text_parse_alike(one: str, data: st.DataObject) -> None:
    """Any raw query (from a small alphabet, so that escapes and separators meet),
    and any other spelling of its decoded text: when keyguard accepts both
    (neither holds an encoded & or =), Starlette and Werkzeug parse them alike."""
    one = one.replace(" ", "")

    def accepted(wire: str) -> bool:
        return "%26" not in wire and "%3D" not in wire.upper()

    two = data.draw(_respellings(decoded_query(one)))
    assert decoded_query(two) == decoded_query(one)
    if accepted(one) and accepted(two):
        assert parse_qsl(one, keep_blank_values=True) == parse_qsl(two, keep_blank_values=True)
        assert _parsed(one) == _parsed(two)


@PROPS
@given(params, st.sampled_from(["%26", "%3D", "%3d"]), st.sampled_from(["bitget", "bybit"]))
def test_an_encoded_separator_in_a_decoded_query_is_refused(
    ps: Params, separator: str, profile: str
) -> None:
    """`?a=1%26b%3D2` is one parameter for the app and would verify as `?a=1&b=2`,
    two: refused (400) whatever was signed."""
    wire = urlencode(ps, quote_via=quote) + "x" + separator + "y"
    assert _answer(profile, wire, decoded_query(wire)) == "invalid_request"
    assert decoded_message("1", "GET", "/x", "a=1%26b").endswith(b"a=1&b")  # why

"""One table of requests for both doors (ASGI and WSGI): SPEC section 4 steps 1-7
with the answers of section 5. Each door's test module builds an app with the
same routes and plays this table over HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyguard import KeyGuard

from .kgutil import Clock, bad_checksum, other_secret

SETTINGS: dict[str, Any] = {
    "store": "memory://",
    "policy": {"allow_private_ips": True},
    # One guard answers the whole table, most rows failures: failed-attempt throttling
    # (tests/test_ratelimit.py) would turn the later rows into 429s.
    "abuse": {"max_failures": None},
    "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
    "public_paths": ["/health", "/static/*"],
    "scope_implies": {"write": ["read"]},
    "rules": [
        {"path": "/v1/chat/*", "methods": ["POST"], "scopes": ["inference"]},
        {"path": "/v1/models", "methods": ["GET"], "scopes": ["models:read"]},
        {"path": "/v1/read", "scopes": ["read"]},
        {"path": "/v1/all/*", "scopes": ["files:write", "billing"]},
    ],
}

# Routes every test app offers (all answer {"key": <key name or null>}).
ROUTES = [
    ("/", ["GET"]),
    ("/v1/chat/x", ["GET", "POST"]),
    ("/v1/models", ["GET"]),
    ("/v1/read", ["GET"]),
    ("/v1/all/x", ["GET"]),
    ("/health", ["GET"]),
    ("/static/a.css", ["GET"]),
]


@dataclass
class World:
    guard: KeyGuard
    clock: Clock
    tokens: dict[str, str]
    calls: list[str] = field(default_factory=list)


def make_world(settings: dict[str, Any] | None = None) -> World:
    clock = Clock()
    g = KeyGuard({**SETTINGS, **(settings or {})}, clock=clock)
    k = g.keys
    t: dict[str, str] = {}
    t["full"] = k.create(owner="o", name="full", scopes=["inference", "models:*", "write"]).token  # type: ignore[assignment]
    t["narrow"] = k.create(owner="o", name="narrow", scopes=["models:read"]).token  # type: ignore[assignment]
    t["star"] = k.create(owner="o", name="star", scopes=["*"]).token  # type: ignore[assignment]
    t["files"] = k.create(owner="o", name="files", scopes=["files:*", "billing"]).token  # type: ignore[assignment]
    t["pinned"] = k.create(
        owner="o", name="pinned", allowed_ips=["8.8.8.0/24", "2001:4860::/32"]
    ).token  # type: ignore[assignment]
    revoked = k.create(owner="o", name="revoked")
    k.revoke(revoked.id)
    t["revoked"] = revoked.token  # type: ignore[assignment]
    t["expired"] = k.create(owner="o", name="expired", expires_in=10).token  # type: ignore[assignment]
    t["pp"] = k.create(owner="o", name="pp", passphrase="a long passphrase").token  # type: ignore[assignment]
    graced = k.create(owner="o", name="graced")
    t["graced_new"] = k.rotate(graced.id, grace=3600).token  # type: ignore[assignment]
    t["graced_old"] = graced.token  # type: ignore[assignment]
    stale = k.create(owner="o", name="stale")
    t["stale_new"] = k.rotate(stale.id, grace=5).token  # type: ignore[assignment]
    t["stale_old"] = stale.token  # type: ignore[assignment]
    gone = k.create(owner="o", name="gone")
    t["gone_new"] = k.rotate(gone.id, grace=3600).token  # type: ignore[assignment]
    t["gone_old"] = gone.token  # type: ignore[assignment]
    k.revoke(gone.id)
    clock.advance(11)  # expired is expired, stale_old out of grace, graced_old still in
    t["full_badsum"] = bad_checksum(t["full"])
    t["full_other"] = other_secret(t["full"])
    t["revoked_other"] = other_secret(t["revoked"])
    t["expired_other"] = other_secret(t["expired"])
    t["pp_other"] = other_secret(t["pp"])
    return World(g, clock, t)


def B(name: str) -> tuple[str, str]:
    return ("Authorization", "Bearer {" + name + "}")


def K(name: str) -> tuple[str, str]:
    return ("X-API-Key", "{" + name + "}")


OK = 200
# (id, method, path, headers, peer, expected status, expected code or key name, WSGI override)
CASES = [
    # step 1: public paths and the one credential
    ("public-no-key", "GET", "/health", [], None, OK, None, None),
    ("public-glob", "GET", "/static/a.css", [], None, OK, None, None),
    (
        "public-garbage-key",
        "GET",
        "/health",
        [("Authorization", "Bearer nonsense")],
        None,
        OK,
        None,
        None,
    ),
    ("missing", "GET", "/", [], None, 401, "missing_credentials", None),
    (
        "basic-scheme",
        "GET",
        "/",
        [("Authorization", "Basic dXNlcjpwYXNz")],
        None,
        401,
        "missing_credentials",
        None,
    ),
    ("bearer-empty", "GET", "/", [("Authorization", "Bearer")], None, 401, "invalid_key", None),
    ("bearer-ok", "GET", "/", [B("full")], None, OK, "full", None),
    ("bearer-lowercase", "GET", "/", [("Authorization", "bearer {full}")], None, OK, "full", None),
    ("bearer-spaces", "GET", "/", [("Authorization", "Bearer   {full}  ")], None, OK, "full", None),
    ("header-ok", "GET", "/", [K("full")], None, OK, "full", None),
    ("header-lowercase-name", "GET", "/", [("x-api-key", "{full}")], None, OK, "full", None),
    ("bearer-and-same-header", "GET", "/", [B("full"), K("full")], None, OK, "full", None),
    (
        "bearer-and-other-header",
        "GET",
        "/",
        [B("full"), K("narrow")],
        None,
        400,
        "invalid_request",
        None,
    ),
    (
        "two-authorization",
        "GET",
        "/",
        [B("full"), B("narrow")],
        None,
        400,
        "invalid_request",
        None,
    ),  # WSGI joins repeated headers with a comma, which no token holds: 400 there too
    (
        "two-authorization-same",
        "GET",
        "/",
        [B("full"), B("full")],
        None,
        400,
        "invalid_request",
        None,
    ),
    (
        "two-keys-different",
        "GET",
        "/",
        [K("full"), K("narrow")],
        None,
        400,
        "invalid_request",
        None,
    ),
    # The same key twice: ASGI sees two equal values (one credential); WSGI one joined
    # value, which may hold two different ones: refused (fail closed).
    (
        "two-keys-same",
        "GET",
        "/",
        [K("full"), K("full")],
        None,
        OK,
        "full",
        (400, "invalid_request"),
    ),
    ("empty-key-header", "GET", "/", [("X-API-Key", "")], None, 401, "invalid_key", None),
    # step 2: well-formed, checksum
    ("garbage", "GET", "/", [("Authorization", "Bearer hello")], None, 401, "invalid_key", None),
    ("bad-checksum", "GET", "/", [B("full_badsum")], None, 401, "invalid_key", None),
    (
        "oversized",
        "GET",
        "/",
        [("Authorization", "Bearer " + "a" * 8000)],
        None,
        401,
        "invalid_key",
        None,
    ),
    (
        "oversized-key",
        "GET",
        "/",
        [("X-API-Key", "kg_" + "A" * 5000)],
        None,
        401,
        "invalid_key",
        None,
    ),
    (
        "non-ascii",
        "GET",
        "/",
        [("Authorization", "Bearer kg_é€".encode().decode("latin-1"))],
        None,
        401,
        "invalid_key",
        None,
    ),
    (
        "non-ascii-in-token",
        "GET",
        "/",
        [("X-API-Key", "{full}é".encode().decode("latin-1"))],
        None,
        401,
        "invalid_key",
        None,
    ),
    ("control-chars", "GET", "/", [("X-API-Key", "{full}\x01")], None, 401, "invalid_key", None),
    # step 3: found, secret matches
    ("wrong-secret", "GET", "/", [B("full_other")], None, 401, "invalid_key", None),
    (
        "unknown-id",
        "GET",
        "/",
        [("Authorization", "Bearer kg_ZZZZZZZZZZZZZZZZ_{full_tail}")],
        None,
        401,
        "invalid_key",
        None,
    ),
    # step 4: revoked / expired, only after the secret is proven
    ("revoked", "GET", "/", [B("revoked")], None, 401, "revoked_key", None),
    ("revoked-wrong-secret", "GET", "/", [B("revoked_other")], None, 401, "invalid_key", None),
    ("expired", "GET", "/", [B("expired")], None, 401, "expired_key", None),
    ("expired-wrong-secret", "GET", "/", [B("expired_other")], None, 401, "invalid_key", None),
    ("rotated-new", "GET", "/", [B("graced_new")], None, OK, "graced", None),
    ("rotated-old-in-grace", "GET", "/", [B("graced_old")], None, OK, "graced", None),
    ("rotated-old-after-grace", "GET", "/", [B("stale_old")], None, 401, "invalid_key", None),
    ("rotated-then-revoked-new", "GET", "/", [B("gone_new")], None, 401, "revoked_key", None),
    ("rotated-then-revoked-old", "GET", "/", [B("gone_old")], None, 401, "revoked_key", None),
    # step 5: passphrase
    ("passphrase-missing", "GET", "/", [B("pp")], None, 401, "invalid_passphrase", None),
    (
        "passphrase-wrong",
        "GET",
        "/",
        [B("pp"), ("KG-Passphrase", "nope nope nope")],
        None,
        401,
        "invalid_passphrase",
        None,
    ),
    (
        "passphrase-ok",
        "GET",
        "/",
        [B("pp"), ("KG-Passphrase", "a long passphrase")],
        None,
        OK,
        "pp",
        None,
    ),
    (
        "passphrase-wrong-secret",
        "GET",
        "/",
        [B("pp_other"), ("KG-Passphrase", "a long passphrase")],
        None,
        401,
        "invalid_key",
        None,
    ),
    # step 6: client IP
    ("ip-peer-ok", "GET", "/", [B("pinned")], "8.8.8.8", OK, "pinned", None),
    ("ip-peer-refused", "GET", "/", [B("pinned")], "1.1.1.1", 403, "ip_not_allowed", None),
    ("ip-default-peer-refused", "GET", "/", [B("pinned")], None, 403, "ip_not_allowed", None),
    (
        "ip-spoofed-xff-ignored",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "8.8.8.8")],
        "1.1.1.1",
        403,
        "ip_not_allowed",
        None,
    ),
    (
        "ip-spoofed-forwarded-ignored",
        "GET",
        "/",
        [B("pinned"), ("Forwarded", "for=8.8.8.8")],
        "1.1.1.1",
        403,
        "ip_not_allowed",
        None,
    ),
    (
        "ip-untrusted-peer-ok-despite-xff",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "1.1.1.1")],
        "8.8.8.8",
        OK,
        "pinned",
        None,
    ),
    (
        "ip-trusted-proxy-xff",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "8.8.8.8")],
        "10.0.0.5",
        OK,
        "pinned",
        None,
    ),
    (
        "ip-trusted-chain-from-right",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "1.1.1.1, 8.8.8.8, 10.0.0.7")],
        "10.0.0.5",
        OK,
        "pinned",
        None,
    ),
    (
        "ip-trusted-chain-spoof-left",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "8.8.8.8, 1.1.1.1")],
        "10.0.0.5",
        403,
        "ip_not_allowed",
        None,
    ),
    (  # proxy_header is x-forwarded-for: the other family is not the proxy's, and ignored
        "ip-trusted-proxy-other-family-ignored",
        "GET",
        "/",
        [B("pinned"), ("Forwarded", "for=8.8.8.8;proto=https")],
        "10.0.0.5",
        403,
        "ip_not_allowed",
        None,
    ),
    (
        "ip-xff-garbage",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "8.8.8.8, ???")],
        "10.0.0.5",
        403,
        "ip_not_allowed",
        None,
    ),
    ("ip-ipv6-peer-ok", "GET", "/", [B("pinned")], "2001:4860::8888", OK, "pinned", None),
    ("ip-ipv6-peer-refused", "GET", "/", [B("pinned")], "2001:db9::1", 403, "ip_not_allowed", None),
    (
        "ip-ipv6-trusted-proxy",
        "GET",
        "/",
        [B("pinned"), ("X-Forwarded-For", "2001:4860::2")],
        "fd00::1",
        OK,
        "pinned",
        None,
    ),
    ("ip-wrong-secret-first", "GET", "/", [B("full_other")], "1.1.1.1", 401, "invalid_key", None),
    # step 7: scopes from rules (methods, globs, implication, wildcards)
    ("scope-rule-post", "POST", "/v1/chat/x", [B("narrow")], None, 403, "insufficient_scope", None),
    ("scope-rule-post-ok", "POST", "/v1/chat/x", [B("full")], None, OK, "full", None),
    ("scope-rule-other-method", "GET", "/v1/chat/x", [B("narrow")], None, OK, "narrow", None),
    ("scope-name-star", "GET", "/v1/models", [B("full")], None, OK, "full", None),
    ("scope-exact", "GET", "/v1/models", [B("narrow")], None, OK, "narrow", None),
    (
        "scope-none",
        "GET",
        "/v1/models",
        [B("pinned"), ("X-Forwarded-For", "8.8.8.8")],
        "10.0.0.5",
        403,
        "insufficient_scope",
        None,
    ),
    ("scope-implied", "GET", "/v1/read", [B("full")], None, OK, "full", None),
    (
        "scope-implied-missing",
        "GET",
        "/v1/read",
        [B("narrow")],
        None,
        403,
        "insufficient_scope",
        None,
    ),
    ("scope-star", "POST", "/v1/chat/x", [B("star")], None, OK, "star", None),
    ("scope-all-of", "GET", "/v1/all/x", [B("files")], None, OK, "files", None),
    (
        "scope-all-of-missing",
        "GET",
        "/v1/all/x",
        [B("full")],
        None,
        403,
        "insufficient_scope",
        None,
    ),
    (
        "scope-wrong-secret-first",
        "POST",
        "/v1/chat/x",
        [B("full_other")],
        None,
        401,
        "invalid_key",
        None,
    ),
]

PARAMS = [pytest.param(*c, id=c[0]) for c in CASES]


def render(headers: list[tuple[str, str]], tokens: dict[str, str]) -> list[tuple[str, str]]:
    values = {**tokens, "full_tail": tokens["full"].split("_", 2)[2]}
    return [(n, v.format(**values) if "{" in v else v) for n, v in headers]


def check_response(
    status: int,
    headers: Any,
    body: bytes,
    expected_status: int,
    expected: str | None,
    tokens: dict[str, str],
) -> None:
    """Assert the answer of one table row (`headers` is case-insensitive)."""
    assert status == expected_status, body
    text = body.decode("utf-8", "replace")
    for token in tokens.values():
        assert token not in text  # never a token in a response
    if expected_status == OK:
        if expected is not None:
            assert json.loads(body) == {"key": expected}
        return
    assert headers["content-type"] == "application/problem+json"
    doc = json.loads(body)
    assert doc["status"] == expected_status and doc["code"] == expected
    assert doc["title"] and doc["detail"] and doc["type"] == "about:blank"
    www = headers.get("www-authenticate")
    if expected_status == 401:
        if expected == "missing_credentials":
            assert www == 'Bearer realm="api"'
        else:
            assert www == 'Bearer realm="api", error="invalid_token"'
    elif expected == "insufficient_scope":
        assert www is not None and www.startswith(
            'Bearer realm="api", error="insufficient_scope", scope="'
        )
        assert doc["required_scopes"] and " ".join(doc["required_scopes"]) in www
    else:
        assert www is None

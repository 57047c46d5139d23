"""What keys may hold, and what a bad stored row may do (issue 15 items 2, 3, 5, 6).

- Values the API could not render (NaN, lone surrogates, deep nesting, non-string
  keys) are refused with `invalid_key_settings` naming the field, before storing,
  through `guard.keys` and over HTTP.
- A corrupt row, written straight into each backend (memory, sqlite, postgresql,
  redis), is a `StoreError` naming the key id (never the row), so a request gets
  503 `unavailable`; a listing leaves it out and shows the rest.
- A token passed where a key id belongs is never echoed: only its hint.
- `KeyInfo.metadata` is read-only: nothing one request does to it shows in another.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyguard import InvalidKeySettings, KeyGuard, KeyNotFound, StoreError
from keyguard.admin import Principal, admin_app
from keyguard.asgi import KeyGuardMiddleware
from keyguard.exceptions import shown_id, shown_value

from .test_stores import BACKENDS, store_url


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def loop() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


BAD_METADATA = [
    pytest.param({"x": math.nan}, id="nan"),
    pytest.param({"x": math.inf}, id="infinity"),
    pytest.param({"x": [1, {"y": -math.inf}]}, id="nested-infinity"),
    pytest.param({"x": "\ud800"}, id="lone-surrogate-value"),
    pytest.param({"\udfff": 1}, id="lone-surrogate-key"),
    pytest.param({1: "x"}, id="int-key"),
    pytest.param({("a",): "x"}, id="tuple-key"),
    pytest.param({"x": b"bytes"}, id="bytes"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({"x": 10**5000}, id="huge-int"),
    pytest.param(deep(9), id="too-deep"),
    pytest.param(loop(), id="self-reference"),
    pytest.param({"x": "y" * 20_000}, id="too-large"),
]
BAD_TEXT = [
    pytest.param("name", "a\ud800b", id="name-lone-surrogate"),
    pytest.param("owner", "\udc00", id="owner-lone-surrogate"),
    pytest.param("name", "a\x00b", id="name-nul"),
    pytest.param("owner", "a\nb", id="owner-newline"),
    pytest.param("name", "ok\x1b[2Jx", id="name-esc"),
    pytest.param("name", "ok\x9b2J\x9b1;31mREVOKED", id="name-c1-csi"),
    pytest.param("owner", "acme\x85", id="owner-c1-nel"),
    pytest.param("name", "x \u202eevil", id="name-bidi-override"),
    pytest.param("owner", "acme\u2067x\u2069", id="owner-bidi-isolate"),
    pytest.param("name", "a\u200fb", id="name-rtl-mark"),
    pytest.param("name", "a\u2028b", id="name-line-separator"),
]


# -- refused before storing ------


@pytest.mark.parametrize("metadata", BAD_METADATA)
def test_bad_metadata_is_refused_on_create_and_update(guard: KeyGuard, metadata: Any) -> None:
    with pytest.raises(InvalidKeySettings) as caught:
        guard.keys.create(owner="o", name="n", metadata=metadata)
    assert caught.value.field == "metadata"
    assert guard.keys.list(include_revoked=True) == []
    key = guard.keys.create(owner="o", name="n", metadata={"ok": [1, 2.5, None, True]})
    with pytest.raises(InvalidKeySettings) as caught:
        guard.keys.update(key.id, metadata=metadata)
    assert caught.value.field == "metadata"
    assert guard.keys.get(key.id).metadata == {"ok": (1, 2.5, None, True)}


def test_metadata_at_the_depth_bound_is_kept(guard: KeyGuard) -> None:
    key = guard.keys.create(owner="o", name="n", metadata=deep(8))
    assert guard.keys.get(key.id).to_dict()["metadata"] == deep(8)


@pytest.mark.parametrize(("field", "value"), BAD_TEXT)
def test_bad_names_and_owners_are_refused(guard: KeyGuard, field: str, value: str) -> None:
    with pytest.raises(InvalidKeySettings) as caught:
        guard.keys.create(**{"owner": "o", "name": "n", field: value})
    assert caught.value.field == field
    assert guard.keys.list(include_revoked=True) == []


def test_names_in_any_script_are_kept(guard: KeyGuard) -> None:
    """Only controls are refused: letters of any script, emoji sequences (joined by
    U+200D) and a right-to-left name without bidi controls are names."""
    for text in ("Müller GmbH", "مفتاح الإنتاج", "键 🔑", "👩‍💻 team", "naïve\u00a0key"):
        info = guard.keys.create(owner=text, name=text).info
        assert (info.owner, info.name) == (text, text)


def test_a_passphrase_with_a_lone_surrogate_is_refused(guard: KeyGuard) -> None:
    with pytest.raises(InvalidKeySettings) as caught:
        guard.keys.create(owner="o", name="n", passphrase="long enough \ud800")
    assert caught.value.field == "passphrase"


RAW_BODIES = [
    pytest.param(b'{"metadata": {"x": NaN}}', "metadata", id="nan"),
    pytest.param(b'{"metadata": {"x": Infinity}}', "metadata", id="infinity"),
    pytest.param(b'{"metadata": {"x": [-Infinity]}}', "metadata", id="minus-infinity"),
    pytest.param(b'{"metadata": {"x": "\\ud800"}}', "metadata", id="surrogate-value"),
    pytest.param(b'{"metadata": {"\\ud800": 1}}', "metadata", id="surrogate-key"),
    pytest.param(b'{"metadata": ' + json.dumps(deep(30)).encode() + b"}", "metadata", id="deep"),
    pytest.param(b'{"name": "\\ud800"}', "name", id="surrogate-name"),
    pytest.param(b'{"owner": "x\\udfff"}', "owner", id="surrogate-owner"),
    pytest.param(b'{"name": "a\\u0000"}', "name", id="nul-name"),
    pytest.param(b'{"name": "a\\u009b2J"}', "name", id="c1-name"),
    pytest.param(b'{"owner": "a\\u202eb"}', "owner", id="bidi-owner"),
    pytest.param(b'{"name": "a\\u2066b"}', "name", id="isolate-name"),
    pytest.param(b'{"passphrase": "\\ud800\\ud800\\ud800\\ud800xxxx"}', "passphrase", id="phrase"),
    pytest.param(b'{"scopes": ["\\ud800"]}', "scopes", id="surrogate-scope"),
    pytest.param(b'{"allowed_ips": ["\\ud800"]}', "allowed_ips", id="surrogate-ip"),
    pytest.param(b'{"rate_limit": "\\ud800"}', "rate_limit", id="surrogate-rate"),
    pytest.param(b'{"expires_in": NaN}', "expires_in", id="nan-duration"),
    pytest.param(b'{"expires_at": "\\ud800"}', "expires_at", id="surrogate-date"),
    pytest.param(b'{"max_uses": Infinity}', "max_uses", id="infinite-uses"),
]


@pytest.fixture
async def admin(guard: KeyGuard) -> Any:
    token = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
    transport = httpx.ASGITransport(app=admin_app(guard), client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.headers["authorization"] = f"Bearer {token}"
        yield c


@pytest.mark.parametrize(("raw", "field"), RAW_BODIES)
async def test_admin_refuses_unrenderable_json_naming_the_field(
    admin: httpx.AsyncClient, guard: KeyGuard, raw: bytes, field: str
) -> None:
    target = guard.keys.create(owner="acme", name="target").id
    ids = lambda: [k.id for k in guard.keys.list(include_revoked=True)]  # noqa: E731
    before = ids()
    body = json.loads(raw)
    body = {"owner": "acme", "name": "ci", **body}
    content = json.dumps(body, allow_nan=True).encode()
    headers = {"content-type": "application/json"}
    r = await admin.post("/api/keys", content=content, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_key_settings" and r.json()["field"] == field
    assert ids() == before
    if field in ("name", "metadata", "scopes", "allowed_ips", "rate_limit", "expires_at"):
        unchanged = guard.keys.get(target)
        patch = {k: v for k, v in body.items() if k == field}
        r = await admin.patch(
            f"/api/keys/{target}", content=json.dumps(patch).encode(), headers=headers
        )
        assert r.status_code == 422 and r.json()["field"] == field, r.text
        assert guard.keys.get(target) == unchanged


@pytest.mark.parametrize("depth", [2_000, 60_000])
async def test_admin_answers_a_body_nested_past_any_bound_with_400(
    admin: httpx.AsyncClient, depth: int
) -> None:
    raw = b'{"metadata": ' + b"[" * depth + b"]" * depth + b"}"
    r = await admin.post("/api/keys", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413) and r.json()["code"] in (
        "invalid_request",
        "payload_too_large",
    )


async def test_unknown_field_names_are_not_echoed_whole(
    admin: httpx.AsyncClient, guard: KeyGuard
) -> None:
    issued = guard.keys.create(owner="o", name="n")
    token = issued.token or ""
    for name in (token, "\ud800bad"):
        content = json.dumps({"owner": "o", "name": "n", name: 1}).encode()
        r = await admin.post(
            "/api/keys", content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and r.json()["detail"] == "unknown field"
        assert token not in r.text


# -- corrupt rows in every backend ------


CORRUPT = [
    pytest.param(lambda d: "{QQQ not json", id="bad-json"),
    pytest.param(lambda d: '["QQQ"]', id="not-an-object"),
    pytest.param(lambda d: json.dumps({k: v for k, v in d.items() if k != "owner"}), id="missing"),
    pytest.param(lambda d: json.dumps({**d, "scopes": "read"}), id="scopes-a-string"),
    pytest.param(lambda d: json.dumps({**d, "created_at": "QQQ"}), id="time-a-string"),
    pytest.param(lambda d: json.dumps({**d, "expires_at": 1e300}), id="time-out-of-range"),
    pytest.param(lambda d: json.dumps({**d, "kind": "QQQ"}), id="unknown-kind"),
    pytest.param(lambda d: json.dumps({**d, "QQQ": "red"}), id="unknown-field"),
    pytest.param(lambda d: json.dumps({**d, "id": "QQQelse000000000"}), id="other-id"),
    pytest.param(lambda d: json.dumps({**d, "metadata": {"x": math.nan}}), id="nan-metadata"),
    pytest.param(lambda d: json.dumps({**d, "name": "\ud800QQQ"}), id="surrogate-name"),
    pytest.param(lambda d: json.dumps({**d, "metadata": {"\udc00": 1}}), id="surrogate-key"),
    pytest.param(lambda d: json.dumps({**d, "metadata": deep(40)}), id="deep-metadata"),
    pytest.param(lambda d: json.dumps({**d, "max_uses": 1.5}), id="uses-a-float"),
    pytest.param(lambda d: json.dumps({**d, "allowed_ips": ["QQQ.1"]}), id="ip-not-a-network"),
    pytest.param(
        lambda d: json.dumps({**d, "secret_hash": "hmac-sha256$\u00e9QQQ"}), id="hash-not-ascii"
    ),
    pytest.param(
        lambda d: json.dumps({**d, "secret_hash": "kgf$\u00e91$$argon2id$QQQ"}),
        id="filter-not-ascii",
    ),
]


@pytest.fixture(params=BACKENDS)
def backend_guard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyGuard]:
    for url in store_url(request.param, request, tmp_path):
        g = KeyGuard({"store": url, "policy": {"allow_private_ips": True}, "cache": None})
        yield g
        g.close()


def overwrite(guard: KeyGuard, key_id: str, doc: str) -> None:
    """Replace a key's stored document behind keyguard's back, as another program might."""
    store: Any = guard.store
    kind = type(store).__name__
    if kind == "MemoryStore":
        store._docs[key_id] = doc
    elif kind == "RedisStore":
        store._client.set(store._k("key", key_id), doc)
    else:
        mark = store.MARK  # the SQL store's placeholder
        with store._db(write=True) as db:
            db.execute(f"UPDATE keyguard_keys SET data = {mark} WHERE id = {mark}", (doc, key_id))


@pytest.mark.parametrize("corrupt", CORRUPT)
async def test_a_corrupt_row_is_a_store_error_naming_the_key_and_listings_show_the_rest(
    backend_guard: KeyGuard, corrupt: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guard = backend_guard
    good = guard.keys.create(owner="acme", name="good", metadata={"team": "x"})
    bad = guard.keys.create(owner="acme", name="bad", scopes=["read"])
    admin = guard.keys.create(owner="ops", name="root", scopes=["keyguard:admin"])
    doc = json.loads(guard.store.get(bad.id).to_json())  # type: ignore[union-attr]
    row = corrupt(doc)
    overwrite(guard, bad.id, row)
    caplog.set_level(logging.ERROR, logger="keyguard")

    with pytest.raises(StoreError) as caught:
        guard.store.get(bad.id)
    assert bad.id in str(caught.value) and "QQQ" not in str(caught.value)
    assert any(bad.id in r.getMessage() for r in caplog.records) and "QQQ" not in caplog.text
    with pytest.raises(StoreError):
        guard.keys.get(bad.id)
    assert [k.id for k in guard.keys.list(owner="acme")] == [good.id]
    assert {k.id for k in guard.keys.list(include_revoked=True)} == {good.id, admin.id}

    app = Starlette(routes=[Route("/v1/x", lambda request: JSONResponse({"ok": True}))])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/v1/x", headers={"authorization": f"Bearer {bad.token}"})
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
        assert (await c.get("/v1/x", headers={"authorization": f"Bearer {good.token}"})).json()
    transport = httpx.ASGITransport(app=admin_app(guard), client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.headers["authorization"] = f"Bearer {admin.token}"
        r = await c.get("/api/keys", params={"owner": "acme"})
        assert r.status_code == 200 and [k["id"] for k in r.json()["keys"]] == [good.id]
        for method, path in [("GET", ""), ("PATCH", ""), ("POST", "/revoke")]:
            body = {"name": "x"} if method == "PATCH" else None
            r = await c.request(method, f"/api/keys/{bad.id}{path}", json=body)
            assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
        # The bad row can still be deleted, and then nothing is left of it.
        assert (await c.delete(f"/api/keys/{bad.id}")).status_code == 204
        assert (await c.get(f"/api/keys/{bad.id}")).status_code == 404
    # A corrupt row never makes room under the owner limit, nor breaks a create.
    guard.keys.create(owner="acme", name="after")


def misfile(guard: KeyGuard, key_id: str, owner: str) -> None:
    """File a key under another owner's index (a column, a sorted set) behind
    keyguard's back, leaving its record as it is."""
    store: Any = guard.store
    kind = type(store).__name__
    if kind == "RedisStore":
        store._client.zadd(store._k("owner", owner), {key_id: 0})
        store._client.zadd(store._k("all"), {b"\xff\xfe not text": 0})
        store._client.zadd(store._k("owner", owner), {b"\xff\xfe not text": 0})
    else:
        with store._db(write=True) as db:
            db.execute(
                f"UPDATE keyguard_keys SET owner = {store.MARK} WHERE id = {store.MARK}",
                (owner, key_id),
            )


@pytest.mark.parametrize("backend_guard", ["sqlite", "postgresql", "redis"], indirect=True)
async def test_an_index_that_disagrees_with_the_record_never_breaks_or_widens_a_listing(
    backend_guard: KeyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    guard = backend_guard
    mine = guard.keys.create(owner="alice", name="mine")
    theirs = guard.keys.create(owner="bob", name="theirs")
    misfile(guard, theirs.id, "alice")
    caplog.set_level(logging.ERROR, logger="keyguard")
    assert [k.id for k in guard.keys.list(owner="alice")] == [mine.id]
    assert {k.id for k in guard.keys.list()} == {mine.id, theirs.id}
    assert any(theirs.id in r.getMessage() for r in caplog.records)
    tenant = admin_app(guard, authorize=lambda request: Principal("alice", owner="alice"))
    transport = httpx.ASGITransport(app=tenant, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/api/keys")
        assert r.status_code == 200 and [k["id"] for k in r.json()["keys"]] == [mine.id]
        assert (await c.get(f"/api/keys/{theirs.id}")).status_code == 404


# -- a token where a key id belongs ------

ID_METHODS = [
    pytest.param("get", {}, id="get"),
    pytest.param("update", {"name": "x"}, id="update"),
    pytest.param("revoke", {}, id="revoke"),
    pytest.param("suspend", {}, id="suspend"),
    pytest.param("resume", {}, id="resume"),
    pytest.param("rotate", {}, id="rotate"),
    pytest.param("delete", {}, id="delete"),
]


@pytest.mark.parametrize(("method", "kwargs"), ID_METHODS)
async def test_a_token_given_as_a_key_id_is_not_found_and_not_echoed(
    guard: KeyGuard, caplog: pytest.LogCaptureFixture, method: str, kwargs: dict[str, Any]
) -> None:
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    issued = guard.keys.create(owner="o", name="n")
    token = issued.token or ""
    for call in (getattr(guard.keys, method), getattr(guard.keys, "a" + method)):
        with pytest.raises(KeyNotFound) as caught:
            result = call(token, **kwargs)
            if hasattr(result, "__await__"):
                await result
        exc = caught.value
        for text in (str(exc), repr(exc), exc.key_id, *map(str, exc.args)):
            assert token not in text and token[3:-4] not in text
        assert exc.key_id == f"kg_…{token[-4:]}"
    assert token not in caplog.text
    if method != "get":  # changes are audited, refusals too: with the hint
        events = [r.audit for r in caplog.records if r.audit["action"] != "key.create"]  # type: ignore[attr-defined]
        assert [e["key_id"] for e in events] == [f"kg_…{token[-4:]}"] * 2
    info = guard.keys.get(issued.id)  # the id inside the token was not touched
    assert info.revoked_at is None and info.suspended_at is None and info.name == "n"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        pytest.param("AbCdEfGh12345678", "AbCdEfGh12345678", id="a-key-id"),
        pytest.param("nope", "nope", id="short"),
        pytest.param("kg_" + "A" * 16 + "_" + "s" * 30, "kg_…ssss", id="token"),
        pytest.param("x" * 39 + "WXYZ", "…WXYZ", id="signing-secret"),
        pytest.param("correct horse battery staple", "…aple", id="passphrase"),
        pytest.param("correct horse", "…", id="short-passphrase"),  # no tail: too short
        pytest.param("Hunter2-Hunter2x", "…", id="id-like-passphrase"),  # not a key id's alphabet
        pytest.param("Hunter2_" + "x" * 20, "…xxxx", id="underscore-is-not-a-prefix"),
        pytest.param("a\ud800" * 12, "…a\\ud800a\\ud800", id="surrogates"),
        pytest.param("\x1b[2J" * 6, "…\\x1b[2J", id="escape-in-the-tail"),
        pytest.param(12, "<int>", id="not-text"),
    ],
)
def test_shown_id(given: object, shown: str) -> None:
    assert shown_id(given) == shown


SHAPE = re.compile(r"[0-9]{1,3}[a-z]")


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        pytest.param("30d", "'30d'", id="shaped-is-quoted"),
        pytest.param("nope", "…", id="id-like-but-not-shaped"),
        pytest.param("Hunter2-Hunter2x", "…", id="short-passphrase"),
        pytest.param("kg_" + "A" * 16 + "_" + "s" * 30, "kg_…ssss", id="token"),
        pytest.param(None, "<NoneType>", id="not-text"),
    ],
)
def test_shown_value_quotes_only_what_has_the_shape(given: object, shown: str) -> None:
    assert shown_value(given, SHAPE) == shown
    if shown.startswith("'"):
        assert shown_value(given, SHAPE, quoted=False) == given


async def test_a_token_in_the_admin_path_is_a_plain_404(
    admin: httpx.AsyncClient, guard: KeyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    issued = guard.keys.create(owner="o", name="n")
    token = issued.token or ""
    for method, path in [("GET", ""), ("POST", "/revoke"), ("DELETE", ""), ("POST", "/suspend")]:
        r = await admin.request(method, f"/api/keys/{token}{path}")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert token not in r.text
    assert token not in caplog.text
    assert guard.keys.get(issued.id).revoked_at is None


async def test_a_token_in_a_refused_requests_path_is_logged_as_its_hint(
    guard: KeyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    """A token pasted into a URL (the admin API's {id}, any guarded path) of a request
    that is refused: the audit event names the path with that segment as its hint."""
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    token = guard.keys.create(owner="o", name="n").token or ""
    admin = httpx.ASGITransport(app=admin_app(guard), client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=admin, base_url="http://t") as c:
        assert (await c.get(f"/api/keys/{token}")).status_code == 401  # no admin key
        r = await c.post(f"/api/keys/{token}/revoke", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    app = Starlette(routes=[Route("/x/{rest:path}", lambda request: JSONResponse({}))])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    gate = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=gate, base_url="http://t") as c:
        assert (await c.get(f"/x/{token}/more")).status_code == 401
    denied = [r.getMessage() for r in caplog.records if "request.denied" in r.getMessage()]
    assert len(denied) >= 3 and all(token not in m for m in denied)
    assert all(f"kg_…{token[-4:]}" in json.loads(m)["path"] for m in denied)


def test_the_cli_never_echoes_a_token_given_as_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from keyguard.cli import main

    url = f"sqlite:///{tmp_path / 'k.db'}"
    g = KeyGuard({"store": url})
    token = g.keys.create(owner="o", name="n").token or ""
    g.close()
    for command in ("revoke", "show", "suspend", "resume", "rotate"):
        with pytest.raises(SystemExit) as exited:
            main(["--store", url, "keys", command, token])
        out, err = capsys.readouterr()
        assert exited.value.code == 1 and token not in out + err
        assert f"kg_…{token[-4:]}" in err


async def test_a_secret_pasted_into_another_field_is_not_echoed(
    admin: httpx.AsyncClient, guard: KeyGuard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wherever a refusal quotes what was given (an allowlist entry, a duration, a
    metadata pair), a token or secret pasted there is shown only as its hint."""
    from keyguard.cli import main

    token = guard.keys.create(owner="o", name="n").token or ""
    secret = "x" * 39 + "WXYZ"  # a signing secret's shape
    for pasted in (token, secret, token + "/24"):
        with pytest.raises(InvalidKeySettings) as caught:
            guard.keys.create(owner="o", name="m", allowed_ips=[pasted])
        assert pasted[:-4] not in str(caught.value) and "…" in str(caught.value)
        r = await admin.post("/api/keys", json={"owner": "o", "name": "m", "allowed_ips": [pasted]})
        assert r.status_code == 422 and pasted[:-4] not in r.text
    for bad in ("203.0.113.0/33", "not-an-ip"):  # what looks like an entry is quoted
        with pytest.raises(InvalidKeySettings) as caught:
            guard.keys.create(owner="o", name="m", allowed_ips=[bad])
        assert (repr(bad) in str(caught.value)) == (bad[0].isdigit())
    url = f"sqlite:///{tmp_path / 'k.db'}"
    for args in (
        ["keys", "create", "--owner", "o", "--name", "n", "--ip", token],
        ["keys", "create", "--owner", "o", "--name", "n", "--expires-in", token],
        ["keys", "create", "--owner", "o", "--name", "n", "--metadata", token],
        ["keys", "rotate", "AbCdEfGh12345678", "--grace", secret],
    ):
        with pytest.raises(SystemExit) as exited:
            main(["--store", url, *args])
        out, err = capsys.readouterr()
        assert exited.value.code != 0 and token[:-4] not in out + err and secret[:-4] not in err


async def test_a_short_passphrase_pasted_into_another_field_is_not_echoed(
    admin: httpx.AsyncClient, guard: KeyGuard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid passphrase short and plain enough to look like an id (16 letters,
    digits and '-') is no more echoed than a token: a refusal quotes what it was
    given only when it has the field's shape, and the mistakes people make (a
    typo'd address, duration, metadata key or field name) are still quoted."""
    from keyguard.cli import main

    phrase = "Hunter2-Hunter2x"
    guard.keys.create(owner="o", name="n", passphrase=phrase)  # the leak watch knows it
    for body in (
        {"allowed_ips": [phrase]},
        {"expires_in": phrase},
        {phrase: 1},
        {"rate_limit": phrase},
        {"scopes": [phrase + " "]},
    ):
        r = await admin.post("/api/keys", json={"owner": "o", "name": "m", **body})
        assert r.status_code == 422 and phrase not in r.text and phrase[4:] not in r.text
    quoted = {
        "allowed_ips": ({"allowed_ips": ["203.0.113.0/33"]}, "'203.0.113.0/33'"),
        "colour": ({"colour": "red"}, "colour"),
    }
    for field, (body, shown) in quoted.items():
        r = await admin.post("/api/keys", json={"owner": "o", "name": "m", **body})
        assert r.status_code == 422 and r.json()["field"] == field
        assert shown in r.json()["detail"] or r.json()["field"] == shown

    url = f"sqlite:///{tmp_path / 'k.db'}"
    create = ["--store", url, "keys", "create", "--owner", "o", "--name", "n"]
    for args, pasted in (
        ([*create, "--ip", phrase], phrase),
        ([*create, "--expires-in", phrase], phrase),
        ([*create, "--expires-in", "hunter2hunter2x"], "hunter2hunter2x"),
        ([*create, "--metadata", phrase], phrase),
        ([*create, "--metadata", "=" + phrase], phrase),
        (["--store", url, "keys", "rotate", "AbCdEfGh12345678", "--grace", phrase], phrase),
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        out, err = capsys.readouterr()
        assert exited.value.code == 2, err
        assert pasted not in out + err and pasted[4:] not in err, err
        assert "…" in err or "needs a KEY" in err, err
    for args, shown in (
        ([*create, "--ip", "203.0.113.0/33"], "'203.0.113.0/33'"),
        ([*create, "--expires-in", "30x"], "'30x'"),
        ([*create, "--expires-in", "2 fortnights"], "'2 fortnights'"),
        ([*create, "--expires-in", "200000w"], "'200000w' is longer than 100 years"),
        ([*create, "--metadata", "team"], "'team' is not KEY=VALUE"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and shown in err, err


# -- nothing in a listing can authenticate ------


def _listed_with(field: str, token: str) -> dict[str, Any]:
    """create() keyword arguments with `token` in (or as) `field`."""
    kwargs: dict[str, Any] = {"owner": "o", "name": "n"}
    if field == "owner":
        kwargs["owner"] = token
    elif field == "name":
        kwargs["name"] = f"deploy key {token} (old)"  # inside the text counts too
    elif field == "scopes":
        kwargs["scopes"] = ["read", token]
    elif field == "metadata":
        kwargs["metadata"] = {"notes": ["rotated", {"was": token}]}
    else:  # a metadata key
        kwargs["metadata"] = {token: 1}
    return kwargs


LISTED = ["owner", "name", "scopes", "metadata", "metadata-key"]


@pytest.mark.parametrize("field", LISTED)
def test_a_token_in_a_listed_field_is_refused(guard: KeyGuard, field: str) -> None:
    """A field every listing shows (owner, name, scopes, metadata keys and values)
    never holds one of the guard's tokens: 422/InvalidKeySettings naming the field,
    on create and update, and the refusal does not quote it."""
    token = guard.keys.create(owner="victim", name="v").token or ""
    before = guard.keys.list(include_revoked=True)
    kwargs = _listed_with(field, token)
    with pytest.raises(InvalidKeySettings) as caught:
        guard.keys.create(**kwargs)
    named = field.partition("-")[0]
    assert caught.value.field == named and token not in str(caught.value)
    assert guard.keys.list(include_revoked=True) == before
    if named != "owner":
        target = before[0].id
        with pytest.raises(InvalidKeySettings) as caught:
            guard.keys.update(target, **{named: kwargs[named]})
        assert caught.value.field == named
        assert guard.keys.get(target) == before[0]


def test_a_token_with_a_mistyped_checksum_is_refused_and_other_text_is_not(
    guard: KeyGuard,
) -> None:
    """The gate's own parser gives the shape. A token whose checksum is mistyped
    still carries its secret (the checksum is a CRC anyone can recompute): refused.
    The shape under another prefix, a cut token or ordinary text may be named."""
    token = guard.keys.create(owner="victim", name="v").token or ""
    typo = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(InvalidKeySettings):
        guard.keys.create(owner="o", name=f"x{typo}x")
    other = "zz_" + "A" * 16 + "_" + "b" * 30
    for text in (other, "kg_" + "A" * 16 + "_" + "b" * 29, "kg_ key for CI", "kg_" * 40):
        assert guard.keys.create(owner=text, name=text).info.name == text


async def test_a_token_as_owner_or_name_over_http_and_the_cli(
    admin: httpx.AsyncClient,
    guard: KeyGuard,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from keyguard.cli import main

    caplog.set_level(logging.INFO, logger="keyguard.audit")
    token = guard.keys.create(owner="victim", name="v").token or ""
    target = guard.keys.create(owner="acme", name="t").id
    for body in (
        {"owner": token, "name": "n"},
        {"owner": "acme", "name": token},
        {"owner": "acme", "name": "n", "metadata": {"k": token}},
        {"owner": "acme", "name": "n", "scopes": [token]},
    ):
        field = next(k for k, v in body.items() if token in json.dumps(v))
        r = await admin.post("/api/keys", json=body)
        assert r.status_code == 422 and r.json()["field"] == field and token not in r.text
    r = await admin.patch(f"/api/keys/{target}", json={"name": token})
    assert r.status_code == 422 and r.json()["field"] == "name" and token not in r.text
    assert guard.keys.get(target).name == "t"

    url = f"sqlite:///{tmp_path / 'k.db'}"
    g = KeyGuard({"store": url})
    cli_token = g.keys.create(owner="victim", name="v").token or ""
    kid = g.keys.create(owner="o", name="kept").id
    g.close()
    create = ["keys", "create", "--owner", "o"]
    for args, field in (
        (["keys", "create", "--owner", cli_token, "--name", "n"], "owner"),
        ([*create, "--name", cli_token], "name"),
        ([*create, "--name", "n", "--metadata", f"k={cli_token}"], "metadata"),
        (["keys", "update", kid, "--name", cli_token], "name"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(["--store", url, *args])
        out, err = capsys.readouterr()
        assert exited.value.code == 2 and f"error: {field}: must not contain" in err, err
        assert cli_token not in out + err
    assert token not in caplog.text and cli_token not in caplog.text


def test_the_audit_log_never_shows_a_token_as_an_owner(
    guard: KeyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused (whatever field is refused first) or stored before such owners
    were refused: an event shows such an owner only as its hint."""
    caplog.set_level(logging.INFO, logger="keyguard.audit")
    token = guard.keys.create(owner="victim", name="v").token or ""
    for bad in ({"allowed_ips": ["not-an-ip"]}, {"expires_in": -1}, {"kind": "x"}, {}):
        with pytest.raises(InvalidKeySettings):
            guard.keys.create(owner=token, name="n", **bad)
    old = guard.keys.create(owner="o", name="old").id  # a row from before: its owner a token
    guard.store.modify(old, lambda r: r.replace(owner=f"team {token}"))
    guard.forget(old)
    assert guard.keys.get(old).owner == f"team {token}"
    guard.keys.revoke(old)
    events = [r.audit for r in caplog.records if r.name == "keyguard.audit"]  # type: ignore[attr-defined]
    owners = [e["owner"] for e in events if e["action"] != "key.create" or e["result"] != "ok"]
    assert owners == [f"kg_…{token[-4:]}"] * 4 + [f"…{token[-4:]}"]
    assert token not in caplog.text and token[3:-4] not in caplog.text


def test_an_ipv4_mapped_entry_is_stored_as_the_ipv4_it_names() -> None:
    g = KeyGuard({"store": "memory://"})
    info = g.keys.create(owner="o", name="n", allowed_ips=["::ffff:203.0.113.7"]).info
    assert info.allowed_ips == ("203.0.113.7/32",)
    issued = g.keys.create(owner="o", name="m", allowed_ips=["::ffff:203.0.113.0/120"])
    assert issued.info.allowed_ips == ("203.0.113.0/24",)
    assert g.verify(issued.token or "", client_ip="203.0.113.9").id == issued.info.id
    assert g.verify(issued.token or "", client_ip="::ffff:203.0.113.9").id == issued.info.id


# -- metadata handed to a request is read-only ------


def test_key_info_metadata_is_read_only(guard: KeyGuard) -> None:
    issued = guard.keys.create(owner="o", name="n", metadata={"team": "x", "tags": ["a"]})
    nested = guard.keys.create(owner="o", name="m", metadata={"deep": {"k": "v"}})
    info = guard.verify(issued.token or "")
    with pytest.raises(TypeError):
        info.metadata["team"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.metadata["tags"].append("b")
    with pytest.raises(TypeError):
        guard.verify(nested.token or "").metadata["deep"]["k"] = "w"
    with pytest.raises(AttributeError):
        info.metadata = {}  # type: ignore[misc]
    plain = info.to_dict()
    plain["metadata"]["team"] = "changed"
    plain["metadata"]["tags"].append("b")
    again = guard.verify(issued.token or "")
    assert again.to_dict()["metadata"] == {"team": "x", "tags": ["a"]}
    assert json.loads(json.dumps(again.to_dict()))["metadata"] == {"team": "x", "tags": ["a"]}


async def test_what_one_request_does_to_metadata_no_other_request_sees(guard: KeyGuard) -> None:
    issued = guard.keys.create(owner="o", name="n", metadata={"plan": "free", "seen": []})

    async def handler(request: Request) -> JSONResponse:
        key = request.scope["keyguard.key"]
        tried = []
        for attempt in (
            lambda: key.metadata.__setitem__("plan", "pro"),
            lambda: key.metadata["seen"].append(1),
            lambda: dict.__setitem__(key.metadata, "plan", "pro"),
        ):
            try:
                attempt()
                tried.append("changed")
            except (TypeError, AttributeError):
                tried.append("refused")
        return JSONResponse({"tried": tried, "metadata": key.to_dict()["metadata"]})

    app = Starlette(routes=[Route("/v1/x", handler)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(3):
            r = await c.get("/v1/x", headers={"authorization": f"Bearer {issued.token}"})
            assert r.json() == {
                "tried": ["refused"] * 3,
                "metadata": {"plan": "free", "seen": []},
            }

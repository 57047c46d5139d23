"""Holes an outside review found in signed requests, each held over HTTP on both
doors (ASGI and WSGI) where it applies; real uvicorn and werkzeug servers where
only a socket can send what is tested (two Host lines, a body that stalls).

1. rfc9421: the URL the library reads is built from a checked Host header, and
   the covered target components must be the request's own.
2. The body is read only after everything that needs none (headers, their
   form, the timestamp, the access key's form, the key found and able to
   sign), within a deadline, and a body the WSGI server cannot read is a 400.
3. The shared replay cache fails closed: while Redis cannot be asked a signed
   request is 503, and after Redis lost what it held, signatures made before
   are refused until they are stale.
4. How long Redis keeps a signature does not depend on the clock of the
   instance that remembered it.
5. No key-existence oracle: every signed request that did not prove its key's
   secret is told `invalid_signature`, whatever the access key names.
6. bitget and bybit sign the query decoded: one decoded text never stands for
   two parses (an encoded & or = is refused; a "+" is a space, as the app
   reads it). (The property over generated parameters: test_parsing_properties.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("http_message_signatures", reason="pip install http-message-signatures")

from keyguard import KeyGuard  # noqa: E402
from keyguard.decision import Facts  # noqa: E402

from . import servers  # noqa: E402
from .clients.live import serve  # noqa: E402
from .signing_util import (  # noqa: E402
    MASTER,
    Clock,
    Door,
    asgi_app,
    make_guard,
    signed,
    wsgi_app,
    wsgi_server,
)
from .test_rfc9421 import _signed  # noqa: E402

DOORS = [pytest.param("asgi", id="asgi"), pytest.param("wsgi", id="wsgi")]
Q = ("@method", "@authority", "@path", "@query")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _code(r: Any) -> str:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return str(r.json()["code"])


def _raw(base: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` on a fresh connection to `base` and read the answer to its end."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    return reply


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


# -- 1. rfc9421: the Host header cannot move the signed target ------------------------


@pytest.fixture
def rfc_guard(clock: Clock) -> Iterator[KeyGuard]:
    g = make_guard(clock, signing={"profile": "rfc9421"}, abuse={"max_failures": None})
    yield g
    g.close()


@pytest.fixture(params=DOORS)
async def rfc_door(request: pytest.FixtureRequest, rfc_guard: KeyGuard) -> AsyncIterator[Door]:
    d = Door(request.param, rfc_guard)
    yield d
    await d.aclose()


@pytest.mark.parametrize(
    ("signed_url", "sent", "host"),
    [
        pytest.param("http://t/", "/secret?x=1", "t#", id="fragment-hides-the-target"),
        pytest.param("http://t/", "/transfer?to=eve", "t#", id="fragment-post-target"),
        pytest.param("http://t/admin/users", "/users", "t/admin", id="path-prefix-in-host"),
        pytest.param("http://t/?a=1", "/", "t?a=1", id="query-in-host"),
        pytest.param("http://t/", "/", "u@t", id="userinfo-in-host"),
        pytest.param("http://t/", "/", "t x", id="space-in-host"),
        pytest.param("http://t/", "/", "t,evil", id="comma-joined-hosts"),
    ],
)
async def test_a_host_that_is_no_host_port_is_400(
    rfc_door: Door, rfc_guard: KeyGuard, signed_url: str, sent: str, host: str
) -> None:
    """A signature captured for one target, sent to another with a Host header
    that would splice the URL the library reads: refused before any proof."""
    key = rfc_guard.keys.create(owner="o", name="rfc", kind="signing")
    covered = Q if "?" in signed_url else Q[:3]
    request = _signed("GET", signed_url, key.info.id, key.secret, covered=covered)
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    r = await rfc_door.request("GET", sent, headers={**headers, "Host": host})
    assert r.status_code == 400 and _code(r) == "invalid_request", r.text
    assert "Host" in r.json()["detail"]


async def test_two_host_lines_are_400_at_the_door(rfc_guard: KeyGuard) -> None:
    """An ASGI server that hands the app both lines (uvicorn on httptools does):
    keyguard refuses them, whichever comes first."""
    key = rfc_guard.keys.create(owner="o", name="rfc", kind="signing")
    app = asgi_app(rfc_guard)
    for n, hosts in enumerate([["t", "evil.example"], ["evil.example", "t"]]):
        request = _signed("GET", "http://t/a", key.info.id, key.secret, nonce=f"d{n}")
        lines = [
            (k.encode(), v.encode()) for k, v in request.headers.items() if k.lower() != "host"
        ]
        lines += [(b"host", h.encode()) for h in hosts]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/a", headers=lines)
        assert r.status_code == 400 and _code(r) == "invalid_request", r.text


async def test_a_well_formed_host_still_passes(rfc_door: Door, rfc_guard: KeyGuard) -> None:
    key = rfc_guard.keys.create(owner="o", name="rfc", kind="signing")
    for n, host in enumerate(["t", "T:80", "[::1]:8080", "127.0.0.1:8000", "a-b.example_1~"]):
        url = f"http://{host}/x?n={n}"
        request = _signed("GET", url, key.info.id, key.secret, covered=Q, nonce=f"n{n}")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        r = await rfc_door.request("GET", f"/x?n={n}", headers={**headers, "Host": host})
        assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize(
    ("raw_path", "query", "component"),
    [
        pytest.param("/a#frag", "", "@path", id="fragment-in-the-path"),
        pytest.param("/a", "x=1#frag", "@query", id="fragment-in-the-query"),
    ],
)
def test_covered_target_components_must_be_the_routed_ones(
    rfc_guard: KeyGuard, raw_path: str, query: str, component: str
) -> None:
    """Whatever the URL's parse made of the target, the covered @path and @query
    are compared with the raw path and query the app routes."""
    key = rfc_guard.keys.create(owner="o", name="rfc", kind="signing")
    signed_url = "http://t/a" + ("?x=1" if query else "")
    request = _signed("GET", signed_url, key.info.id, key.secret, covered=Q if query else Q[:3])
    lines = [(k.lower(), v) for k, v in request.headers.items()]
    headers: dict[str, list[str]] = {}
    for name, value in lines:
        headers.setdefault(name, []).append(value)
    facts = Facts("GET", "/a", "203.0.113.1", headers)
    facts.body, facts.raw_path, facts.query, facts.fields = b"", raw_path, query, lines
    error = rfc_guard.check(facts).error
    assert error is not None and error.code == "invalid_request"
    assert component in error.detail


@pytest.mark.parametrize("kind", ["uvicorn", "werkzeug"])
def test_two_host_lines_are_400_on_real_servers(rfc_guard: KeyGuard, kind: str) -> None:
    """uvicorn on httptools hands both lines to the app (keyguard refuses them), on h11
    refuses them itself; werkzeug joins them with a comma (keyguard refuses that).
    Either way a 400, and the app never runs."""
    key = rfc_guard.keys.create(owner="o", name="rfc", kind="signing")
    app = asgi_app(rfc_guard) if kind == "uvicorn" else wsgi_app(rfc_guard)
    with serve(app) if kind == "uvicorn" else wsgi_server(app) as base:
        authority = base.removeprefix("http://")
        for n, hosts in enumerate([[authority, "evil.example"], ["evil.example", authority]]):
            request = _signed(
                "GET", f"http://{authority}/a", key.info.id, key.secret, nonce=f"h{n}"
            )
            head = "".join(f"Host: {h}\r\n" for h in hosts)
            head += "".join(
                f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host"
            )
            reply = _raw(base, f"GET /a HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
            by_keyguard, by_server = b"invalid_request" in reply, b"Invalid HTTP request" in reply
            assert _status(reply) == 400 and (by_keyguard or by_server), reply[:300]
        # The same request with one Host line passes: the refusal is the duplicate's.
        request = _signed("GET", f"http://{authority}/a", key.info.id, key.secret, nonce="one")
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        reply = _raw(base, f"GET /a HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        assert _status(reply) == 200, reply[:300]


# -- 5. every unproven signed request gets one answer ---------------------------------


@pytest.mark.parametrize("profile", ["kg", "rfc9421"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_unproven_signed_requests_all_answer_invalid_signature(
    clock: Clock, kind: str, profile: str
) -> None:
    """Whether the access key is malformed, unknown, deleted, a bearer key's id,
    revoked, suspended, expired or under another master key, a caller without its
    secret hears the same 401 `invalid_signature`; codes that tell the key's
    state go only to a caller that proved the secret, and bearer keys keep
    `invalid_key`."""
    from keyguard.crypto import MasterKeyRing, generate_master_key

    guard = make_guard(clock, signing={"profile": profile}, abuse={"max_failures": None})
    door = Door(kind, guard)
    keys = guard.keys
    try:
        live = keys.create(owner="o", name="live", kind="signing")
        revoked = keys.create(owner="o", name="revoked", kind="signing")
        keys.revoke(revoked.info.id)
        suspended = keys.create(owner="o", name="suspended", kind="signing")
        keys.suspend(suspended.info.id)
        expired = keys.create(owner="o", name="expired", kind="signing", expires_in=10)
        deleted = keys.create(owner="o", name="deleted", kind="signing")
        keys.delete(deleted.info.id)
        locked = keys.create(owner="o", name="pp", kind="signing", passphrase="a long passphrase")
        bearer = keys.create(owner="o", name="bearer")
        foreign = keys.create(owner="o", name="foreign", kind="signing")
        ring = MasterKeyRing([generate_master_key()])  # a secret this guard cannot decrypt
        guard.store.modify(
            foreign.info.id,
            lambda r: r.replace(encrypted_secret=ring.encrypt(foreign.secret or "", r.id)),
        )
        guard.forget(foreign.info.id)
        clock.advance(11)  # `expired` is now

        n = 0

        async def send(key_id: str, secret: str, **extra: str) -> tuple[int, str]:
            nonlocal n
            n += 1
            path = f"/x{n}"
            if profile == "rfc9421":
                req = _signed("GET", f"http://t{path}", key_id, secret, created=clock.now)
                headers = {k: v for k, v in req.headers.items() if k.lower() != "host"}
            else:
                headers = signed(key_id, secret, "GET", path, now=clock.now)
            r = await door.request("GET", path, headers={**headers, **extra})
            return r.status_code, r.json().get("code", "ok")

        wrong = "x" * 43
        unproven = {
            "malformed": ("not-a-key!", wrong),
            "unknown": ("A" * 16, wrong),
            "deleted": (deleted.info.id, deleted.secret),
            "bearer-id": (bearer.info.id, wrong),
            "live-wrong-secret": (live.info.id, wrong),
            "revoked-wrong-secret": (revoked.info.id, wrong),
            "suspended-wrong-secret": (suspended.info.id, wrong),
            "expired-wrong-secret": (expired.info.id, wrong),
            "passphrase-wrong-secret": (locked.info.id, wrong),
            "undecryptable": (foreign.info.id, foreign.secret or ""),
        }
        for name, (key_id, secret) in unproven.items():
            got = await send(key_id, secret or "", **{"KG-Passphrase": "nope nope"})
            assert got == (401, "invalid_signature"), name
        # Proven: the key's state is told.
        assert await send(revoked.info.id, revoked.secret or "") == (401, "revoked_key")
        assert await send(suspended.info.id, suspended.secret or "") == (401, "suspended_key")
        assert await send(expired.info.id, expired.secret or "") == (401, "expired_key")
        assert await send(live.info.id, live.secret or "") == (200, "ok")
        # A bearer credential keeps its own code.
        r = await door.request("GET", "/b", headers={"Authorization": "Bearer kg_nope"})
        assert r.status_code == 401 and _code(r) == "invalid_key"
    finally:
        await door.aclose()
        guard.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_what_a_body_declares_is_answered_alike_whatever_the_key(
    clock: Clock, kind: str
) -> None:
    """A Content-Length past the limit (413), one that is no number (400), and a
    body on a bybit GET (400) are answered before any key is looked up: the same
    answer for a signing key, a bearer key's id and an unknown one, so none of
    them tells a caller without the secret what the access key names."""
    answers: dict[str, set[tuple[int, str | None]]] = {}
    for profile in ("kg", "bybit"):
        guard = make_guard(
            clock,
            signing={"profile": profile, "max_body_bytes": 100},
            abuse={"max_failures": None},
        )
        door = Door(kind, guard)
        try:
            signer = guard.keys.create(owner="o", name="s", kind="signing")
            bearer = guard.keys.create(owner="o", name="b")
            ids = [signer.info.id, bearer.info.id, "A" * 16]
            probes = {
                "too-long": ("POST", b"x" * 200, {}),
                "not-a-number": ("POST", b"x", {"Content-Length": "abc"}),
            }
            if profile == "bybit":
                probes["get-with-a-body"] = ("GET", b"x", {})
            for name, (method, body, extra) in probes.items():
                seen = answers.setdefault(f"{profile}:{name}", set())
                for key_id in ids:
                    headers = signed(
                        key_id, "x" * 43, method, "/x", "", body, now=clock.now, profile=profile
                    )
                    headers.update(extra, **{"KG-Passphrase": "p"})
                    r = await door.request(method, "/x", headers=headers, content=body)
                    seen.add((r.status_code, r.headers.get("content-type") and _code(r)))
        finally:
            await door.aclose()
            guard.close()
    assert answers == {
        "kg:too-long": {(413, "payload_too_large")},
        "kg:not-a-number": {(400, "invalid_request")},
        "bybit:too-long": {(413, "payload_too_large")},
        "bybit:not-a-number": {(400, "invalid_request")},
        "bybit:get-with-a-body": {(400, "invalid_request")},
    }


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_a_body_the_signature_must_cover_is_answered_alike_whatever_the_key(
    clock: Clock, kind: str
) -> None:
    """rfc9421: a request that declares a body (Content-Length, or chunked) whose
    signature does not cover content-digest; bybit: a GET sending a chunked body.
    Both 400 before any key is looked up: the same for a signing key, a bearer
    key's id and an unknown one."""
    seen: dict[str, set[tuple[int, str]]] = {}
    for profile in ("rfc9421", "bybit"):
        guard = make_guard(clock, signing={"profile": profile}, abuse={"max_failures": None})
        door = Door(kind, guard)
        try:
            ids = [
                guard.keys.create(owner="o", name="s", kind="signing").info.id,
                guard.keys.create(owner="o", name="b").info.id,
                "A" * 16,
            ]
            for key_id in ids:
                for chunked in (False, True):
                    body = b'{"a": 1}'
                    if profile == "rfc9421":
                        req = _signed("POST", "http://t/x", key_id, "x" * 43, created=clock.now)
                        method = "POST"
                        headers = {
                            k: v
                            for k, v in req.headers.items()
                            if k.lower() not in ("host", "content-length")
                        }
                    else:
                        method = "GET"
                        headers = signed(
                            key_id, "x" * 43, "GET", "/x", now=clock.now, profile=profile
                        )
                    content: Any = body
                    if chunked:  # no Content-Length: httpx sends it chunked
                        content = _chunks(body) if kind == "asgi" else iter([body])
                    r = await door.request(method, "/x", headers=headers, content=content)
                    seen.setdefault(f"{profile}:{chunked}", set()).add((r.status_code, _code(r)))
        finally:
            await door.aclose()
            guard.close()
    assert all(answers == {(400, "invalid_request")} for answers in seen.values()), seen


# -- 2. nothing is read before the request names a key that can sign ------------------

SERVERS = [pytest.param("uvicorn", id="asgi-uvicorn"), pytest.param("werkzeug", id="wsgi-werkzeug")]
PROFILES = ["kg", "bitget", "okx", "bybit", "rfc9421"]


def _served(guard: KeyGuard, kind: str) -> Any:
    if kind == "a2wsgi":  # the WSGI door under uvicorn, through a2wsgi's thread pool
        from a2wsgi import WSGIMiddleware

        return serve(WSGIMiddleware(wsgi_app(guard), workers=2))
    return serve(asgi_app(guard)) if kind == "uvicorn" else wsgi_server(wsgi_app(guard))


def _signed_headers(
    profile: str, base: str, key_id: str, secret: str, body: bytes, now: float
) -> dict[str, str]:
    """Headers signing `POST /x` with `body` under `profile` (Host included)."""
    authority = base.removeprefix("http://")
    if profile == "rfc9421":
        req = _signed("POST", f"http://{authority}/x", key_id, secret, body=body, created=now)
        return dict(req.headers.items())
    return {
        "Host": authority,
        **signed(key_id, secret, "POST", "/x", "", body, now=now, profile=profile),
    }


def _head(headers: dict[str, str], length: int) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    return (
        f"POST /x HTTP/1.1\r\n{lines}Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
    )


def _answer_while_the_body_is_unsent(base: str, head: bytes, timeout: float = 3.0) -> bytes:
    """Send the head and a tenth of the body, then nothing: the answer must come
    without the rest (the body was never waited for)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + b"x" * 100)
        reply = b""
        while chunk := s.recv(65536):  # a timeout here: the server waited for the body
            reply += chunk
    return reply


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", SERVERS)
def test_refusals_that_need_no_body_come_before_it_is_read(kind: str, profile: str) -> None:
    """A junk signing header, a stale timestamp, a malformed, unknown or Bearer
    access key, a key whose secret no master key decrypts: each answered while
    the client has sent only a tenth of its declared body, under every profile."""
    from keyguard.crypto import MasterKeyRing, generate_master_key

    guard = make_guard(signing={"profile": profile}, abuse={"max_failures": None})
    key = guard.keys.create(owner="o", name="s", kind="signing")
    bearer = guard.keys.create(owner="o", name="b")
    foreign = guard.keys.create(owner="o", name="f", kind="signing")
    ring = MasterKeyRing([generate_master_key()])
    guard.store.modify(
        foreign.info.id, lambda r: r.replace(encrypted_secret=ring.encrypt("x" * 43, r.id))
    )
    guard.forget(foreign.info.id)
    body = b"x" * 1000
    try:
        with _served(guard, kind) as base:
            now = time.time()
            good = _signed_headers(profile, base, key.info.id, key.secret or "", body, now)
            junk_name = guard.signing.profile.signature
            cases: dict[str, tuple[dict[str, str], str]] = {
                "junk-signature-header": (
                    {"Host": "t", junk_name: "x"},
                    "invalid_request",
                ),
                "stale": (
                    _signed_headers(profile, base, key.info.id, key.secret or "", body, now - 60),
                    "stale_request",
                ),
                "malformed-key": (
                    _signed_headers(profile, base, "not a key!", "y" * 43, body, now),
                    "invalid_signature",
                ),
                "unknown-key": (
                    _signed_headers(profile, base, "A" * 16, "y" * 43, body, now),
                    "invalid_signature",
                ),
                "bearer-key": (
                    _signed_headers(profile, base, bearer.info.id, "y" * 43, body, now),
                    "invalid_signature",
                ),
                "undecryptable": (
                    _signed_headers(profile, base, foreign.info.id, "x" * 43, body, now),
                    "invalid_signature",
                ),
            }
            if profile == "rfc9421":  # the signing header alone is not a signature
                cases["junk-signature-header"] = (
                    {"Host": "t", "Signature": "x"},
                    "invalid_request",
                )
            for name, (headers, code) in cases.items():
                reply = _answer_while_the_body_is_unsent(base, _head(headers, len(body)))
                assert code.encode() in reply, (name, reply[:300])
            # The request signed right waits for its body (so the helper above tells a
            # wait), and passes with it.
            with pytest.raises(TimeoutError):
                _answer_while_the_body_is_unsent(base, _head(good, len(body)), timeout=1.0)
            reply = _raw(base, _head(good, len(body)) + body)
            assert _status(reply) == 200, reply[:300]
    finally:
        guard.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_refusals_before_the_body_count_as_failed_attempts(clock: Clock, kind: str) -> None:
    guard = make_guard(clock, abuse={"max_failures": "2/minute"})
    door = Door(kind, guard)
    try:
        key = guard.keys.create(owner="o", name="s", kind="signing")
        old = signed(key.info.id, key.secret or "", "POST", "/x", "", b"{}", now=clock.now - 60)
        unknown = signed("A" * 16, "y" * 43, "POST", "/x", "", b"{}", now=clock.now)
        for headers, code in ((old, "stale_request"), (unknown, "invalid_signature")):
            r = await door.request("POST", "/x", headers=headers, content=b"{}")
            assert r.status_code == 401 and _code(r) == code
        good = signed(key.info.id, key.secret or "", "POST", "/x", "", b"{}", now=clock.now)
        r = await door.request("POST", "/x", headers=good, content=b"{}")
        assert r.status_code == 429 and _code(r) == "too_many_failures"
    finally:
        await door.aclose()
        guard.close()


def _stall_or_trickle(base: str, head: bytes, trickle: bool, seconds: float) -> tuple[bytes, float]:
    """Send a tenth of the body, then nothing (or one byte every 50 ms); the answer
    and how long it took."""
    host, port = base.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=seconds + 5) as s:
        s.sendall(head + b"x" * 10)
        s.setblocking(False)
        reply = b""
        while time.monotonic() - start < seconds + 5:
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                if trickle:
                    with contextlib.suppress(OSError):
                        s.send(b"x")
                time.sleep(0.05)
                continue
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply and reply.endswith(b"}"):
                break
    return reply, time.monotonic() - start


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
@pytest.mark.parametrize("kind", [*SERVERS, pytest.param("a2wsgi", id="wsgi-a2wsgi-uvicorn")])
def test_a_body_that_does_not_arrive_in_time_is_400(
    kind: str, trickle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed request that names a live key but sends its body too slowly
    (stops, or one byte at a time) is answered 400 at the deadline, on both
    doors: the connection is not held for as long as the client likes."""
    monkeypatch.setattr("keyguard.body.READ_SECONDS", 0.5)
    guard = make_guard(abuse={"max_failures": None})
    key = guard.keys.create(owner="o", name="s", kind="signing")
    try:
        with _served(guard, kind) as base:
            body = b"x" * 100_000
            headers = _signed_headers("kg", base, key.info.id, key.secret or "", body, time.time())
            reply, took = _stall_or_trickle(base, _head(headers, len(body)), trickle, 0.5)
            assert _status(reply) == 400 and b"did not arrive within 0.5 seconds" in reply, reply
            assert took < 3.0
            # The server serves the next request as usual.
            fresh = _signed_headers("kg", base, key.info.id, key.secret or "", b"ok", time.time())
            assert _status(_raw(base, _head(fresh, 2) + b"ok")) == 200
    finally:
        guard.close()


def test_a_malformed_chunked_body_is_400_not_500() -> None:
    """werkzeug's de-chunking reader raises on a bad chunk header; a signed request
    that names a live key gets that far, and is answered 400."""
    guard = make_guard(abuse={"max_failures": None})
    key = guard.keys.create(owner="o", name="s", kind="signing")
    try:
        with wsgi_server(wsgi_app(guard)) as base:
            headers = _signed_headers("kg", base, key.info.id, key.secret or "", b"x", time.time())
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = f"POST /x HTTP/1.1\r\n{lines}Transfer-Encoding: chunked\r\n\r\nzz\r\n"
            reply = _raw(base, request.encode())
            assert _status(reply) == 400 and b"could not be read" in reply, reply[:300]
    finally:
        guard.close()


GUNICORN_APP = """
import json, os
import keyguard.body
from keyguard import KeyGuard
from keyguard.wsgi import KeyGuardMiddleware

keyguard.body.READ_SECONDS = 0.5


def ok(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [environ["wsgi.input"].read()]


app = KeyGuardMiddleware(ok, guard=KeyGuard(json.loads(os.environ["KG_SETTINGS"])))
"""


def test_gunicorn_a_stalled_body_frees_the_worker(tmp_path: Path) -> None:
    """gunicorn (one worker, one thread): a signed request whose body stalls is
    answered 400 at the deadline, and the worker serves the next request."""
    pytest.importorskip("gunicorn", reason="pip install gunicorn")
    settings = {
        "store": f"sqlite:///{tmp_path}/k.db",
        "signing": {"master_keys": [MASTER]},
        "abuse": {"max_failures": None},
    }
    guard = KeyGuard(settings)
    key = guard.keys.create(owner="o", name="s", kind="signing")
    guard.close()
    (tmp_path / "kgapp.py").write_text(GUNICORN_APP)
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KG_SETTINGS": json.dumps(settings)}
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "kgapp:app"]
    process = subprocess.Popen(  # noqa: S603
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("gunicorn did not start")
                time.sleep(0.05)
        body = b"x" * 1000
        headers = _signed_headers("kg", base, key.info.id, key.secret or "", body, time.time())
        reply, took = _stall_or_trickle(base, _head(headers, len(body)), False, 0.5)
        assert _status(reply) == 400 and b"did not arrive" in reply and took < 3.0, reply
        fresh = _signed_headers("kg", base, key.info.id, key.secret or "", b"ok", time.time())
        assert _status(_raw(base, _head(fresh, 2) + b"ok")) == 200
    finally:
        process.terminate()
        process.wait(10)


# -- 4. the replay entry outlives every instance's window ------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_a_replay_to_an_instance_whose_clock_is_behind_is_refused(
    tmp_path: Path, redis_url: str, redis_prefix: str, kind: str
) -> None:
    """Two instances on one Redis, one clock 9 s ahead and one 9 s behind: a
    signature used on the first, sent to the second after the time a ttl
    computed from the first's clock would have given it (1.5 s), is a replay."""
    from .test_signing import _cleanup

    settings = {
        "store": f"sqlite:///{tmp_path}/k.db",
        "cache": f"{redis_url}?prefix={redis_prefix}",
        "abuse": {"max_failures": None},
    }
    ahead = make_guard(lambda: time.time() + 9, **settings)  # type: ignore[arg-type]
    behind = make_guard(lambda: time.time() - 9, **settings)  # type: ignore[arg-type]
    one, two = Door(kind, ahead), Door(kind, behind)
    try:
        key = ahead.keys.create(owner="o", name="s", kind="signing")
        ts = time.time() - 20.5  # fresh for both; the old ttl: ts + 31 - (now + 9) = 1.5 s
        headers = signed(key.info.id, key.secret or "", "POST", "/pay", "", b"{}", now=ts)
        assert (
            await one.request("POST", "/pay", headers=headers, content=b"{}")
        ).status_code == 200
        time.sleep(1.6)
        r = await two.request("POST", "/pay", headers=headers, content=b"{}")
        assert r.status_code == 401 and _code(r) == "replayed_request"
    finally:
        await one.aclose()
        await two.aclose()
        ahead.close()
        behind.close()
        _cleanup(redis_url, redis_prefix)


# -- 3. replays across instances are refused while Redis is down or forgot -------------


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_replay_protection_fails_closed_across_a_redis_outage_and_restart(
    tmp_path: Path, clock: Clock, kind: str
) -> None:
    """f04: two instances on a redis-server of this test's own. Redis down: signed
    requests 503 on either instance, Bearer ones pass. Redis restarted without
    persistence: a signature used on one instance before the restart is refused
    on the other (503, not a pass), until a signature made after the loss."""
    redis = servers.RedisServer(servers.free_port(), str(tmp_path)).start()
    settings = {
        "store": f"sqlite:///{tmp_path}/k.db",
        "cache": f"{redis.url}?prefix=f04:",
        "abuse": {"max_failures": None},
    }
    one, two = make_guard(clock, **settings), make_guard(clock, **settings)
    a, b = Door(kind, one), Door(kind, two)
    key = one.keys.create(owner="o", name="s", kind="signing")
    token = one.keys.create(owner="o", name="b").token

    def sign() -> dict[str, str]:
        clock.advance(0.001)
        return signed(key.info.id, key.secret or "", "GET", "/a", now=clock.now)

    async def send(door: Door, headers: dict[str, str]) -> tuple[int, str]:
        r = await door.request("GET", "/a", headers=headers)
        return r.status_code, r.json().get("detail", "") if r.status_code != 200 else "ok"

    try:
        healthy = sign()
        assert await send(a, healthy) == (200, "ok")
        status, _ = await send(b, healthy)
        assert status == 401  # replayed, through Redis (and `b` has seen its marker)
        before = sign()
        assert await send(a, before) == (200, "ok")

        redis.stop()
        for door in (a, b):
            status, detail = await send(door, sign())
            assert status == 503 and "cannot be reached" in detail
            bearer = await door.request("GET", "/a", headers={"Authorization": f"Bearer {token}"})
            assert bearer.status_code == 200

        redis.start()  # empty: it kept nothing
        deadline = time.monotonic() + 10
        while True:  # the breaker lets one probe through a second
            status, detail = await send(b, before)
            if "cannot be reached" not in detail or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 503 and "lost what it remembered" in detail  # not a pass
        clock.advance(6)  # signed after the loss (+ the 5 s a clock may be ahead)
        assert await send(b, sign()) == (200, "ok")
        # `a` meets the new marker only now, and dates the loss by its own clock too
        # (a marker's time is its setter's): it refuses what is older, for 5 s.
        status, detail = await send(a, sign())
        assert status == 503 and "lost what it remembered" in detail
        clock.advance(6)
        assert await send(a, sign()) == (200, "ok")
    finally:
        await a.aclose()
        await b.aclose()
        one.close()
        two.close()
        redis.stop()


# -- 6. a decoded query means one thing -----------------------------------------------


def _exchange(profile: str, key: Any, now: float, text: bytes) -> dict[str, str]:
    """Headers signing GET /a whose query text, decoded, is `text` (as an SDK signs)."""
    import base64
    import hmac

    ts = str(round(now * 1000))
    if profile == "bitget":
        mac = hmac.digest(key.secret.encode(), (ts + "GET/a?").encode() + text, "sha256")
        return {
            "ACCESS-KEY": key.info.id,
            "ACCESS-TIMESTAMP": ts,
            "ACCESS-SIGN": base64.b64encode(mac).decode(),
        }
    string = (ts + key.info.id + "5000").encode() + text
    return {
        "X-BAPI-API-KEY": key.info.id,
        "X-BAPI-TIMESTAMP": ts,
        "X-BAPI-RECV-WINDOW": "5000",
        "X-BAPI-SIGN": hmac.digest(key.secret.encode(), string, "sha256").hex(),
    }


@pytest.mark.parametrize("profile", ["bitget", "bybit"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_a_decoded_query_cannot_be_respelled_into_other_parameters(
    clock: Clock, kind: str, profile: str
) -> None:
    """f02 (b): `?a=1&b=2` signed, sent as `?a=1%26b%3D2` (one parameter for the
    app): 400 for every case of the escapes. A "+" signed (ccxt sends it as %2B)
    does not verify as a literal "+", which the app reads as a space."""
    guard = make_guard(clock, signing={"profile": profile}, abuse={"max_failures": None})
    door = Door(kind, guard)
    try:
        key = guard.keys.create(owner="o", name="x", kind="signing")

        async def send(wire: str, text: bytes) -> tuple[int, str]:
            clock.advance(0.001)
            r = await door.request(
                "GET", "/a?" + wire, headers=_exchange(profile, key, clock.now, text)
            )
            return r.status_code, r.json().get("code", "ok")

        for wire in ("a=1%26b%3D2", "a=1%26b=2", "a=1&b%3d2", "a%3D1"):
            text = b"a=1&b=2" if "b" in wire else b"a=1"
            assert await send(wire, text) == (400, "invalid_request"), wire
        assert await send("a=1&b=2", b"a=1&b=2") == (200, "ok")
        assert await send("n=1%2B2", b"n=1+2") == (200, "ok")  # as ccxt sends a "+"
        assert await send("n=1+2", b"n=1+2") == (401, "invalid_signature")  # the app: "1 2"
        assert await send("n=1+2", b"n=1 2") == (200, "ok")  # what the app reads
        assert await send("n=1%202", b"n=1 2") == (200, "ok")
    finally:
        await door.aclose()
        guard.close()


async def test_the_asgi_deadline_ends_a_late_read_and_leaves_other_cancellations_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One timer per event loop ends late body reads (400); a cancellation that is
    not the deadline's (the server's, a client gone) goes on as a cancellation, and
    nothing is left behind either way."""
    import asyncio

    from keyguard import body
    from keyguard.decision import Facts
    from keyguard.exceptions import BadRequest

    monkeypatch.setattr(body, "READ_SECONDS", 0.2)
    signing = make_guard().signing

    async def never() -> dict[str, object]:
        await asyncio.sleep(3600)
        return {}

    def facts() -> Facts:
        made = Facts("POST", "/x", "203.0.113.1", {"content-length": ["5"]})
        made.source, made.receive = {"type": "http", "headers": []}, never
        return made

    started = time.monotonic()
    with pytest.raises(BadRequest) as late:
        await body.aread(facts(), signing)
    assert "did not arrive within 0.2 seconds" in late.value.detail
    assert time.monotonic() - started < 1.5
    task = asyncio.ensure_future(body.aread(facts(), signing))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reads = body._late_reads(asyncio.get_running_loop())
    assert reads.reading == {} and reads.late == set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


def test_the_asgi_deadline_keeps_no_event_loop_alive() -> None:
    """Each loop's record of reads in progress goes with the loop (a loop per call:
    async_to_sync, serverless handlers, tests)."""
    import asyncio
    import gc

    from keyguard import body

    async def read_once() -> None:
        loop = asyncio.get_running_loop()
        reads, task = body._late_reads(loop), asyncio.current_task()
        assert task is not None
        reads.start(loop, task, 5.0)
        reads.stop(task)

    before = len(body._READS)
    for _ in range(20):
        asyncio.run(read_once())
    gc.collect()
    assert len(body._READS) <= before

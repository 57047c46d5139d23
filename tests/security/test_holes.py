"""The classes of flaw an outside review found (issue 15), each held over HTTP on
both doors: per-request state, public paths, client numbers, bodies read for
nothing, forwarding families, TLS, unknown peers, slow hashes, linear globs and
reprs. (The router agreement is tests/security/test_gate_agreement.py; a change
reaching every instance, test_a_change_that_misses_redis_reaches_every_instance in
tests/test_cluster.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware as ASGIGuard
from keyguard.guard import Facts
from keyguard.scopes import Router, glob
from keyguard.settings import Rule
from keyguard.wsgi import KeyGuardMiddleware as WSGIGuard

from ..kgutil import facts as make_facts
from ..kgutil import other_secret
from ..signing_util import MASTER, signed

BASE = {"store": "memory://", "policy": {"allow_private_ips": True}}


def make(**settings: Any) -> KeyGuard:
    return KeyGuard({**BASE, **settings})


def _wsgi_ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def asgi_client(guard: KeyGuard, client: tuple[str, int] | None = ("127.0.0.1", 1)) -> Any:
    app = Starlette(routes=[Route("/{p:path}", _ok, methods=["GET", "POST"])])
    app.add_middleware(ASGIGuard, guard=guard)
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def both(
    guard: KeyGuard,
    method: str,
    path: str,
    *,
    peer: str | None = "127.0.0.1",
    scheme: str = "http",
    **kw: Any,
) -> list[httpx.Response]:
    """The same request through the ASGI door and the WSGI door."""
    async with asgi_client(guard, None if peer is None else (peer, 1)) as client:
        a = await client.request(method, f"{scheme}://t{path}", **kw)
    transport = httpx.WSGITransport(app=WSGIGuard(_wsgi_ok, guard=guard), remote_addr=peer or "")
    with httpx.Client(transport=transport) as client:
        w = client.request(method, f"{scheme}://t{path}", **kw)
    return [a, w]


def codes(responses: list[httpx.Response]) -> list[tuple[int, str | None]]:
    out = []
    for r in responses:
        code = r.json().get("code") if r.status_code >= 400 else None
        out.append((r.status_code, code))
    return out


# -- what one request gets, another must not see (item 15) ---------------------


async def test_changing_request_auth_scopes_stays_in_that_request() -> None:
    guard = make()
    token = guard.keys.create(owner="o", name="n", scopes=["read"]).token

    async def widen(request: Request) -> PlainTextResponse:
        # An app bug, or an attacker's gadget: request.auth is read-only (a tuple of scopes
        # in an object that refuses new attributes), so neither change can be made.
        with contextlib.suppress(AttributeError):
            request.auth.scopes.append("admin")
        with contextlib.suppress(AttributeError):
            request.auth.scopes = ["admin"]
        with contextlib.suppress(AttributeError):
            request.user.key = None
        # Past __setattr__: Starlette's classes keep a __dict__, shown read-only here.
        with contextlib.suppress(TypeError):
            request.auth.__dict__["scopes"] = (*request.auth.scopes, "admin")
        with contextlib.suppress(TypeError):
            vars(request.user)["is_authenticated"] = False
        with contextlib.suppress(AttributeError):
            del request.auth.scopes
        return PlainTextResponse("widened")

    @requires("admin")
    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")

    app = Starlette(routes=[Route("/widen", widen), Route("/admin", admin)])
    app.add_middleware(ASGIGuard, guard=guard)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        for _ in range(3):  # the warm path serves these from the same cached entry
            assert (await c.get("/widen", headers=headers)).status_code == 200
            assert (await c.get("/admin", headers=headers)).status_code == 403
    guard.close()


def test_starlettes_view_of_a_key_copies_and_pickles() -> None:
    """Read-only, yet what an app may do with it (copy, pickle into a task queue) works."""
    import copy
    import pickle

    from keyguard.asgi import KeyCredentials, KeyUser

    guard = make()
    info = guard.keys.create(owner="o", name="n", scopes=["read"]).info
    auth, user = KeyCredentials(("read",)), KeyUser(info)
    for clone in (copy.copy, copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))):
        assert clone(auth).scopes == ("read",) and clone(user).key == info
    assert vars(auth) == {"scopes": ("read",)}
    guard.close()


async def test_changing_the_key_info_stays_in_that_request() -> None:
    guard = make()
    token = guard.keys.create(owner="o", name="n", metadata={"plan": "free"}).token

    async def tamper(request: Request) -> JSONResponse:
        key = request.scope["keyguard.key"]
        with contextlib.suppress(TypeError):  # immutable: nothing to leak
            key.metadata["plan"] = "enterprise"
        return JSONResponse({"plan": key.metadata["plan"]})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"plan": request.scope["keyguard.key"].metadata["plan"]})

    app = Starlette(routes=[Route("/tamper", tamper), Route("/read", read)])
    app.add_middleware(ASGIGuard, guard=guard)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        await c.get("/tamper", headers=headers)
        assert (await c.get("/read", headers=headers)).json() == {"plan": "free"}
    guard.close()


# -- @requires on public paths (item 16) ----------------------------------------


async def test_public_paths_have_an_unauthenticated_user() -> None:
    guard = make(public_paths=["/open", "/open-admin"])

    async def who(request: Request) -> JSONResponse:
        return JSONResponse(
            {"auth": request.user.is_authenticated, "scopes": list(request.auth.scopes)}
        )

    @requires("admin")
    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")

    app = Starlette(routes=[Route("/open", who), Route("/open-admin", admin)])
    app.add_middleware(ASGIGuard, guard=guard)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.get("/open")).json() == {"auth": False, "scopes": []}
        assert (await c.get("/open-admin")).status_code == 403
    guard.close()


# -- numbers from clients (item 7) ----------------------------------------------

# (A blank value is no Content-Length: WSGI servers set CONTENT_LENGTH to "" when absent.)
BAD_LENGTHS = ["²", "١٢", "+5", "-1", "0x10", "1_0", "1e3", "5, 5", "9" * 30, "\u2155", "٥"]


@pytest.mark.parametrize("length", [pytest.param(v, id=repr(v)) for v in BAD_LENGTHS])
async def test_malformed_content_length_is_a_400(length: str) -> None:
    guard = make(signing={"master_keys": [MASTER]})
    key = guard.keys.create(owner="o", name="s", kind="signing")
    headers = signed(key.info.id, key.secret or "", "POST", "/x", body=b"hello")
    # ASGI: the header as a server passes it on (httpx would compute its own).
    sent: list[dict[str, Any]] = []
    app = ASGIGuard(_ok_asgi, guard=guard)
    scope = _scope("POST", "/x", [(k.lower().encode(), v.encode()) for k, v in headers.items()])
    scope["headers"].append((b"content-length", length.encode()))
    await app(scope, _body_receive(b"hello"), _collect(sent))
    assert sent[0]["status"] == 400, sent
    # WSGI: CONTENT_LENGTH as the server sets it.
    environ = _environ("POST", "/x", headers, b"hello")
    environ["CONTENT_LENGTH"] = length
    status = _run_wsgi(WSGIGuard(_wsgi_ok, guard=guard), environ)
    assert status.startswith("400"), status
    guard.close()


# -- bodies read only when a signed request can be checked (item 9) -------------


async def test_no_body_is_read_without_signing() -> None:
    guard = make()  # no master key: no signed request can be checked
    headers = [(b"kg-access-key", b"A" * 16), (b"kg-signature", b"x"), (b"kg-timestamp", b"1")]
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": False}

    sent: list[dict[str, Any]] = []
    await ASGIGuard(_ok_asgi, guard=guard)(_scope("POST", "/x", headers), receive, _collect(sent))
    assert sent[0]["status"] == 401 and reads == 0
    stream = _CountingStream(b"x" * 1000)
    environ = _environ("POST", "/x", {"KG-ACCESS-KEY": "A" * 16, "KG-SIGNATURE": "x"}, b"")
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = stream, "1000"
    assert _run_wsgi(WSGIGuard(_wsgi_ok, guard=guard), environ).startswith("401")
    assert stream.reads == 0
    guard.close()


# -- which forwarding header (item 10) and HTTPS only (item 11) ------------------

PINNED = {"allowed_ips": ["8.8.8.0/24"]}


@pytest.mark.parametrize(
    ("proxy_header", "headers", "status"),
    [
        pytest.param("forwarded", {"Forwarded": "for=8.8.8.8"}, 200, id="fwd-believed"),
        pytest.param("forwarded", {"X-Forwarded-For": "8.8.8.8"}, 403, id="fwd-xff-ignored"),
        pytest.param(
            "forwarded",
            {"Forwarded": "for=1.1.1.1", "X-Forwarded-For": "8.8.8.8"},
            403,
            id="fwd-client-xff-cannot-win",
        ),
        pytest.param("x-forwarded-for", {"X-Forwarded-For": "8.8.8.8"}, 200, id="xff-believed"),
        pytest.param(
            "x-forwarded-for", {"Forwarded": "for=8.8.8.8"}, 403, id="xff-forwarded-ignored"
        ),
    ],
)
async def test_only_the_proxys_header_family_counts(
    proxy_header: str, headers: dict[str, str], status: int
) -> None:
    guard = make(trusted_proxies=["10.0.0.0/8"], proxy_header=proxy_header)
    token = guard.keys.create(owner="o", name="n", **PINNED).token
    got = await both(
        guard, "GET", "/x", peer="10.0.0.5", headers={"Authorization": f"Bearer {token}", **headers}
    )
    assert [r.status_code for r in got] == [status, status]
    guard.close()


TLS_CASES = [
    # (scheme, peer, headers, proxy_header, expected status)
    pytest.param("http", "203.0.113.9", {}, "x-forwarded-for", 403, id="plain"),
    pytest.param("https", "203.0.113.9", {}, "x-forwarded-for", 200, id="tls-socket"),
    pytest.param(
        "http", "203.0.113.9", {"X-Forwarded-Proto": "https"}, "x-forwarded-for", 403, id="spoof"
    ),
    pytest.param(
        "http", "10.0.0.5", {"X-Forwarded-Proto": "https"}, "x-forwarded-for", 200, id="proxy-tls"
    ),
    pytest.param(
        "https", "10.0.0.5", {"X-Forwarded-Proto": "http"}, "x-forwarded-for", 403, id="proxy-plain"
    ),
    pytest.param(
        "http", "10.0.0.5", {"Forwarded": "for=8.8.8.8;proto=https"}, "forwarded", 200, id="fwd"
    ),
    pytest.param(
        "http",
        "10.0.0.5",
        {"Forwarded": "for=8.8.8.8;proto=https"},
        "x-forwarded-for",
        403,
        id="other-family",
    ),
    pytest.param("http", None, {"X-Forwarded-Proto": "https"}, "x-forwarded-for", 200, id="unix"),
]


@pytest.mark.parametrize(("scheme", "peer", "headers", "proxy_header", "status"), TLS_CASES)
async def test_require_tls(
    scheme: str, peer: str | None, headers: dict[str, str], proxy_header: str, status: int
) -> None:
    guard = make(
        require_tls=True,
        trusted_proxies=["10.0.0.0/8", "unix"],
        proxy_header=proxy_header,
        public_paths=["/health"],
    )
    token = guard.keys.create(owner="o", name="n").token
    auth = {"Authorization": f"Bearer {token}", **headers}
    for _ in range(2):  # cold, then warm
        got = await both(guard, "GET", "/x", peer=peer, scheme=scheme, headers=auth)
        expected = (status, "tls_required" if status == 403 else None)
        assert codes(got) == [expected, expected]
    if status == 403:
        # before the credential is read: no key, or a wrong one, gets the same answer
        for creds in ({}, {"Authorization": f"Bearer {other_secret(token)}"}):
            got = await both(
                guard, "GET", "/x", peer=peer, scheme=scheme, headers={**headers, **creds}
            )
            assert codes(got) == [(403, "tls_required")] * 2
        got = await both(guard, "GET", "/health", peer=peer, scheme=scheme)  # public: as before
        assert [r.status_code for r in got] == [200, 200]
    guard.close()


# -- no global failure bucket for unknown peers (item 5) ------------------------


async def test_unix_socket_clients_are_not_throttled_as_one() -> None:
    guard = make(abuse={"max_failures": "2/minute"})
    good = guard.keys.create(owner="o", name="n").token
    bad = {"Authorization": f"Bearer {other_secret(good)}"}
    for _ in range(5):  # anyone behind the socket guessing
        assert [r.status_code for r in await both(guard, "GET", "/x", peer=None, headers=bad)] == [
            401,
            401,
        ]
    ok = await both(guard, "GET", "/x", peer=None, headers={"Authorization": f"Bearer {good}"})
    assert [r.status_code for r in ok] == [200, 200]  # everyone else is not locked out
    guard.close()


async def test_unix_in_trusted_proxies_throttles_each_forwarded_client() -> None:
    guard = make(abuse={"max_failures": "2/minute"}, trusted_proxies=["unix"])
    good = guard.keys.create(owner="o", name="n").token
    bad = {"Authorization": f"Bearer {other_secret(good)}", "X-Forwarded-For": "198.51.100.7"}
    for _ in range(3):
        await both(guard, "GET", "/x", peer=None, headers=bad)
    mallory = await both(
        guard, "GET", "/x", peer=None, headers={**bad, "Authorization": f"Bearer {good}"}
    )
    assert [r.status_code for r in mallory] == [429, 429]
    alice = {"Authorization": f"Bearer {good}", "X-Forwarded-For": "198.51.100.8"}
    assert [r.status_code for r in await both(guard, "GET", "/x", peer=None, headers=alice)] == [
        200,
        200,
    ]
    guard.close()


# -- slow hashes off the event loop, bounded per key (item 6) -------------------


class _Spy:
    """Records the thread of every argon2 verification (the real one still runs)."""

    def __init__(self) -> None:
        from keyguard import hashing

        self.module = hashing
        self.real = hashing._argon2
        self.threads: list[threading.Thread] = []

    def verify(self, stored: str, presented: str) -> bool:
        self.threads.append(threading.current_thread())
        return bool(self.real.verify(stored, presented))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def argon2_spy() -> Iterator[_Spy]:
    spy = _Spy()
    spy.module._argon2 = spy  # type: ignore[assignment]
    yield spy
    spy.module._argon2 = spy.real


async def test_argon2_never_runs_on_the_event_loop(argon2_spy: _Spy) -> None:
    guard = make(hashing="argon2id", abuse={"max_failures": None})
    token = guard.keys.create(owner="o", name="n", passphrase="a long passphrase").token
    loop_thread = threading.current_thread()
    async with asgi_client(guard) as client:
        wrong = [other_secret(token) for _ in range(3)]
        answers = await asyncio.gather(
            *(client.get("/x", headers={"Authorization": f"Bearer {w}"}) for w in wrong)
        )
        assert [r.status_code for r in answers] == [401] * 3
        right = {"Authorization": f"Bearer {token}", "KG-Passphrase": "a long passphrase"}
        assert (await client.get("/x", headers=right)).status_code == 200
        wrong_phrase = {**right, "KG-Passphrase": "not the passphrase"}
        assert (await client.get("/x", headers=wrong_phrase)).status_code == 401
        runs = len(argon2_spy.threads)
        assert (await client.get("/x", headers=right)).status_code == 200  # remembered
        assert (await client.get("/x", headers=wrong_phrase)).status_code == 401  # remembered
        assert len(argon2_spy.threads) == runs
    assert argon2_spy.threads and loop_thread not in argon2_spy.threads
    guard.close()


async def test_made_up_secrets_for_a_known_key_never_reach_argon2_nor_lock_out_its_holder(
    argon2_spy: _Spy,
) -> None:
    """The key id is in every token; guesses at its secret are refused by the
    filter beside the argon2 hash, at once, so its holder's first (cold) request,
    which does need argon2, still passes while the flood goes on."""
    guard = make(hashing="argon2id", abuse={"max_failures": None})
    token = guard.keys.create(owner="o", name="n").token
    assert token is not None
    async with asgi_client(guard) as client:
        guesses = [other_secret(token) for _ in range(300)]
        answers = await asyncio.gather(
            *(client.get("/x", headers={"Authorization": f"Bearer {g}"}) for g in guesses)
        )
        assert {r.status_code for r in answers} == {401} and argon2_spy.threads == []
        assert (await client.get("/x", headers={"Authorization": f"Bearer {token}"})).is_success
    assert len(argon2_spy.threads) == 1
    guard.close()


async def test_guesses_at_one_key_cost_a_bounded_number_of_argon2_runs(
    argon2_spy: _Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the filter lets through (1 guess in 65,536) meets a bound of its own:
    here a key is hashed with an empty filter, so every guess reaches it."""
    from keyguard import hashing

    monkeypatch.setattr(hashing, "FILTER_BITS", 0)
    guard = make(hashing="argon2id", abuse={"max_failures": None})
    token = guard.keys.create(owner="o", name="n").token
    assert token is not None
    guesses = [other_secret(token) for _ in range(20)]
    async with asgi_client(guard) as client:
        answers = await asyncio.gather(
            *(client.get("/x", headers={"Authorization": f"Bearer {g}"}) for g in guesses)
        )
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {401, 429} and 429 in statuses
    assert len(argon2_spy.threads) <= 2 * 4  # SLOW_CHECKS a second (the burst may span two)
    busy = [r for r in answers if r.status_code == 429]
    assert busy[0].json()["code"] == "too_many_failures" and busy[0].headers["retry-after"]
    guard.close()


# -- globs are linear (item 3) --------------------------------------------------


def _steps(match: Any, path: str) -> int:
    """Python line events while matching: what the matcher does per part, not per byte."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        match(path)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize(
    "pattern",
    ["/a*a*a*a*a*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*", "/v1/*/x*y*z/*", "/*" * 12 + "!"],
)
def test_glob_matching_is_linear_in_the_path(pattern: str) -> None:
    match = glob(pattern)
    short, long = "/" + "a" * 30, "/" + "a" * 6000
    assert _steps(match, long) <= _steps(match, short) + 2
    assert match(long) is False or pattern.startswith("*")


async def test_a_crafted_long_path_gets_an_answer() -> None:
    patterns = ["/a*a*a*a*a*a*a*a*a*a*b", "/*a*a*a*a*a*a*a*a*b", "/x" + "*a" * 20]
    guard = make(public_paths=patterns, rules=[{"path": p, "scopes": ["s"]} for p in patterns])
    got = await both(guard, "GET", "/" + "a" * 6000)
    assert [r.status_code for r in got] == [401, 401]
    router = Router(patterns, [Rule(path=p, scopes=("s",)) for p in patterns])
    assert router.required("GET", "/" + "a" * 6000) == ()
    guard.close()


# -- no secret in a repr (item 14) ----------------------------------------------


def test_request_objects_never_show_credentials_in_repr() -> None:
    guard = make(signing={"master_keys": [MASTER]})
    token = guard.keys.create(owner="o", name="n", passphrase="a long passphrase").token or ""
    key = guard.keys.create(owner="o", name="s", kind="signing", passphrase="sign passphrase")
    facts = make_facts(
        "POST",
        "/x",
        "127.0.0.1",
        {"authorization": [f"Bearer {token}"], "kg-passphrase": ["a long passphrase"]},
        query="token=" + token,
        body=b"secret body " + token.encode(),
        token=token,
        passphrase="a long passphrase",
    )
    sfacts = Facts(
        "POST", "/x", "127.0.0.1", {k.lower(): [v] for k, v in _signed_headers(key).items()}
    )
    sfacts.body, sfacts.raw_path = b"{}", "/x"
    signed_request = guard.signing.begin(sfacts)
    for obj in (facts, sfacts, signed_request, guard.signing, guard.hasher, key, guard):
        text = repr(obj)
        for secret in (token, token.split("_")[2], "a long passphrase", key.secret or "?"):
            assert secret not in text, type(obj).__name__
        assert "sign passphrase" not in text
    guard.close()


def _signed_headers(key: Any) -> dict[str, str]:
    headers = signed(key.info.id, key.secret, "POST", "/x", body=b"{}")
    return {**headers, "KG-PASSPHRASE": "sign passphrase"}


# -- raw ASGI/WSGI plumbing (for headers that httpx would rewrite) --------------


async def _ok_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }


def _body_receive(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _collect(sent: list[dict[str, Any]]) -> Any:
    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return send


class _CountingStream(io.BytesIO):
    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def _environ(method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _run_wsgi(app: Any, environ: dict[str, Any]) -> str:
    status: list[str] = []
    b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return status[0]

"""The gate agrees with the router (SPEC section 4 step 0): over real HTTP, on both
doors, mounted and not, with generated method case and paths, whenever the app's
handler runs, the rules for the route the app routed applied.

Each handler reports what its framework routed: the method and the path below
the mount point, rebuilt from the matched route's template and parameters (not
from keyguard's own `route_path`). The key used holds no scope, so a handler
that runs for a route some rule guards is a way past the gate. Rules are
checked against a reference glob matcher (a regex; the test paths are short),
not keyguard's own, so the matcher is under test too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyguard import KeyGuard

from ..live import serve_asgi, serve_wsgi

RULES = [
    {"path": "/admin", "scopes": ["admin"]},
    {"path": "/admin/*", "methods": ["POST", "DELETE"], "scopes": ["admin"]},
    {"path": "/items/*/delete", "scopes": ["items:write"]},
    {"path": "/v1/*", "methods": ["POST"], "scopes": ["write"]},
]
PUBLIC = ["/public/*"]
# (Starlette template, methods); Flask's templates are derived from these.
ROUTES = [
    ("/", ["GET"]),
    ("/admin", ["GET", "POST"]),
    ("/admin/{x}", ["GET", "POST", "DELETE"]),
    ("/items/{id}/delete", ["POST", "DELETE"]),
    ("/v1/{rest:path}", ["GET", "POST"]),
    ("/public/{x}", ["GET"]),
]


def _reference(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def needed(method: str, path: str) -> set[str]:
    """The scopes the rules ask of this (method, route path), by a reference matcher."""
    out: set[str] = set()
    for rule in RULES:
        methods = set(rule.get("methods", ()))
        if "GET" in methods:
            methods.add("HEAD")
        if (not methods or method in methods) and _reference(str(rule["path"])).fullmatch(path):
            out.update(rule["scopes"])
    return out


def public(path: str) -> bool:
    return any(_reference(p).fullmatch(path) for p in PUBLIC)


def _fill(template: str, params: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(params[m[1]]), template)


class Seen:
    """What handlers ran, as their framework routed them: (method, route path)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, method: str, path: str) -> None:
        with self.lock:
            self.calls.append((method, path))


def starlette_app(seen: Seen) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def endpoint(template: str) -> Any:
        async def handler(request: Request) -> PlainTextResponse:
            seen.add(request.method.upper(), _fill(template, request.path_params))
            return PlainTextResponse("ran")

        return handler

    return Starlette(routes=[Route(t, endpoint(t), methods=m) for t, m in ROUTES])


def flask_app(seen: Seen, guard: KeyGuard | None) -> Any:
    from flask import Flask, request

    from keyguard.wsgi import KeyGuardMiddleware

    app = Flask("agreement")
    for template, methods in ROUTES:
        rule = re.sub(r"\{(\w+):path\}", r"<path:\1>", template)
        rule = re.sub(r"\{(\w+)\}", r"<\1>", rule)

        def handler(template: str = template, **params: Any) -> str:
            seen.add(request.method, _fill(template, params))
            return "ran"

        app.add_url_rule(rule, template, handler, methods=methods)
    if guard is not None:
        app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=guard)  # type: ignore[method-assign]
    return app


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """Six deployments of the same routes and rules, all on real servers."""
    pytest.importorskip("flask")
    a2wsgi = pytest.importorskip("a2wsgi")
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from keyguard.asgi import KeyGuardMiddleware

    guard = KeyGuard(
        {
            "store": "memory://",
            "rules": RULES,
            "public_paths": PUBLIC,
            "abuse": {"max_failures": None},
        }
    )
    token = guard.keys.create(owner="o", name="no-scopes").token
    # The same rules written for the whole site, with the ASGI door outside a Flask app
    # that a2wsgi mounts at /legacy (Werkzeug then routes what lies below the mount).
    outside = KeyGuard(
        {
            "store": "memory://",
            "rules": [{**r, "path": "/legacy" + str(r["path"])} for r in RULES],
            "public_paths": ["/legacy" + p for p in PUBLIC],
            "abuse": {"max_failures": None},
        },
        store=guard.store,
    )
    seen = Seen()
    asgi = KeyGuardMiddleware(starlette_app(seen), guard=guard)
    wsgi = flask_app(seen, guard)
    bare_flask = flask_app(seen, None)
    deployments = {
        "asgi": (serve_asgi(asgi), ""),
        "asgi-mounted": (serve_asgi(Starlette(routes=[Mount("/api", app=asgi)])), "/api"),
        "asgi-root-path": (serve_asgi(asgi, root_path="/prefix"), ""),
        "wsgi": (serve_wsgi(wsgi), ""),
        "wsgi-script-name": (serve_wsgi(DispatcherMiddleware(NotFound(), {"/api": wsgi})), "/api"),
        "wsgi-in-asgi": (
            serve_asgi(Starlette(routes=[Mount("/legacy", app=a2wsgi.WSGIMiddleware(wsgi))])),
            "/legacy",
        ),
        "asgi-door-outside-a-wsgi-mount": (
            serve_asgi(
                KeyGuardMiddleware(
                    Starlette(routes=[Mount("/legacy", app=a2wsgi.WSGIMiddleware(bare_flask))]),
                    guard=outside,
                )
            ),
            "/legacy",
        ),
    }
    with contextlib.ExitStack() as stack:
        bases = {
            name: (stack.enter_context(server), prefix)
            for name, (server, prefix) in deployments.items()
        }
        yield {"guard": guard, "token": token, "seen": seen, "bases": bases}
    guard.close()
    outside.close()


def send(base: str, method: str, target: str, headers: dict[str, str]) -> int:
    """One request with the method and target exactly as given (no normalising)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


METHODS = ["GET", "get", "Get", "POST", "post", "pOsT", "DELETE", "delete", "HEAD", "head", "PUT"]
SEGMENTS = [
    "admin", "ADMIN", "Admin", "items", "delete", "v1", "V1", "public", "x", "1", "",
    ".", "..", "%2e", "%2E%2E", "%2F", "a%2Fb", "%61dmin", "a%20b", "%C3%A9", "%FF", "~",
]  # fmt: skip
soup = st.builds(
    lambda lead, segments, trail: lead + "/".join(segments) + trail,
    st.sampled_from(["/", "//", "/./"]),
    st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4),
    st.sampled_from(["", "/", "?q=1", "/?a=b"]),
)
PARAMS = ["x", "1", "delete", "a%20b", "%C3%A9", "%2e", "a%2Fb"]
MUTATIONS = {
    "none": lambda p: p,
    "upper": lambda p: p.upper(),
    "double-slash": lambda p: "/" + p,
    "inner-double-slash": lambda p: p.replace("/", "//", 2).replace("//", "/", 1),
    "trailing-slash": lambda p: p + "/",
    "dot-segment": lambda p: "/." + p,
    "dot-dot": lambda p: "/zz/.." + p,
    "encoded-first": lambda p: "/%" + format(ord(p[1]), "02X") + p[2:] if len(p) > 1 else p,
    "query": lambda p: p + "?x=/admin",
    "fragment-like": lambda p: p + "%23frag",
}


def _route_path(template: str, value: str, rest: str, mutation: str) -> str:
    path = re.sub(r"\{(\w+):path\}", rest, template)
    path = re.sub(r"\{(\w+)\}", value, path)
    return MUTATIONS[mutation](path)


from_routes = st.builds(
    _route_path,
    st.sampled_from([t for t, _ in ROUTES]),
    st.sampled_from(PARAMS),
    st.sampled_from(["a", "a/b", "chat/completions", "", "%2e%2e/admin"]),
    st.sampled_from(sorted(MUTATIONS)),
)
paths = st.one_of(from_routes, from_routes, soup)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=st.sampled_from(METHODS), path=paths, with_key=st.booleans())
def test_a_handler_runs_only_if_its_rules_applied(
    world: dict[str, Any], method: str, path: str, with_key: bool
) -> None:
    seen: Seen = world["seen"]
    headers = {"Authorization": f"Bearer {world['token']}"} if with_key else {}
    for name, (base, prefix) in world["bases"].items():
        before = len(seen.calls)
        status = send(base, method, prefix + path, headers)
        assert status < 500, (name, method, path, status)
        ran = seen.calls[before:]
        for routed_method, routed_path in ran:
            # A key with no scopes passed: no rule may ask anything of this route.
            assert not needed(routed_method, routed_path), (name, method, path, ran)
            if not with_key:  # no key at all passed: the route must be public
                assert public(routed_path), (name, method, path, ran)


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        pytest.param("post", "/admin/x", "admin", id="lower-case-post"),
        pytest.param("delete", "/items/7/delete", "items:write", id="lower-case-delete"),
        pytest.param("Post", "/v1/chat", "write", id="mixed-case"),
        pytest.param("get", "/admin", "admin", id="lower-case-any-method-rule"),
    ],
)
def test_each_deployment_refuses_the_rule_it_owes(
    world: dict[str, Any], method: str, path: str, rule: str
) -> None:
    """The crafted cases of the review, named: every deployment refuses them with 403."""
    headers = {"Authorization": f"Bearer {world['token']}"}
    for name, (base, prefix) in world["bases"].items():
        before = len(world["seen"].calls)
        status = send(base, method, prefix + path, headers)
        assert status == 403, (name, status)
        assert len(world["seen"].calls) == before, name


def test_the_table_holds_a_route_for_every_rule(world: dict[str, Any]) -> None:
    """The property is not vacuous: with a full key every guarded route runs."""
    guard: KeyGuard = world["guard"]
    full = guard.keys.create(owner="o", name="full", scopes=["*"]).token
    headers = {"Authorization": f"Bearer {full}"}
    for name, (base, prefix) in world["bases"].items():
        for method, path in [
            ("POST", "/admin/x"),
            ("DELETE", "/items/7/delete"),
            ("POST", "/v1/a"),
        ]:
            before = len(world["seen"].calls)
            assert send(base, method, prefix + path, headers) == 200, (name, method, path)
            assert world["seen"].calls[before:] == [(method, path)], name
    assert json.dumps(RULES)  # the rules are plain data, as a settings file holds them

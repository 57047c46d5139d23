"""The WSGI door: middleware for Flask, Werkzeug and any WSGI app.

Same facts, same guard, same problem+json as the ASGI door; on a pass the
caller's key is at `environ["keyguard.key"]`. WSGI servers join repeated
headers with ", ", so two Authorization headers arrive as one malformed value
and are refused as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import audit
from .asgi import guard_from
from .body import wsgi_body, wsgi_target
from .exceptions import RequestRejected, problem
from .guard import Facts, KeyGuard

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def problem_response(exc: RequestRejected, start_response: StartResponse) -> list[bytes]:
    status, headers, body = problem(exc)
    start_response(f"{status} {exc.title}", headers)
    return [body]


class KeyGuardMiddleware:
    """`flask_app.wsgi_app = KeyGuardMiddleware(flask_app.wsgi_app, guard=guard)`."""

    def __init__(
        self,
        app: WSGIApplication,
        guard: KeyGuard | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.guard = guard_from(guard, settings)
        self._environ_names = [
            (name, "HTTP_" + name.upper().replace("-", "_")) for name in self.guard.header_names
        ]
        self._is_public = self.guard.router.is_public

    @staticmethod
    def _path(environ: WSGIEnvironment) -> str:
        """The path the app routes, as Werkzeug's router takes it: PATH_INFO alone (below
        the mount point, SCRIPT_NAME), decoded as Werkzeug decodes it (PEP 3333 latin-1
        bytes, read as UTF-8 with undecodable bytes replaced), with its leading slashes
        as one (Werkzeug routes "//admin" as "/admin"), so a rule sees what runs."""
        raw = environ.get("PATH_INFO", "")
        if not raw.isascii():  # the usual path is ASCII: the round trip would give it back
            raw = raw.encode("latin-1", "replace").decode("utf-8", "replace")
        return str(raw) if raw[:1] == "/" and raw[1:2] != "/" else "/" + raw.lstrip("/")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = self._path(environ)
        if self._is_public(path):
            return self.app(environ, start_response)
        headers: dict[str, list[str]] = {}
        for name, key in self._environ_names:  # a loop, not a comprehension: no frame per request
            if key in environ:
                headers[name] = [environ[key]]
        method = environ.get("REQUEST_METHOD", "GET").upper()  # as Werkzeug routes it
        peer, scheme = environ.get("REMOTE_ADDR"), environ.get("wsgi.url_scheme", "http")
        guard = self.guard
        facts = None
        try:
            entry = guard.warm(method, path, peer, headers, scheme)  # the usual request, one call
            if entry is None:
                facts = Facts(method, path, peer, headers, scheme=scheme)
                if guard.signing.is_signed(headers) and guard.admits_scheme(facts):
                    # only a signed request that can be checked has its body read
                    facts.raw_path, facts.query = wsgi_target(environ)
                    facts.body = wsgi_body(environ, guard.signing.max_body_bytes)
                    entry = guard.warm_signed(facts)
                if entry is None:
                    entry = guard.authenticate(facts)
        except RequestRejected as exc:
            audit.denied(guard, facts or Facts(method, path, peer, headers, scheme=scheme), exc)
            return problem_response(exc, start_response)
        environ["keyguard.key"] = entry.info
        environ["keyguard.guard"] = guard
        return self.app(environ, start_response)

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
from .body import wsgi_body, wsgi_fields, wsgi_target
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

    def _path(self, environ: WSGIEnvironment) -> str:
        # PATH_INFO is latin-1-decoded bytes (PEP 3333); route on the UTF-8 text.
        raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if raw.isascii():  # the usual path: the round trip below would give it back as is
            return str(raw) or "/"
        try:
            return str(raw.encode("latin-1").decode("utf-8")) or "/"
        except UnicodeError:
            return str(raw) or "/"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = self._path(environ)
        if self._is_public(path):
            return self.app(environ, start_response)
        headers: dict[str, list[str]] = {}
        for name, key in self._environ_names:  # a loop, not a comprehension: no frame per request
            if key in environ:
                headers[name] = [environ[key]]
        method, peer = environ.get("REQUEST_METHOD", "GET"), environ.get("REMOTE_ADDR")
        facts = None
        try:
            entry = self.guard.warm(method, path, peer, headers)  # the usual request, one call
            if entry is None:
                facts = Facts(method, path, peer, headers)
                if self.guard.signing.is_signed(headers):  # only signed requests have a body read
                    facts.raw_path, facts.query = wsgi_target(environ)
                    if self.guard.signing.wants_fields:
                        facts.scheme, facts.fields = wsgi_fields(environ)
                    facts.body = wsgi_body(environ, self.guard.signing.max_body_bytes)
                    entry = self.guard.warm_signed(facts)
                if entry is None:
                    entry = self.guard.authenticate(facts)
        except RequestRejected as exc:
            audit.denied(self.guard, facts or Facts(method, path, peer, headers), exc)
            return problem_response(exc, start_response)
        environ["keyguard.key"] = entry.info
        environ["keyguard.guard"] = self.guard
        return self.app(environ, start_response)

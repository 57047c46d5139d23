"""The WSGI door: middleware for Flask, Werkzeug and any WSGI app.

Same facts, same guard, same problem+json as the ASGI door; on a pass the
caller's key is at `environ["keyguard.key"]`. WSGI servers join repeated
headers with ", ", so two Authorization headers arrive as one malformed value
and are refused as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .asgi import guard_from
from .decision import Facts
from .guard import KeyGuard
from .wiring import install

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class KeyGuardMiddleware:
    """`flask_app.wsgi_app = KeyGuardMiddleware(flask_app.wsgi_app, guard=guard)`."""

    def __init__(
        self,
        app: WSGIApplication,
        guard: KeyGuard | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        install(self, app)  # a second KeyGuard door in this chain: ConfigurationError
        self.app = app
        self.guard = guard_from(guard, settings)
        self._environ_names = [
            (name, "HTTP_" + name.upper().replace("-", "_")) for name in self.guard.header_names
        ]
        self._wanted = {name.encode(): name for name in self.guard.header_names}
        self._check = self.guard.drivers.run

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

    def _from_scope(self, scope: Any) -> dict[str, list[str]]:
        """The headers the guard reads, from the ASGI scope behind a WSGI bridge. The
        bridge's environ is not enough: it turns `x_forwarded_for` into the same
        HTTP_X_FORWARDED_FOR as `x-forwarded-for` and joins them, so a client's own
        line would land beside (to the right of) the proxy's."""
        wanted = self._wanted
        headers: dict[str, list[str]] = {}
        for raw, value in scope.get("headers", ()):
            name = wanted.get(raw)
            if name is not None:
                headers.setdefault(name, []).append(value.decode("latin-1"))
        return headers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers: dict[str, list[str]] = {}
        scope = environ.get("asgi.scope")
        if scope is None:
            for name, key in self._environ_names:  # a loop: no frame per request
                if key in environ:
                    headers[name] = [environ[key]]
        else:  # WSGI inside ASGI (a2wsgi): the header lines as sent, by their own names
            headers = self._from_scope(scope)
        facts = Facts(
            environ.get("REQUEST_METHOD", "GET").upper(),  # as Werkzeug routes it
            self._path(environ),
            environ.get("REMOTE_ADDR"),
            headers,
            environ.get("wsgi.url_scheme", "http"),
        )
        facts.source = environ  # where a signed request's target and body are read from
        verdict = self._check(facts)
        if verdict.error is not None:
            return verdict.error.wsgi(start_response)
        entry = verdict.entry
        if entry is not None:
            environ["keyguard.key"] = entry.info
            environ["keyguard.guard"] = self.guard
            environ["keyguard.facts"] = facts  # for a refusal raised later (Flask decorators)
        return self.app(environ, start_response)

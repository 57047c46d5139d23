"""Flask conveniences on top of the WSGI door.

app.config["KEYGUARD"] = {"store": "sqlite:///keys.db", "rules": [...]}
kg = KeyGuardExtension(app)          # or KeyGuardExtension().init_app(app)

@app.get("/v1/models")
@require_scopes("models:read")
def models():
    return {"key": current_key.name}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, Response, request
from werkzeug.local import LocalProxy

from .exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    RequestRejected,
    problem,
)
from .guard import KeyGuard
from .models import KeyInfo
from .wsgi import KeyGuardMiddleware

F = TypeVar("F", bound=Callable[..., Any])


def _current_key() -> KeyInfo:
    key = request.environ.get("keyguard.key")
    if not isinstance(key, KeyInfo):
        raise AuthenticationError("missing_credentials", "An API key is required.")
    return key


current_key: KeyInfo = cast(KeyInfo, LocalProxy(_current_key))
"""The calling key's KeyInfo, inside a request that passed the middleware."""


def problem_response(exc: RequestRejected) -> Response:
    status, headers, body = problem(exc)
    return Response(body, status=status, headers=headers)


def require_scopes(*scopes: str) -> Callable[[F], F]:
    """Decorate a view: the calling key must hold every scope named."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                key = _current_key()
                guard = request.environ.get("keyguard.guard")
                missing = (
                    guard.has_scopes(key, scopes) if isinstance(guard, KeyGuard) else list(scopes)
                )
                if missing:
                    raise AuthorizationError(
                        "insufficient_scope",
                        "The API key lacks a scope this route needs.",
                        scopes=missing,
                    )
            except RequestRejected as exc:
                environ = request.environ
                guard, facts = environ.get("keyguard.guard"), environ.get("keyguard.facts")
                if isinstance(guard, KeyGuard) and facts is not None:
                    named = environ.get("keyguard.key")
                    guard.drivers.refused_later(facts, exc, getattr(named, "id", None))
                return problem_response(exc)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


class KeyGuardExtension:
    """Reads `app.config["KEYGUARD"]`, builds `.guard`, installs the WSGI middleware."""

    def __init__(self, app: Flask | None = None, *, guard: KeyGuard | None = None) -> None:
        self.guard: KeyGuard | None = guard
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.guard is None:
            settings = app.config.get("KEYGUARD")
            if settings is not None and not isinstance(settings, dict):
                raise ConfigurationError("KEYGUARD: app.config['KEYGUARD'] must be a settings dict")
            self.guard = KeyGuard(settings)
        app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=self.guard)  # type: ignore[method-assign]
        app.extensions["keyguard"] = self
        app.register_error_handler(RequestRejected, problem_response)


__all__ = ["KeyGuardExtension", "current_key", "require_scopes"]

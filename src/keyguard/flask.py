"""Flask conveniences on top of the WSGI door.

app.config["KEYGUARD"] = {"store": "sqlite:///keys.db", "rules": [...]}
app.config["KEYGUARD_RATE_LIMIT"] = "100/minute"   # flat keys work too; the dict wins
kg = KeyGuardExtension(app)          # or KeyGuardExtension().init_app(app)
# flask keyguard keys list           # the keyguard CLI on this app's own guard

@app.get("/v1/models")
@require_scopes("models:read")
def models():
    return {"key": current_key.name}
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, request
from werkzeug.local import LocalProxy

from .cli import flask_group
from .exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    RequestRejected,
    problem,
)
from .guard import KeyGuard
from .models import KeyInfo
from .settings import ENV_PREFIX, flat_settings
from .wiring import MISSING, PUBLIC, is_guarded
from .wsgi import KeyGuardMiddleware

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("keyguard")


def _current_key() -> KeyInfo:
    key = request.environ.get("keyguard.key")
    if not isinstance(key, KeyInfo):
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if "keyguard" not in app.extensions and not is_guarded(app):  # a bug in the app: loud
            raise ConfigurationError(
                MISSING.format(
                    helper="keyguard.flask.current_key",
                    fix="KeyGuardExtension(app) (or wrap app.wsgi_app in KeyGuardMiddleware)",
                )
            )
        # A public path: the middleware checks no key there, sent or not.
        raise AuthenticationError("missing_credentials", PUBLIC)
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


def _misspelt(config: Mapping[str, Any]) -> None:
    """Warn about a config key that looks like KEYGUARD but is not (KEYGAURD,
    KEY_GUARD, keyguard): Flask would keep it, and keyguard would never read it."""
    for name in config:
        if not isinstance(name, str) or name == "KEYGUARD" or name.startswith(ENV_PREFIX):
            continue
        squashed = name.upper().replace("_", "").replace("-", "")
        if difflib.SequenceMatcher(None, squashed[:8], "KEYGUARD").ratio() >= 0.75:
            logger.warning(
                "keyguard: app.config[%r] looks like a misspelt KEYGUARD and is not read; "
                "keyguard reads app.config['KEYGUARD'] (a settings dict) and KEYGUARD_* keys "
                "such as KEYGUARD_STORE",
                name,
            )


def config_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a Flask config gives: `KEYGUARD_*` keys (`KEYGUARD_STORE`,
    `KEYGUARD_POLICY__MAX_KEYS_PER_OWNER`) under the `KEYGUARD` dict, which wins;
    the `KEYGUARD_*` environment is read under both, as everywhere."""
    _misspelt(config)
    settings = config.get("KEYGUARD")
    if settings is not None and not isinstance(settings, Mapping):
        raise ConfigurationError("KEYGUARD: app.config['KEYGUARD'] must be a settings dict")
    flat = flat_settings({k: v for k, v in config.items() if isinstance(k, str)}, strict=True)
    return {**flat, **(settings or {})}


class KeyGuardExtension:
    """Reads `app.config["KEYGUARD"]` (and flat `KEYGUARD_*` keys), builds `.guard`,
    installs the WSGI middleware and the `flask keyguard ...` commands."""

    def __init__(self, app: Flask | None = None, *, guard: KeyGuard | None = None) -> None:
        self.guard: KeyGuard | None = guard
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.guard is None:
            self.guard = KeyGuard(config_settings(app.config))
        app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=self.guard)  # type: ignore[method-assign]
        app.extensions["keyguard"] = self
        app.register_error_handler(RequestRejected, problem_response)
        app.cli.add_command(flask_group(self._cli_guard))

    def _cli_guard(self) -> KeyGuard:
        assert self.guard is not None  # set in init_app, before any command can run
        return self.guard


__all__ = ["KeyGuardExtension", "current_key", "require_scopes"]

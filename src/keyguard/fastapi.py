"""FastAPI conveniences on top of the ASGI door.

    app.add_middleware(KeyGuardMiddleware, guard=guard)

    @app.get("/me")
    def me(key: KeyInfo = Depends(current_key)): ...

    @app.post("/v1/chat")
    def chat(key: KeyInfo = Security(require_scopes, scopes=["inference"])): ...

`current_key` declares the Bearer and `X-API-Key` security schemes, so the
OpenAPI schema shows them and the docs page's Authorize button works; the
middleware does the checking. A missing scope raises a 403 that the
middleware renders as problem+json.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer, SecurityScopes

from .exceptions import AuthenticationError, AuthorizationError, ConfigurationError
from .guard import KeyGuard
from .models import KeyInfo
from .wiring import MISSING, PUBLIC, is_guarded

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="APIKeyBearer", description="Authorization: Bearer <token>"
)
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="APIKeyHeader", description="The API key"
)


def document_header(name: str) -> None:
    """Show `name` as the API-key header in the OpenAPI schema (the ASGI middleware
    calls this with the guard's `header` setting, before any schema is built)."""
    header_scheme.model.name = name


def current_key(
    request: Request,
    _bearer: object = Depends(bearer_scheme),
    _header: object = Depends(header_scheme),
) -> KeyInfo:
    """The calling key, as the KeyGuard middleware found it. Without the middleware
    on this app: ConfigurationError (a 500 whose log names the fix), never a 401."""
    key = request.scope.get("keyguard.key")
    if not isinstance(key, KeyInfo):
        scope = request.scope
        if not is_guarded(scope.get("router"), scope.get("app")):  # a bug in the app: loud
            raise ConfigurationError(
                MISSING.format(
                    helper="keyguard.fastapi.current_key",
                    fix="app.add_middleware(KeyGuardMiddleware, guard=guard)",
                )
            )
        # A public path: the middleware checks no key there, sent or not.
        raise AuthenticationError("missing_credentials", PUBLIC)
    return key


def require_scopes(
    security_scopes: SecurityScopes, request: Request, key: KeyInfo = Depends(current_key)
) -> KeyInfo:
    """Use as `Security(require_scopes, scopes=[...])`: the key must hold them all."""
    guard = request.scope.get("keyguard.guard")
    if isinstance(guard, KeyGuard):
        missing = guard.has_scopes(key, security_scopes.scopes)
    else:
        missing = [s for s in security_scopes.scopes if s not in key.scopes]
    if missing:
        raise AuthorizationError(
            "insufficient_scope", "The API key lacks a scope this route needs.", scopes=missing
        )
    return key


__all__ = ["current_key", "require_scopes"]

"""FastAPI conveniences on top of the ASGI door.

    app.add_middleware(KeyGuardMiddleware, guard=guard)

    @app.get("/me")
    def me(key: KeyInfo = Depends(current_key)): ...

    @app.post("/v1/chat")
    def chat(key: KeyInfo = Security(require_scopes, scopes=["inference"])): ...

`current_key` declares the Bearer and API-key-header security schemes; the
middleware does the checking. A missing scope raises a 403 that the
middleware renders as problem+json.

The OpenAPI schema says what the middleware enforces (`install_openapi`):
every guarded operation gets `security` with the scopes its `rules` (and its
`Security(...)` dependencies) need, so the docs page's Authorize button and
Try-it-out send the key; its 401/403/429 answers with a problem+json schema;
the guard's own `header` name; and, when signing is configured, the signed
request headers of the configured profile. The middleware installs this on the
FastAPI app it runs in, on the app's lifespan start-up or its first request
that the warm path does not answer, before any schema is served; call
`install_openapi(app, guard)` yourself for `app.openapi()` before any request.
Everything per app lives on that app: this module holds no per-app state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyHeader, HTTPBearer, SecurityScopes

from .exceptions import PROBLEM_SCHEMA, AuthenticationError, AuthorizationError, ConfigurationError
from .guard import KeyGuard
from .models import KeyInfo
from .wiring import MISSING, PUBLIC, is_guarded

BEARER, HEADER = "APIKeyBearer", "APIKeyHeader"  # the security scheme names in the schema
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name=BEARER, description="Authorization: Bearer <token>"
)
# The header name here is only FastAPI's default: `install_openapi` writes each app's own.
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name=HEADER, description="The API key"
)
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_PROBLEM_REF = {"$ref": "#/components/schemas/KeyguardProblem"}
_ANSWERS = {
    "401": "No valid credential (problem+json `code`: missing_credentials, invalid_key, ...)",
    "403": "The key may not do this (insufficient_scope, ip_not_allowed)",
    "429": "Rate limited or too many failures (see Retry-After)",
}


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


def install_openapi(app: FastAPI, guard: KeyGuard) -> None:
    """Make `app.openapi()` describe what `guard` enforces (see the module doc).
    Idempotent; the schema FastAPI builds (again, when routes change) is
    completed once per build."""
    build: Callable[[], dict[str, Any]] = app.openapi
    if getattr(build, "keyguard", None) is guard:
        return
    documented: list[dict[str, Any]] = []  # the schema last completed, for this app only

    def openapi() -> dict[str, Any]:
        schema = build()
        if not documented or documented[0] is not schema:
            document(schema, guard)
            documented[:] = [schema]
        return schema

    openapi.keyguard = guard  # type: ignore[attr-defined]
    app.openapi_schema = None  # a schema built before now is built again, completed
    app.openapi = openapi  # type: ignore[method-assign]


def document(schema: dict[str, Any], guard: KeyGuard) -> None:
    """Complete an OpenAPI schema in place for `guard` (see the module doc)."""
    components = schema.setdefault("components", {})
    schemes = components.setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <token>",
    }
    schemes[HEADER] = {
        "type": "apiKey",
        "in": "header",
        "name": guard.settings.header,
        "description": "The API key",
    }
    signed = _signed_schemes(guard)
    schemes.update(signed)
    components.setdefault("schemas", {})["KeyguardProblem"] = copy.deepcopy(PROBLEM_SCHEMA)
    ours = {BEARER, HEADER, *signed}
    for path, item in schema.get("paths", {}).items():
        if guard.router.public(path):
            continue
        for method, operation in item.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            security = operation.get("security", [])
            declared = [s for entry in security if ours & set(entry) for s in _scopes(entry)]
            needed = list(dict.fromkeys([*declared, *guard.router.required(method.upper(), path)]))
            operation["security"] = [
                *(entry for entry in security if not ours & set(entry)),  # the app's own
                {BEARER: needed},
                {HEADER: needed},
                *([dict.fromkeys(signed, needed)] if signed else []),  # all of them together
            ]
            responses = operation.setdefault("responses", {})
            for status, text in _ANSWERS.items():
                responses.setdefault(
                    status,
                    {
                        "description": text,
                        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
                    },
                )


def _scopes(entry: dict[str, list[str]]) -> list[str]:
    return [scope for scopes in entry.values() for scope in scopes]


def _signed_schemes(guard: KeyGuard) -> dict[str, dict[str, Any]]:
    """The configured profile's signed-request headers as `apiKey` schemes, one per
    header (OpenAPI has no HMAC scheme; one requirement naming them all says
    they go together). None when signing is not configured."""
    if not guard.settings.signing.master_keys:
        return {}
    p = guard.signing.profile
    mac = "lowercase hex" if p.hex_mac else "base64"
    signature = f"{mac}(HMAC-SHA256(secret, {p.summary}))"
    if p.structured:
        described = {
            p.key: f"RFC 9421 signature parameters: {p.summary}; created within "
            f"{guard.settings.signing.max_skew_seconds} s (keyguard profile rfc9421)",
            p.signature: "RFC 9421 signature: the HMAC-SHA256 of the signature base",
        }
    else:
        when = "ISO 8601 UTC with milliseconds" if p.iso_time else "Unix milliseconds"
        described = {
            p.key: f"Access key of a signed request (keyguard profile {p.name})",
            p.timestamp: f"Timestamp of the signed request: {when}",
            p.signature: signature,
        }
    extras = [n for n in (p.recv_window, p.passphrase) if n]
    if extras:
        described[p.key] += f"; also send {' and '.join(extras)} where it applies"
    return {
        f"Signed-{name}": {"type": "apiKey", "in": "header", "name": name, "description": text}
        for name, text in described.items()
    }


__all__ = ["current_key", "install_openapi", "require_scopes"]

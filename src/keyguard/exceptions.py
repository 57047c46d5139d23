"""The error tree. Every error keyguard raises is a `KeyGuardError`:

    KeyGuardError                  (never raised itself)
    ├── ConfigurationError         (also ValueError) bad settings, named
    ├── InvalidKeySettings         (also ValueError) a refused key field (422)
    │   └── KeyLimitExceeded       owner already holds max_keys_per_owner keys
    ├── KeyNotFound                (also LookupError)
    ├── StoreError                 the durable store failed or is unreachable
    └── RequestRejected            a request is refused; renders as problem+json
        ├── BadRequest             400 invalid_request
        ├── AuthenticationError    401 missing_credentials, invalid_key, expired_key,
        │                              revoked_key, invalid_passphrase, invalid_signature,
        │                              stale_request, replayed_request
        ├── AuthorizationError     403 ip_not_allowed, insufficient_scope
        ├── TooManyRequests        429 rate_limited, too_many_failures, quota_exhausted
        ├── PayloadTooLarge        413 payload_too_large
        └── ServiceUnavailable     503 unavailable

A `RequestRejected` carries `.code`, `.status_code`, `.title`, `.detail` and the
extra headers it needs; `problem()` renders it the same way for both doors, and
`PROBLEM_SCHEMA` is the JSON Schema of what it renders (for OpenAPI documents).
Messages never carry a token, secret or passphrase: callers pass fixed text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


class KeyGuardError(Exception):
    """Root of every keyguard error."""


class ConfigurationError(KeyGuardError, ValueError):
    """A setting is missing, unknown or has a bad value; the message names it."""


class InvalidKeySettings(KeyGuardError, ValueError):
    """A key field was refused (policy, malformed IP, ...). `field` names it."""

    code = "invalid_key_settings"
    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class KeyLimitExceeded(InvalidKeySettings):
    """The owner already holds `policy.max_keys_per_owner` live keys."""

    def __init__(self, owner_limit: int) -> None:
        super().__init__("owner", f"this owner already has the maximum of {owner_limit} keys")
        self.limit = owner_limit


class KeyNotFound(KeyGuardError, LookupError):
    """No key with this id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")
        self.key_id = key_id


class StoreError(KeyGuardError):
    """The durable store failed; wraps the driver error as __cause__."""


class RequestRejected(KeyGuardError):
    """A request does not pass. Subclasses fix the status; instances the code."""

    status_code = 400
    title = "Bad Request"
    code = "invalid_request"
    detail = "The request is invalid."

    def __init__(self, code: str | None = None, detail: str | None = None, **extra: object) -> None:
        if code is not None:
            self.code = code
        if detail is not None:
            self.detail = detail
        self.extra = extra
        # No Exception.__init__: `args` are set already, and the message is built only
        # when shown (`__str__`). Refusing a forged token should cost little.

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

    def headers(self) -> list[tuple[str, str]]:
        return []


class BadRequest(RequestRejected):
    status_code = 400
    title = "Bad Request"
    code = "invalid_request"


class AuthenticationError(RequestRejected):
    status_code = 401
    title = "Unauthorized"
    code = "invalid_key"
    detail = "The API key is not valid."

    def headers(self) -> list[tuple[str, str]]:
        if self.code == "missing_credentials":
            # RFC 6750 section 3.1: no error code when no credentials were sent.
            return [("www-authenticate", 'Bearer realm="api"')]
        return [("www-authenticate", 'Bearer realm="api", error="invalid_token"')]


class AuthorizationError(RequestRejected):
    status_code = 403
    title = "Forbidden"
    code = "insufficient_scope"
    detail = "The API key may not do this."

    def __init__(
        self,
        code: str | None = None,
        detail: str | None = None,
        scopes: Iterable[str] = (),
        **extra: object,
    ) -> None:
        self.scopes = tuple(scopes)
        if self.scopes:
            extra.setdefault("required_scopes", list(self.scopes))
        super().__init__(code, detail, **extra)

    def headers(self) -> list[tuple[str, str]]:
        if self.code != "insufficient_scope":
            return []
        value = 'Bearer realm="api", error="insufficient_scope"'
        if self.scopes:
            value += f', scope="{" ".join(self.scopes)}"'
        return [("www-authenticate", value)]


class TooManyRequests(RequestRejected):
    status_code = 429
    title = "Too Many Requests"
    code = "rate_limited"
    detail = "Too many requests."

    def __init__(
        self,
        code: str | None = None,
        detail: str | None = None,
        retry_after: int = 1,
        headers: Iterable[tuple[str, str]] = (),
        **extra: object,
    ) -> None:
        self.retry_after = max(1, int(retry_after))
        self._headers = list(headers)
        super().__init__(code, detail, **extra)

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after)), *self._headers]


class PayloadTooLarge(RequestRejected):
    status_code = 413
    title = "Content Too Large"
    code = "payload_too_large"
    detail = "The request body is too large."


class ServiceUnavailable(RequestRejected):
    status_code = 503
    title = "Service Unavailable"
    code = "unavailable"
    detail = "The key store cannot be reached; try again later."

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", "5")]


def problem(exc: RequestRejected) -> tuple[int, list[tuple[str, str]], bytes]:
    """Render a rejection as RFC 9457 problem+json: (status, headers, body). The
    body also carries `message`, the same text as `detail`: SDKs such as openai's
    and the exchanges' show that member (SPEC section 5)."""
    doc: dict[str, object] = {
        "type": "about:blank",
        "title": exc.title,
        "status": exc.status_code,
        "detail": exc.detail,
        "code": exc.code,
        "message": exc.detail,
        **exc.extra,
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    headers = [
        ("content-type", "application/problem+json"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        *exc.headers(),
    ]
    return exc.status_code, headers, body


PROBLEM_SCHEMA: dict[str, object] = {
    "type": "object",
    "description": "RFC 9457 problem details, as keyguard renders every rejection",
    "required": ["type", "title", "status", "detail", "code", "message"],
    "properties": {
        "type": {"type": "string", "examples": ["about:blank"]},
        "title": {"type": "string", "examples": ["Unauthorized"]},
        "status": {"type": "integer", "examples": [401]},
        "detail": {"type": "string", "examples": ["The API key is not valid."]},
        "code": {"type": "string", "examples": ["invalid_key"]},
        "message": {"type": "string", "description": "the same text as detail"},
        "required_scopes": {"type": "array", "items": {"type": "string"}},
    },
}

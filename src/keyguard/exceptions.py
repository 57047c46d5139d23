"""The error tree. Every error keyguard raises is a `KeyGuardError`:

    KeyGuardError                  (never raised itself)
    ├── ConfigurationError         (also ValueError) bad settings, named
    ├── InvalidKeySettings         (also ValueError) a refused key field (422)
    │   ├── KeyLimitExceeded       owner already holds max_keys_per_owner keys
    │   └── KeyStateConflict       the key's state forbids the change (409: revoked)
    ├── KeyNotFound                (also LookupError)
    ├── StoreError                 the durable store failed or is unreachable
    └── RequestRejected            a request is refused; renders as problem+json
        ├── BadRequest             400 invalid_request
        ├── AuthenticationError    401 missing_credentials, invalid_key, expired_key,
        │                              revoked_key, suspended_key, invalid_passphrase,
        │                              invalid_signature, stale_request, replayed_request
        ├── StepUpRequired         401 step_up_required (admin API: confirm the change)
        ├── AuthorizationError     403 ip_not_allowed, insufficient_scope
        │   └── CsrfRefused        403 invalid_request (admin API: no X-Requested-With)
        ├── NotFound               404 not_found (admin API)
        ├── TooManyRequests        429 rate_limited, too_many_failures, quota_exhausted
        ├── PayloadTooLarge        413 payload_too_large
        └── ServiceUnavailable     503 unavailable

A `RequestRejected` carries `.code`, `.status_code`, `.title`, `.detail` and the
extra headers it needs, and renders itself (werkzeug's pattern): `problem()` is
the one renderer (RFC 9457 problem+json, with `message` beside `detail` for
SDKs that show it), `wsgi(start_response)` and `await asgi(scope, send)` send
it through either door, and `PROBLEM_SCHEMA` is the JSON Schema of what it
renders (for OpenAPI documents). Messages never carry a token, secret or
passphrase: callers pass fixed text, a key id a caller gave is shown
through `shown_id` (a token pasted where an id belongs is shown only as its
hint), and any other value through `shown_value` (quoted only when it has the
field's shape).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import tokens

_ID_LIKE = re.compile(r"[A-Za-z0-9]{1,16}")  # a key id's alphabet, at most its length
_PREFIXED = re.compile(r"([A-Za-z][A-Za-z0-9]{0,15})_")
HINT_TAIL_FROM = 24  # a value this long may show its last four characters (a sixth at most)


def _hint(value: str) -> str:
    """A value shown only as a hint, never enough to use or guess: the token prefix
    when the value has a token's shape (as listings show tokens), and its last four
    characters only when it is long (a pasted token or secret is recognisable by
    them); a shorter value is only `…`."""
    m = _PREFIXED.match(value)
    token = m is not None and tokens.TokenParser(m[1]).split(value) is not None
    tail = ascii(value[-4:])[1:-1] if len(value) >= HINT_TAIL_FROM else ""
    return f"{m[1]}_…{tail}" if token and m else f"…{tail}"


def shown_id(value: object) -> str:
    """A key id a caller gave, as messages, audit events and the CLI may show it.

    Key ids are 16 letters and digits: letters and digits, at most 16 (an id, or
    a typo of one), are shown as given. Anything else (a token, a signing secret
    or a passphrase pasted where an id belongs) is shown only as a hint
    (`_hint`), as listings show tokens."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if _ID_LIKE.fullmatch(value):
        return value
    return _hint(value)


def shown_value(value: object, shape: re.Pattern[str], *, quoted: bool = True) -> str:
    """A value a caller gave for a field, as a message may echo it: as given (quoted,
    unless `quoted=False`) only when it has the field's `shape` (an address, a
    duration, a field name), else only as a hint (`_hint`): a token, secret or
    passphrase pasted into the wrong field is never echoed, however short or
    id-like it is. `shape` should admit only what cannot be a secret's shape."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if shape.fullmatch(value):
        return repr(value) if quoted else value
    return _hint(value)


class KeyGuardError(Exception):
    """Root of every keyguard error."""


class ConfigurationError(KeyGuardError, ValueError):
    """A setting is missing, unknown or has a bad value; the message names it."""


class InvalidKeySettings(KeyGuardError, ValueError):
    """A key field was refused (policy, malformed IP, ...). `field` names it."""

    code = "invalid_key_settings"
    status_code = 422
    title = "Unprocessable Content"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    # What `problem()` renders (the admin API answers with it):
    @property
    def detail(self) -> str:
        return self.message

    @property
    def extra(self) -> dict[str, object]:
        return {"field": self.field}

    def headers(self) -> list[tuple[str, str]]:
        return []


class KeyLimitExceeded(InvalidKeySettings):
    """The owner already holds `policy.max_keys_per_owner` live keys."""

    def __init__(self, owner_limit: int) -> None:
        super().__init__("owner", f"this owner already has the maximum of {owner_limit} keys")
        self.limit = owner_limit


class KeyStateConflict(InvalidKeySettings):
    """The key's state forbids the change: a revoked key cannot be rotated,
    suspended or resumed. `field` is "key"; the admin API answers 409."""

    status_code = 409
    title = "Conflict"

    def __init__(self, message: str) -> None:
        super().__init__("key", message)


class KeyNotFound(KeyGuardError, LookupError):
    """No key with this id. `key_id` is the id as `shown_id` shows it."""

    def __init__(self, key_id: object) -> None:
        self.key_id = shown_id(key_id)
        super().__init__(f"no key with id {self.key_id!r}")


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

    def wsgi(self, start_response: Callable[..., Any]) -> list[bytes]:
        """Answer a WSGI request with this rejection."""
        status, headers, body = problem(self)
        start_response(f"{status} {self.title}", headers)
        return [body]

    async def asgi(self, scope: Any, send: Callable[[Any], Awaitable[None]]) -> None:
        """Answer an ASGI request (http, or a websocket handshake) with this rejection."""
        status, headers, body = problem(self)
        raw = [(k.encode(), v.encode()) for k, v in headers]
        if scope["type"] == "websocket":
            if "websocket.http.response" not in scope.get("extensions", {}):
                # The server cannot send an HTTP answer: close before accepting.
                await send({"type": "websocket.close", "code": 1008, "reason": self.code})
                return
            await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


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


def invalid_signature() -> AuthenticationError:
    """What every signed request that did not prove its key's secret is told."""
    return AuthenticationError("invalid_signature", "The request signature does not match.")


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


class StepUpRequired(RequestRejected):
    """The admin app's `confirm` refused this change: resend it confirmed
    (`X-Keyguard-Confirm`). RFC 9470's step-up challenge."""

    status_code = 401
    title = "Unauthorized"
    code = "step_up_required"
    detail = "Confirm this change: send a one-time code in the X-Keyguard-Confirm header."

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("www-authenticate", 'Bearer realm="api", error="insufficient_user_authentication"')
        ]


class CsrfRefused(AuthorizationError):
    code = "invalid_request"
    detail = "Unsafe requests must carry the X-Requested-With header."


class NotFound(RequestRejected):
    status_code = 404
    title = "Not Found"
    code = "not_found"
    detail = "No such key."


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


def problem(exc: RequestRejected | InvalidKeySettings) -> tuple[int, list[tuple[str, str]], bytes]:
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

"""The OpenAPI 3.1 description of the admin API, served at `GET /openapi.json`.

Written by hand (the API is small and fixed by SPEC section 8), so it says
exactly what the routes in `app.py` do: every status a route answers, the
shape of every body (a key has every field, nullable ones as `null`), the
charset of scopes, `expires_at` and `expires_in` as exclusive, the durations
(`expires_in`, `grace`) and rate limits the API takes, exactly (the API reads
them with these same patterns). What a schema cannot say (policy: an expiry in
the past or beyond 100 years, a private range or a malformed address, the
owner limit, scopes a self-service principal may not grant, the fields and
changes only an operator may make) is a 422 `invalid_key_settings` naming the
field. A revoked key cannot be rotated, suspended or resumed: 409 with the same
code and `field: "key"`. Paths are relative to the mount point, given as the
server URL. In host mode (`authorize`) the host's login authenticates, so the
document names no security scheme, and `owner` is optional on create (required
for an operator, the caller's own for a self-service one).
tests/test_admin_openapi.py holds the app to it, in both modes.
"""

from __future__ import annotations

import math
from typing import Any

from ..keys import CONTROL_CHARS, MAX_GRACE, MAX_SECONDS
from ..settings import _RATE, MAX_RATE_PARTS

SCOPE_PATTERN = r"^[A-Za-z0-9_.:*/-]{1,128}$"  # keys.py's _SCOPE
# What only an operator may set on a key (app.py's `_check_fields`): a self-service
# caller leaves them out or sends null, which sets nothing.
OPERATOR_FIELDS = ("rate_limit", "max_uses", "metadata")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}  # no letter: seconds


def _digits(low: int, high: int, count: int = 1) -> str:
    """`count` digits from `low` to `high`, as a regex."""
    one = str(low) if low == high else f"[{low}-{high}]"
    return one if count == 1 else f"{one}{{{count}}}" if count > 1 else ""


def _up_to(n: int) -> list[str]:
    """Regexes that together match the decimal integers 1..n, no leading zeros."""
    top = str(n)
    out = [_digits(1, 9) + _digits(0, 9, d - 1) for d in range(1, len(top))]
    for i, digit in enumerate(top):  # n's own length: below n's prefix, digit by digit
        low = 1 if i == 0 else 0
        if int(digit) > low:
            out.append(top[:i] + _digits(low, int(digit) - 1) + _digits(0, 9, len(top) - i - 1))
    out.append(top)
    return out


def duration_pattern(most: float, least_one_second: bool) -> str:
    """The durations the admin API takes as strings, exactly: a decimal number and
    a unit (none or s, m, h, d, w), from 0 (or, `least_one_second`, from 1 second)
    to `most` seconds. In a unit, up to N whole units where N = floor(most / unit):
    any fraction below N, none above (N itself with zeros only). From 1 second: a
    number below one unit needs a non-zero digit early enough to be a second."""
    units = []
    for letter, size in UNITS.items():
        n = math.floor(most / size)
        alternatives = []
        if not least_one_second:
            alternatives.append(r"0(?:\.[0-9]+)?")
        elif size > 1:  # a nonzero digit among the first log10(size) decimals: >= 1 s
            early = math.floor(math.log10(size))
            alternatives.append(rf"0\.[0-9]{{0,{early - 1}}}[1-9][0-9]*")
        if n > 1:
            alternatives.append(rf"(?:{'|'.join(_up_to(n - 1))})(?:\.[0-9]+)?")
        alternatives.append(rf"{n}(?:\.0+)?")
        unit = f"{letter}?" if letter == "s" else letter
        units.append(f"(?:{'|'.join(alternatives)}){unit}")
    return f"^(?:{'|'.join(units)})$"


# The admin API reads these strings with the same patterns (app.py's `_seconds`), as
# a JSON Schema validator does (ECMA-262: `$` is the very end, no newline before it).
EXPIRES_IN_PATTERN = duration_pattern(MAX_SECONDS, least_one_second=True)
GRACE_PATTERN = duration_pattern(MAX_GRACE, least_one_second=False)
# Python's `\s` (white space as str.isspace has it), spelled out: a JSON Schema
# validator's `\s` (ECMA-262) is another set.
PY_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# keyguard.settings' rate limit: parts like "100/minute", joined by ";" (at most 8).
_RATE_PART = _RATE.pattern.removeprefix("^").removesuffix("$").replace(r"\s", PY_SPACE)
RATE_PATTERN = rf"^(?:{_RATE_PART})(?:;(?:{_RATE_PART})){{0,{MAX_RATE_PARTS - 1}}}$"
# Non-empty after stripping, at most 200 characters, none of keys.py's control
# characters (C0, C1, bidirectional controls, line separators).
TEXT_PATTERN = rf"^[^{CONTROL_CHARS}]*[^\s{CONTROL_CHARS}][^{CONTROL_CHARS}]*$"

_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_REF = {"$ref": "#/components/schemas/Key"}
_ISSUED_REF = {"$ref": "#/components/schemas/Issued"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN}
_SCOPES = {"type": "array", "items": {"type": "string", "pattern": SCOPE_PATTERN}}
_IPS = {"type": "array", "items": {"type": "string"}, "description": "addresses or CIDRs"}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_EXPIRES_AT = {
    **_WHEN,
    "description": (
        "when the key stops working, in the future and within 100 years (else 422 naming"
        " it); null: never (a key without trusted IPs is still capped). A self-service"
        " caller may only move it earlier"
    ),
}
_DURATION = {
    "oneOf": [
        {"type": "number", "minimum": 1, "maximum": int(MAX_SECONDS)},
        {"type": "string", "pattern": EXPIRES_IN_PATTERN},
        {"type": "null"},
    ],
    "description": (
        "the key's lifetime from now, 1 second to 100 years: seconds, or a number and a"
        " unit (s, m, h, d, w) such as '30d', '24h', '1.5h' (at most 36500d, 5214w);"
        " not with expires_at"
    ),
}
_GRACE = {
    "oneOf": [
        {"type": "number", "minimum": 0, "maximum": int(MAX_GRACE)},
        {"type": "string", "pattern": GRACE_PATTERN},
        {"type": "null"},
    ],
    "description": (
        "how long the old secret keeps working, 0 to 30 days: seconds, or a number and a"
        " unit such as '24h', '7d' (at most 30d, 720h, 4w); none: 0. It also ends when the"
        " key expires."
    ),
}
_PROBLEM_DESCRIPTIONS = {
    "400": "invalid_request: a malformed body or query",
    "401": (
        "missing_credentials, invalid_key, revoked_key, ...; or step_up_required: the host's"
        " `confirm` wants a one-time code in the X-Keyguard-Confirm header (nothing changed)"
    ),
    "403": "insufficient_scope (needs keyguard:admin), ip_not_allowed, or a missing CSRF header",
    "404": "not_found: no such key, or not this principal's",
    "409": "invalid_key_settings, field `key`: the key is revoked",
    "413": "payload_too_large",
    "422": (
        "invalid_key_settings: a refused setting; `field` names it. Also what a schema"
        " cannot say: an expiry in the past or beyond 100 years, a malformed or private"
        " address, an API key token in a field every listing shows (owner, name, scopes,"
        " metadata), the owner's key limit, a scope or field this caller may not set, a"
        " self-service caller's later expiry or resume of an operator's suspension"
    ),
    "429": "too_many_failures: this client failed to authenticate too often",
    "503": "unavailable: the key store cannot be reached, or the key's stored row is unreadable",
}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _responses(ok: str, body: dict[str, Any] | None, *codes: int, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    status, _, description = ok.partition(" ")
    out[status] = {"description": description} if body is None else _json(body, description)
    out[status].update(extra)
    for code in sorted({401, 403, 429, 503, *codes}):
        out[str(code)] = {"$ref": f"#/components/responses/P{code}"}
    return out


def _body(schema: dict[str, Any], description: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, **_json(schema, description)}


def openapi_document(
    title: str, root_path: str, host_auth: bool = False, csrf_header: bool = False
) -> dict[str, Any]:
    """The document for one admin app: `host_auth` when it has `authorize` (the
    host's login; self-service callers possible), `csrf_header` when unsafe
    methods need `X-Requested-With`."""
    operators_only = (
        " Operators only: a self-service caller may leave it out or send null, which sets"
        " nothing (on update, null only where the key has none); any other value is 422"
        " naming it."
        if host_auth
        else ""
    )
    operator_mark = {"x-keyguard-operator-only": True} if host_auth else {}
    operator_note = (
        " Operator-only fields (`x-keyguard-operator-only`): "
        + ", ".join(OPERATOR_FIELDS)
        + "; a self-service caller may leave them out or send null."
        if host_auth
        else ""
    )
    key_fields = {
        "id": {"type": "string", "description": "public key id (access key)"},
        "owner": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["bearer", "signing"]},
        "scopes": _SCOPES,
        "allowed_ips": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": _WHEN,
        "last_used_at": _WHEN,
        "last_used_from": {"type": ["string", "null"], "description": "client IP of that use"},
        "revoked_at": _WHEN,
        "suspended_at": _WHEN,
        "suspended_by": {
            "type": ["string", "null"],
            "enum": ["operator", "owner", None],
            "description": (
                "who suspended the key, while it is suspended: an operator (only an"
                " operator may resume it) or its owner (self-service)"
            ),
        },
        "has_passphrase": {"type": "boolean"},
        "rate_limit": {"type": ["string", "null"]},
        "max_uses": {"type": ["integer", "null"]},
        "metadata": {"type": "object"},
        "hint": {"type": "string", "description": "partial view; cannot authenticate"},
        "status": {"type": "string", "enum": ["active", "suspended", "expired", "revoked"]},
    }
    key_schema = {
        "type": "object",
        "required": list(key_fields),
        "additionalProperties": False,
        "properties": key_fields,
    }
    settable = {
        "name": _TEXT,
        "scopes": _SCOPES,
        "allowed_ips": _IPS,
        "expires_at": _EXPIRES_AT,
        "rate_limit": {
            "type": ["string", "null"],
            "maxLength": 200,
            "pattern": RATE_PATTERN,
            "examples": ["100/minute", "10/second;1000/hour"],
            "description": "requests a window, at most 10**9; windows of at most 9999 units"
            + operators_only,
            **operator_mark,
        },
        "metadata": {
            "type": ["object", "null"],
            "description": "JSON, at most 16 KiB, 8 deep (else 422)" + operators_only,
            **operator_mark,
        },
    }
    create_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"] if host_auth else ["owner", "name"],
        "not": {"required": ["expires_at", "expires_in"]},
        "properties": {
            "owner": {
                **_TEXT,
                "description": (
                    "whose key it is: required for an operator (without it, 422 naming"
                    " `owner`); a self-service caller may leave it out (its own) or give its"
                    " own, no other (422 naming `owner`)"
                    if host_auth
                    else "whose key it is"
                ),
            },
            **settable,
            "expires_in": _DURATION,
            "kind": {"type": "string", "enum": ["bearer", "signing"], "default": "bearer"},
            "passphrase": {"type": ["string", "null"], "minLength": 8, "maxLength": 256},
            "max_uses": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "a usage quota" + operators_only,
                **operator_mark,
            },
        },
        **({"description": operator_note.strip()} if host_auth else {}),
    }
    update_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": settable,
        **({"description": operator_note.strip()} if host_auth else {}),
    }
    issued_schema = {
        "type": "object",
        "required": ["key"],
        "additionalProperties": False,
        "properties": {
            "key": _KEY_REF,
            "token": {"type": "string", "description": "bearer token, shown once"},
            "secret": {"type": "string", "description": "signing secret, shown once"},
        },
    }
    principal = {
        "who": {"type": "string"},
        "owner": {"type": ["string", "null"], "description": "set in self-service mode"},
        "operator": {"type": "boolean", "description": "may manage every owner's keys"},
    }
    list_schema = {
        "type": "object",
        "required": ["keys", *principal],
        "additionalProperties": False,
        "properties": {"keys": {"type": "array", "items": _KEY_REF}, **principal},
    }
    scopes_schema = {
        "type": "object",
        "required": ["scopes", "any", *principal],
        "additionalProperties": False,
        "properties": {
            "scopes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "description"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": ["string", "null"]},
                    },
                },
            },
            "any": {"type": "boolean", "description": "any scope may be granted (an operator)"},
            **principal,
        },
    }
    problem_schema = {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "message": {"type": "string", "description": "the same text as detail"},
            "code": {"type": "string"},
            "field": {"type": "string", "description": "the refused field (409, 422)"},
            "action": {"type": "string", "description": "the change to confirm (401)"},
            "required_scopes": {"type": "array", "items": {"type": "string"}},
        },
    }
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    change = " Asks the host's `confirm` first (401 step_up_required)."
    # Host mode with CSRF protection: unsafe methods carry X-Requested-With (else 403).
    csrf = (
        [
            {
                "name": "X-Requested-With",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
                "description": "any value (a browser cannot send it cross-site without CORS)",
            }
        ]
        if csrf_header
        else []
    )
    unsafe = {"parameters": csrf} if csrf else {}
    auth = (
        {}
        if host_auth
        else {
            "security": [{"bearer": []}],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a keyguard key holding the scope keyguard:admin",
                }
            },
        }
    )
    location = {"Location": {"schema": {"type": "string"}, "description": "the new key"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{title} (keyguard admin)",
            "version": "2",
            "description": (
                "Requests are authenticated by the host application's own login."
                if host_auth
                else "Requests carry a keyguard key holding the scope keyguard:admin."
            ),
        },
        "servers": [{"url": root_path or "/"}],
        **({"security": auth["security"]} if auth else {}),
        "paths": {
            "/api/keys": {
                "get": {
                    "summary": "List keys, sorted by creation time",
                    "parameters": [
                        {"name": "owner", "in": "query", "schema": {"type": "string"}},
                        {"name": "include_revoked", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": _responses("200 The keys this caller may see", list_schema, 400),
                },
                "post": {
                    **unsafe,
                    "summary": "Create a key; the token (or secret) is in this answer only",
                    "description": change.strip(),
                    "requestBody": _body(create_schema, "Key settings"),
                    "responses": _responses(
                        "201 The new key and its token",
                        issued_schema,
                        400,
                        413,
                        422,
                        headers=location,
                    ),
                },
            },
            "/api/keys/{key_id}": {
                "parameters": [_ID],
                "get": {
                    "summary": "One key",
                    "responses": _responses("200 The key", _KEY_REF, 404),
                },
                "patch": {
                    **unsafe,
                    "summary": "Change name, scopes, trusted IPs, expiry, rate limit or metadata",
                    "description": (
                        "An expiry that brings an expired key back counts against the owner's"
                        " key limit (422 naming `owner`). A self-service caller may move"
                        " `expires_at` earlier, never later nor remove it (422 naming"
                        " `expires_at`: only an operator can extend a key's life)." + change
                    ),
                    "requestBody": _body(update_schema, "Fields to change"),
                    "responses": _responses("200 The key", _KEY_REF, 400, 404, 413, 422),
                },
                "delete": {
                    **unsafe,
                    "summary": "Delete a key",
                    "description": change.strip(),
                    "responses": _responses("204 Deleted", None, 404),
                },
            },
            "/api/keys/{key_id}/rotate": {
                "parameters": [_ID],
                "post": {
                    **unsafe,
                    "summary": "New secret now; the old one works for `grace`",
                    "description": change.strip(),
                    "requestBody": _body(
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"grace": _GRACE},
                        },
                        "Grace period",
                        required=False,
                    ),
                    "responses": _responses(
                        "200 The key and its new secret", _ISSUED_REF, 400, 404, 409, 413, 422
                    ),
                },
            },
            "/api/keys/{key_id}/revoke": {
                "parameters": [_ID],
                "post": {
                    **unsafe,
                    "summary": "Refuse the key from now on",
                    "description": change.strip(),
                    "responses": _responses("200 The revoked key", _KEY_REF, 404),
                },
            },
            "/api/keys/{key_id}/suspend": {
                "parameters": [_ID],
                "post": {
                    **unsafe,
                    "summary": "Refuse the key (401 suspended_key) until it is resumed",
                    "description": (
                        "The key records who suspended it (`suspended_by`); an operator's"
                        " suspension takes over its owner's." + change
                    ),
                    "responses": _responses("200 The suspended key", _KEY_REF, 404, 409),
                },
            },
            "/api/keys/{key_id}/resume": {
                "parameters": [_ID],
                "post": {
                    **unsafe,
                    "summary": "Accept a suspended key again",
                    "description": (
                        "Counts against the owner's key limit (422 naming `owner`). A"
                        " self-service caller may resume only a key it suspended itself: a key"
                        " an operator suspended (`suspended_by: operator`) is 422 naming `key`."
                        + change
                    ),
                    "responses": _responses("200 The resumed key", _KEY_REF, 404, 409, 422),
                },
            },
            "/api/scopes": {
                "get": {
                    "summary": "The scopes this caller may put on a key",
                    "responses": _responses("200 Grantable scopes", scopes_schema),
                },
            },
        },
        "components": {
            **({"securitySchemes": auth["securitySchemes"]} if auth else {}),
            "schemas": {
                "Key": key_schema,
                "Issued": issued_schema,
                "KeyCreate": create_schema,
                "KeyUpdate": update_schema,
                "Problem": problem_schema,
            },
            "responses": {
                f"P{code}": {"description": text, "content": problem_content}
                for code, text in _PROBLEM_DESCRIPTIONS.items()
            },
        },
    }

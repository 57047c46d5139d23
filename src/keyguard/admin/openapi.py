"""The OpenAPI 3.1 description of the admin API, served at `GET /openapi.json`.

Written by hand (the API is small and fixed by SPEC section 8), so it says
exactly what the routes in `app.py` do: every status a route answers, the
shape of every body (a key has every field, nullable ones as `null`), the
charset of scopes, `expires_at` and `expires_in` as exclusive. What a schema
cannot say (policy: an expiry in the past, a private range, the owner limit,
scopes a self-service principal may not grant) is a 422 `invalid_key_settings`
naming the field. A revoked key cannot be rotated, suspended or resumed: 409
with the same code and `field: "key"`. Paths are relative to the mount point,
given as the server URL. tests/test_admin_openapi.py holds the app to it.
"""

from __future__ import annotations

from typing import Any

SCOPE_PATTERN = r"^[A-Za-z0-9_.:*/-]{1,128}$"  # keys.py's _SCOPE
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhdw]?$"  # app.py's _DURATION
# Non-empty after stripping, at most 200 characters, no control characters.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"

_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_REF = {"$ref": "#/components/schemas/Key"}
_ISSUED_REF = {"$ref": "#/components/schemas/Issued"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN}
_SCOPES = {"type": "array", "items": {"type": "string", "pattern": SCOPE_PATTERN}}
_IPS = {"type": "array", "items": {"type": "string"}, "description": "addresses or CIDRs"}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_DURATION = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "null"},
    ],
    "description": "seconds, or a duration such as '30d', '24h', '15m'; not with expires_at",
}
_GRACE = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "null"},
    ],
    "description": "how long the old secret keeps working: seconds or '24h'; none: 0",
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
    "422": "invalid_key_settings: a refused setting; `field` names it",
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


def openapi_document(title: str, root_path: str) -> dict[str, Any]:
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
        "expires_at": _WHEN,
        "rate_limit": {"type": ["string", "null"], "examples": ["100/minute"]},
        "metadata": {"type": ["object", "null"], "description": "JSON, at most 16 KiB, 8 deep"},
    }
    create_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["owner", "name"],
        "not": {"required": ["expires_at", "expires_in"]},
        "properties": {
            "owner": {**_TEXT, "description": "a self-service principal's own, if given"},
            **settable,
            "expires_in": _DURATION,
            "kind": {"type": "string", "enum": ["bearer", "signing"], "default": "bearer"},
            "passphrase": {"type": ["string", "null"], "minLength": 8, "maxLength": 256},
            "max_uses": {"type": ["integer", "null"], "minimum": 1},
        },
    }
    update_schema = {"type": "object", "additionalProperties": False, "properties": settable}
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
    location = {"Location": {"schema": {"type": "string"}, "description": "the new key"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} (keyguard admin)", "version": "2"},
        "servers": [{"url": root_path or "/"}],
        "security": [{"bearer": []}],
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
                    "summary": "Delete a key",
                    "description": change.strip(),
                    "responses": _responses("204 Deleted", None, 404),
                },
            },
            "/api/keys/{key_id}/rotate": {
                "parameters": [_ID],
                "post": {
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
                    "summary": "Refuse the key from now on",
                    "description": change.strip(),
                    "responses": _responses("200 The revoked key", _KEY_REF, 404),
                },
            },
            "/api/keys/{key_id}/suspend": {
                "parameters": [_ID],
                "post": {
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
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a keyguard key holding the scope keyguard:admin",
                }
            },
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

"""The OpenAPI 3.1 description of the admin API, served at `GET /openapi.json`.

Written by hand (the API is small and fixed by SPEC section 8), so it says
exactly what the routes in `app.py` do. Paths are relative to the mount point,
given as the server URL.
"""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_REFUSED = {"$ref": "#/components/responses/Refused"}
_KEY_REF = {"$ref": "#/components/schemas/Key"}
_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_DURATION = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\d+(\.\d+)?[smhdw]?$"},
    ],
    "description": "seconds, or a duration such as '30d', '24h', '15m'",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"401": _PROBLEM, "403": _PROBLEM}
    for code in codes:
        out[str(code)] = _REFUSED if code == 422 else _PROBLEM
    return out


def openapi_document(title: str, root_path: str) -> dict[str, Any]:
    key_schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "public key id (access key)"},
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["bearer", "signing"]},
            "scopes": _STR_LIST,
            "allowed_ips": _STR_LIST,
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": _WHEN,
            "last_used_at": _WHEN,
            "revoked_at": _WHEN,
            "has_passphrase": {"type": "boolean"},
            "rate_limit": {"type": ["string", "null"]},
            "max_uses": {"type": ["integer", "null"]},
            "metadata": {"type": "object"},
            "hint": {"type": "string", "description": "partial view; cannot authenticate"},
        },
    }
    create_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "owner": {"type": "string", "description": "required unless owner-scoped"},
            "name": {"type": "string"},
            "scopes": _STR_LIST,
            "allowed_ips": _STR_LIST,
            "expires_at": _WHEN,
            "expires_in": _DURATION,
            "kind": {"type": "string", "enum": ["bearer", "signing"], "default": "bearer"},
            "passphrase": {"type": ["string", "null"], "minLength": 8, "maxLength": 256},
            "rate_limit": {"type": ["string", "null"], "examples": ["100/minute"]},
            "max_uses": {"type": ["integer", "null"], "minimum": 1},
            "metadata": {"type": ["object", "null"]},
        },
    }
    update_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: create_schema["properties"][name]  # type: ignore[index]
            for name in ("name", "scopes", "allowed_ips", "expires_at", "rate_limit", "metadata")
        },
    }
    issued_schema = {
        "type": "object",
        "required": ["key"],
        "properties": {
            "key": _KEY_REF,
            "token": {"type": "string", "description": "bearer token, shown once"},
            "secret": {"type": "string", "description": "signing secret, shown once"},
        },
    }
    problem_schema = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "field": {"type": "string", "description": "the refused field (422 only)"},
        },
    }
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} (keyguard admin)", "version": "1"},
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
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "keys": {"type": "array", "items": _KEY_REF},
                                    "owner": {"type": ["string", "null"]},
                                },
                            },
                            "The keys this caller may see",
                        ),
                        **_errors(),
                    },
                },
                "post": {
                    "summary": "Create a key; the token (or secret) is in this answer only",
                    "requestBody": {"required": True, **_json(create_schema, "Key settings")},
                    "responses": {
                        "201": _json(issued_schema, "The new key and its token"),
                        **_errors(400, 413, 422),
                    },
                },
            },
            "/api/keys/{key_id}": {
                "parameters": [_ID],
                "get": {
                    "summary": "One key",
                    "responses": {"200": _json(_KEY_REF, "The key"), **_errors(404)},
                },
                "patch": {
                    "summary": "Change name, scopes, trusted IPs, expiry, rate limit or metadata",
                    "requestBody": {"required": True, **_json(update_schema, "Fields to change")},
                    "responses": {"200": _json(_KEY_REF, "The key"), **_errors(400, 404, 422)},
                },
                "delete": {
                    "summary": "Delete a key",
                    "responses": {"204": {"description": "Deleted"}, **_errors(404)},
                },
            },
            "/api/keys/{key_id}/rotate": {
                "parameters": [_ID],
                "post": {
                    "summary": "New secret now; the old one works for `grace`",
                    "requestBody": {
                        "required": False,
                        **_json({"type": "object", "properties": {"grace": _DURATION}}, "Grace"),
                    },
                    "responses": {
                        "200": _json(issued_schema, "The key and its new token"),
                        **_errors(400, 404, 422),
                    },
                },
            },
            "/api/keys/{key_id}/revoke": {
                "parameters": [_ID],
                "post": {
                    "summary": "Refuse the key from now on",
                    "responses": {"200": _json(_KEY_REF, "The revoked key"), **_errors(404)},
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
                "KeyCreate": create_schema,
                "KeyUpdate": update_schema,
                "Problem": problem_schema,
            },
            "responses": {
                "Problem": {"description": "problem+json (RFC 9457)", "content": problem_content},
                "Refused": {
                    "description": "a refused setting: code invalid_key_settings, `field` names it",
                    "content": problem_content,
                },
            },
        },
    }

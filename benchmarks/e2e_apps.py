"""The FastAPI apps that bench_e2e.py serves with uvicorn, one per variant:

    uvicorn e2e_apps:bare | e2e_apps:header_dependency | e2e_apps:keyguard_bearer
            | e2e_apps:keyguard_signed

Every variant answers GET /v1/x with a small JSON body. The keyguard variants
read their key from the environment (KG_BENCH_STORE: a SQLite file bench_e2e.py
filled), so the server process does the same start-up a real app does.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import APIKeyHeader

SCOPE = "bench"
RULES = [{"path": "/v1/*", "methods": ["GET"], "scopes": [SCOPE]}]


def _app() -> FastAPI:
    return FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def _settings() -> dict[str, Any]:
    return {
        "store": os.environ.get("KG_BENCH_STORE", "memory://"),
        "pepper": "bench-pepper-0123456789abcdef0123456789",
        "local_cache_ttl": 3600,
        "rules": RULES,
        "abuse": {"max_failures": None},
        # A wide window: wrk sends pre-signed requests, made before the round began
        # (the window's size costs nothing per request).
        "signing": {
            "master_keys": [os.environ.get("KG_BENCH_MASTER", "")],
            "max_skew_seconds": 600,
        },
    }


def _bare() -> FastAPI:
    app = _app()

    @app.get("/v1/x")
    def x() -> dict[str, bool]:
        return {"ok": True}

    return app


def _header_dependency() -> FastAPI:
    """The hand-written baseline: an APIKeyHeader dependency and a dict of keys."""
    keys = {os.environ.get("KG_BENCH_TOKEN", ""): {"scopes": {SCOPE}}}
    scheme = APIKeyHeader(name="X-API-Key", auto_error=False)

    def key(value: str | None = Depends(scheme)) -> dict[str, Any]:
        found = keys.get(value or "")
        if found is None or SCOPE not in found["scopes"]:
            raise HTTPException(401, "invalid key")
        return found

    app = _app()

    @app.get("/v1/x")
    def x(_: dict[str, Any] = Depends(key)) -> dict[str, bool]:
        return {"ok": True}

    return app


def _keyguard() -> FastAPI:
    from keyguard import KeyGuard
    from keyguard.asgi import KeyGuardMiddleware

    app = _bare()
    app.add_middleware(KeyGuardMiddleware, guard=KeyGuard(_settings()))
    return app


bare = _bare() if os.environ.get("KG_BENCH_VARIANT") == "bare" else None
header_dependency = (
    _header_dependency() if os.environ.get("KG_BENCH_VARIANT") == "header_dependency" else None
)
keyguard_bearer = _keyguard() if os.environ.get("KG_BENCH_VARIANT") == "keyguard_bearer" else None
keyguard_signed = _keyguard() if os.environ.get("KG_BENCH_VARIANT") == "keyguard_signed" else None

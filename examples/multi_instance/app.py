"""One app instance. Run two (or more) of these against the same Redis and PostgreSQL:

    KEYGUARD_STORE=postgresql://postgres@127.0.0.1:5432/test \
    KEYGUARD_CACHE=redis://127.0.0.1:6379/0 \
    uvicorn app:app --port 8001            # and again with --port 8002

`GET /v1/hello` needs the scope `read`; `POST /admin/keys/{id}/revoke` needs
`keyguard:admin` and revokes a key through this instance. Every instance refuses
the revoked key within milliseconds (the Redis change channel), at worst after
`local_cache_ttl` seconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware

# store and cache come from KEYGUARD_STORE and KEYGUARD_CACHE, which KeyGuard reads itself.
guard = KeyGuard(
    {
        "public_paths": ["/health"],
        "rules": [
            {"path": "/v1/*", "scopes": ["read"]},
            {"path": "/admin/*", "scopes": ["keyguard:admin"]},
        ],
        "policy": {"allow_private_ips": True},
    }
)
INSTANCE = os.environ.get("INSTANCE", str(os.getpid()))


async def hello(request: Request) -> JSONResponse:
    key = request.scope["keyguard.key"]
    return JSONResponse({"instance": INSTANCE, "key": key.id, "name": key.name})


async def revoke(request: Request) -> JSONResponse:
    info = await guard.keys.arevoke(request.path_params["key_id"])
    return JSONResponse({"instance": INSTANCE, "revoked": info.id})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"instance": INSTANCE, "ok": True})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    guard.close()  # writes the buffered last_used_at times, stops the listener


app = Starlette(
    routes=[
        Route("/v1/hello", hello),
        Route("/admin/keys/{key_id}/revoke", revoke, methods=["POST"]),
        Route("/health", health),
    ],
    lifespan=lifespan,
)
app.add_middleware(KeyGuardMiddleware, guard=guard)

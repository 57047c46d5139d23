"""FastAPI helpers: current_key, Security(require_scopes, ...), the OpenAPI security schemes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Security

from keyguard import KeyGuard, KeyInfo
from keyguard.asgi import KeyGuardMiddleware
from keyguard.fastapi import current_key, document_header, require_scopes


@pytest.fixture(scope="module")
def setup() -> tuple[FastAPI, dict[str, str], list[str]]:
    guard = KeyGuard(
        {
            "store": "memory://",
            "public_paths": ["/docs", "/openapi.json", "/open"],
            "scope_implies": {"write": ["read"]},
        }
    )
    calls: list[str] = []
    app = FastAPI()

    @app.get("/me")
    def me(key: KeyInfo = Depends(current_key)) -> dict[str, Any]:
        calls.append("me")
        return {"id": key.id, "name": key.name}

    @app.post("/v1/chat")
    async def chat(key: KeyInfo = Security(require_scopes, scopes=["inference"])) -> dict[str, str]:
        calls.append("chat")
        return {"name": key.name}

    @app.get("/read")
    def read(key: KeyInfo = Security(require_scopes, scopes=["read"])) -> dict[str, str]:
        calls.append("read")
        return {"name": key.name}

    @app.get("/models")
    def models(
        key: KeyInfo = Security(require_scopes, scopes=["models:list", "models:get"]),
    ) -> dict[str, str]:
        calls.append("models")
        return {"name": key.name}

    @app.get("/open")
    def open_route(key: KeyInfo = Depends(current_key)) -> dict[str, str]:
        calls.append("open")
        return {"name": key.name}

    app.add_middleware(KeyGuardMiddleware, guard=guard)
    k = guard.keys
    tokens = {
        "infer": k.create(owner="o", name="infer", scopes=["inference"]).token or "",
        "writer": k.create(owner="o", name="writer", scopes=["write"]).token or "",
        "models": k.create(owner="o", name="models", scopes=["models:*"]).token or "",
        "none": k.create(owner="o", name="none").token or "",
    }
    return app, tokens, calls


async def call(app: FastAPI, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        return await client.request(method, path, headers=headers)


CASES = [
    pytest.param("GET", "/me", "infer", 200, None, id="current_key"),
    pytest.param("GET", "/me", None, 401, "missing_credentials", id="current_key-no-key"),
    pytest.param("POST", "/v1/chat", "infer", 200, None, id="scope-ok"),
    pytest.param("POST", "/v1/chat", "writer", 403, "insufficient_scope", id="scope-missing"),
    pytest.param("GET", "/read", "writer", 200, None, id="scope-implied"),
    pytest.param("GET", "/read", "infer", 403, "insufficient_scope", id="scope-implied-missing"),
    pytest.param("GET", "/models", "models", 200, None, id="scope-wildcard"),
    pytest.param("GET", "/models", "none", 403, "insufficient_scope", id="scope-none"),
    pytest.param("GET", "/open", None, 401, "missing_credentials", id="public-path-current_key"),
]


@pytest.mark.parametrize(("method", "path", "who", "status", "code"), CASES)
async def test_routes(
    setup: Any, method: str, path: str, who: str | None, status: int, code: str | None
) -> None:
    app, tokens, calls = setup
    before = len(calls)
    resp = await call(app, method, path, None if who is None else tokens[who])
    assert resp.status_code == status, resp.text
    if code is None:
        assert len(calls) == before + 1
        return
    assert len(calls) == before
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == code and resp.json()["status"] == status
    if status == 403:
        www = resp.headers["www-authenticate"]
        assert www.startswith('Bearer realm="api", error="insufficient_scope", scope="')
    else:
        assert resp.headers["www-authenticate"].startswith('Bearer realm="api"')


async def test_current_key_fields(setup: Any) -> None:
    app, tokens, _ = setup
    resp = await call(app, "GET", "/me", tokens["infer"])
    assert resp.json()["name"] == "infer" and tokens["infer"].split("_")[1] == resp.json()["id"]


async def test_openapi_security_schemes(setup: Any) -> None:
    app, _, _ = setup
    resp = await call(app, "GET", "/openapi.json", None)
    assert resp.status_code == 200
    schema = resp.json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["APIKeyBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <token>",
    }
    assert schemes["APIKeyHeader"]["type"] == "apiKey"
    assert (
        schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    )
    security = schema["paths"]["/v1/chat"]["post"]["security"]
    assert {name for entry in security for name in entry} == {"APIKeyBearer", "APIKeyHeader"}
    docs = await call(app, "GET", "/docs", None)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_openapi_shows_the_configured_header() -> None:
    guard = KeyGuard(
        {"store": "memory://", "header": "X-Key", "policy": {"allow_private_ips": True}}
    )
    issued = guard.keys.create(owner="o", name="n")
    app = FastAPI()
    app.add_middleware(KeyGuardMiddleware, guard=guard)

    @app.get("/me")
    def me(key: KeyInfo = Depends(current_key)) -> str:
        return key.id

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # The docs page's Authorize button sends the scheme's header: it must be ours.
        assert (await client.get("/me", headers={"X-Key": issued.token or ""})).status_code == 200
        schemes = app.openapi()["components"]["securitySchemes"]
        assert schemes["APIKeyHeader"]["name"] == "X-Key"
        assert (
            await client.get("/me", headers={"X-API-Key": issued.token or ""})
        ).status_code == 401
    document_header("X-API-Key")  # module-level scheme: leave it as other tests expect

"""FastAPI helpers: current_key, Security(require_scopes, ...), the OpenAPI security schemes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Security

from keyguard import KeyGuard, KeyInfo
from keyguard.asgi import KeyGuardMiddleware
from keyguard.fastapi import current_key, install_openapi, require_scopes

from .signing_util import MASTER


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
    assert resp.json()["message"] == resp.json()["detail"]  # what SDKs show
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


# -- OpenAPI: what the middleware enforces, per app -----------------------------------


def _app(header: str = "X-API-Key", **settings: Any) -> tuple[FastAPI, KeyGuard]:
    guard = KeyGuard(
        {
            "store": "memory://",
            "header": header,
            "public_paths": ["/docs", "/openapi.json", "/health"],
            "rules": [
                {"path": "/v1/chat/*", "methods": ["POST"], "scopes": ["inference"]},
                {"path": "/v1/*", "scopes": ["api"]},
            ],
            **settings,
        }
    )
    app = FastAPI()
    app.add_middleware(KeyGuardMiddleware, guard=guard)

    @app.post("/v1/chat/{model}")
    def chat(model: str) -> dict[str, str]:  # guarded by the rules alone
        return {"model": model}

    @app.get("/v1/models")
    def models(key: KeyInfo = Security(require_scopes, scopes=["models:list"])) -> list[str]:
        return []

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/me", responses={403: {"description": "the app's own words"}})
    def me(key: KeyInfo = Depends(current_key)) -> str:
        return key.id

    return app, guard


async def _schema(app: FastAPI) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        resp = await c.get("/openapi.json")
    assert resp.status_code == 200
    return dict(resp.json())


def _required(operation: dict[str, Any]) -> dict[str, list[str]]:
    return {name: scopes for entry in operation["security"] for name, scopes in entry.items()}


async def test_rule_guarded_routes_get_security_with_their_scopes() -> None:
    app, guard = _app()
    schema = await _schema(app)
    paths = schema["paths"]
    chat = paths["/v1/chat/{model}"]["post"]
    assert _required(chat) == {
        "APIKeyBearer": ["inference", "api"],
        "APIKeyHeader": ["inference", "api"],
    }
    models = paths["/v1/models"]["get"]  # the route's own Security scopes, and the rule's
    assert _required(models) == {
        "APIKeyBearer": ["models:list", "api"],
        "APIKeyHeader": ["models:list", "api"],
    }
    assert _required(paths["/me"]["get"]) == {"APIKeyBearer": [], "APIKeyHeader": []}
    assert "security" not in paths["/health"]["get"]  # a public path stays as it was
    assert set(paths["/health"]["get"]["responses"]) == {"200"}
    for operation in (chat, models):
        for status in ("401", "403", "429"):
            content = operation["responses"][status]["content"]
            assert content == {
                "application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/KeyguardProblem"}
                }
            }
    assert paths["/me"]["get"]["responses"]["403"] == {"description": "the app's own words"}
    problem = schema["components"]["schemas"]["KeyguardProblem"]
    assert {"code", "detail", "message", "status"} <= set(problem["required"])
    guard.close()


async def test_two_apps_in_one_process_each_document_their_own_header() -> None:
    one, g1 = _app("X-One-Key")
    two, g2 = _app("X-Two-Key")
    for _ in range(2):  # interleaved, and again: neither sees the other's
        for app, name in ((one, "X-One-Key"), (two, "X-Two-Key"), (one, "X-One-Key")):
            schemes = (await _schema(app))["components"]["securitySchemes"]
            assert schemes["APIKeyHeader"]["name"] == name
    g1.close()
    g2.close()


def test_install_openapi_before_any_request_and_after_routes_change() -> None:
    app, guard = _app("X-Early")
    install_openapi(app, guard)
    install_openapi(app, guard)  # idempotent
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-Early"

    @app.get("/v1/late")
    def late() -> str:
        return "late"

    again = app.openapi()  # FastAPI builds the schema again for the new route: completed too
    assert _required(again["paths"]["/v1/late"]["get"])["APIKeyHeader"] == ["api"]
    guard.close()


@pytest.mark.parametrize(
    ("profile", "headers"),
    [
        pytest.param("kg", ["KG-ACCESS-KEY", "KG-TIMESTAMP", "KG-SIGNATURE"], id="kg"),
        pytest.param("okx", ["OK-ACCESS-KEY", "OK-ACCESS-TIMESTAMP", "OK-ACCESS-SIGN"], id="okx"),
        pytest.param("bybit", ["X-BAPI-API-KEY", "X-BAPI-TIMESTAMP", "X-BAPI-SIGN"], id="bybit"),
        pytest.param("rfc9421", ["Signature-Input", "Signature"], id="rfc9421"),
    ],
)
async def test_signed_request_headers_of_the_profile_are_documented(
    profile: str, headers: list[str]
) -> None:
    app, guard = _app(signing={"profile": profile, "master_keys": [MASTER]})
    schema = await _schema(app)
    schemes = schema["components"]["securitySchemes"]
    names = [f"Signed-{h}" for h in headers]
    assert [schemes[n]["name"] for n in names] == headers
    assert all(schemes[n]["in"] == "header" for n in names)
    chat = schema["paths"]["/v1/chat/{model}"]["post"]
    together = [entry for entry in chat["security"] if names[0] in entry]
    assert together == [dict.fromkeys(names, ["inference", "api"])]
    assert guard.signing.profile.summary in str(schemes)
    guard.close()


async def test_without_signing_configured_no_signed_headers_are_documented() -> None:
    app, guard = _app()
    schemes = (await _schema(app))["components"]["securitySchemes"]
    assert set(schemes) == {"APIKeyBearer", "APIKeyHeader"}
    guard.close()

"""The openai SDK, unchanged, against an OpenAI-style API behind keyguard under
uvicorn: a good key lists the models; a refused one raises the SDK's own error
class whose text is keyguard's `detail` (problem+json carries it as `message`,
the member the SDK shows; SPEC section 5) and whose `code` is keyguard's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware

from .live import serve

openai = pytest.importorskip(
    "openai", reason="the openai SDK is not installed (pip install openai)"
)


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, dict[str, str]]]:
    guard = KeyGuard(
        {
            "store": "memory://",
            "policy": {"allow_private_ips": True},
            "rules": [{"path": "/v1/*", "scopes": ["models:read"]}],
            "abuse": {"max_failures": None},
        }
    )

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "kg-1", "object": "model"}]})

    app = Starlette(routes=[Route("/v1/models", models)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    keys = {
        "reader": guard.keys.create(owner="o", name="r", scopes=["models:read"]).token or "",
        "other": guard.keys.create(owner="o", name="x", scopes=["billing"]).token or "",
        "unknown": "kg_AAAAAAAAAAAAAAAA_" + "A" * 30,
    }
    with serve(app) as base:
        yield base, keys
    guard.close()


def _client(base: str, token: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0, timeout=5)


def test_a_good_key_lists_the_models(api: tuple[str, dict[str, str]]) -> None:
    base, keys = api
    assert [m.id for m in _client(base, keys["reader"]).models.list()] == ["kg-1"]


@pytest.mark.parametrize(
    ("who", "error", "code", "detail"),
    [
        pytest.param(
            "unknown", "AuthenticationError", "invalid_key", "The API key is not valid.", id="401"
        ),
        pytest.param(
            "other",
            "PermissionDeniedError",
            "insufficient_scope",
            "The API key lacks a scope this route needs.",
            id="403",
        ),
    ],
)
def test_the_sdks_error_shows_keyguards_detail(
    api: tuple[str, dict[str, str]], who: str, error: str, code: str, detail: str
) -> None:
    base, keys = api
    with pytest.raises(getattr(openai, error)) as info:
        _client(base, keys[who]).models.list()
    assert detail in str(info.value)  # "Error code: 401 - The API key is not valid."
    assert info.value.code == code

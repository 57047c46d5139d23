"""Scopes: implication closure, wildcards, route rules and public paths."""

from __future__ import annotations

import pytest

from keyguard.scopes import Router, Scopes
from keyguard.settings import Rule

S = Scopes({"admin": ["write"], "write": ["read"], "a": ["b"], "b": ["a"]})

MISSING = [
    pytest.param(("read",), ["read"], [], id="exact"),
    pytest.param(("read",), ["write"], ["write"], id="missing"),
    pytest.param(("write",), ["read"], [], id="implied"),
    pytest.param(("admin",), ["read", "write"], [], id="transitive"),
    pytest.param(("a",), ["b"], [], id="cycle"),
    pytest.param(("*",), ["anything", "x:y"], [], id="star"),
    pytest.param(("models:*",), ["models:read", "models:write"], [], id="name-star"),
    pytest.param(("models:*",), ["models"], ["models"], id="name-star-not-bare"),
    pytest.param(("models:*",), ["files:read"], ["files:read"], id="name-star-other"),
    pytest.param(("models:read",), ["models:*"], ["models:*"], id="needed-star-literal"),
    pytest.param((), ["read"], ["read"], id="none-granted"),
    pytest.param(("read",), [], [], id="none-needed"),
]


@pytest.mark.parametrize(("granted", "needed", "missing"), MISSING)
def test_missing(granted: tuple[str, ...], needed: list[str], missing: list[str]) -> None:
    assert Scopes.missing(S.expand(granted), needed) == missing


ROUTER = Router(
    ["/health", "/docs*", "/static/*"],
    [
        Rule(path="/v1/chat/*", methods=("POST",), scopes=("inference",)),
        Rule(path="/v1/*", scopes=("api",)),
        Rule(path="/v1/models", methods=("GET",), scopes=("models:read",)),
        Rule(path="/v1/models", methods=("DELETE",), scopes=("models:write",)),
    ],
)

REQUIRED = [
    pytest.param("POST", "/v1/chat/completions", ("inference", "api"), id="union"),
    pytest.param("GET", "/v1/chat/completions", ("api",), id="method-filter"),
    pytest.param("GET", "/v1/models", ("api", "models:read"), id="get"),
    pytest.param("HEAD", "/v1/models", ("api", "models:read"), id="head-follows-get"),
    pytest.param("DELETE", "/v1/models", ("api", "models:write"), id="delete"),
    pytest.param("GET", "/v2/models", (), id="no-rule"),
    pytest.param("GET", "/v1", (), id="glob-needs-slash"),
    pytest.param("GET", "/v1/models/x", ("api",), id="exact-not-prefix"),
]


@pytest.mark.parametrize(("method", "path", "needed"), REQUIRED)
def test_required(method: str, path: str, needed: tuple[str, ...]) -> None:
    assert set(ROUTER.required(method, path)) == set(needed)


@pytest.mark.parametrize(
    ("path", "public"),
    [
        pytest.param("/health", True, id="exact"),
        pytest.param("/healthz", False, id="not-prefix"),
        pytest.param("/docs", True, id="glob-empty"),
        pytest.param("/docs/oauth2-redirect", True, id="glob"),
        pytest.param("/static/a/b.css", True, id="glob-slashes"),
        pytest.param("/static", False, id="glob-needs-slash"),
        pytest.param("/v1/health", False, id="anchored"),
    ],
)
def test_public(path: str, public: bool) -> None:
    assert ROUTER.is_public(path) is public

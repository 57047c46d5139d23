"""Flask helpers: KeyGuardExtension (constructor and init_app), current_key, @require_scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from keyguard import ConfigurationError, KeyGuard
from keyguard.flask import KeyGuardExtension, current_key, require_scopes


def make_app(config: Any, factory: bool) -> tuple[Flask, KeyGuardExtension, list[str]]:
    app = Flask(__name__)
    app.config["KEYGUARD"] = config
    calls: list[str] = []

    @app.get("/me")
    def me() -> dict[str, Any]:
        calls.append("me")
        return {"name": current_key.name, "scopes": list(current_key.scopes)}

    @app.post("/v1/chat")
    @require_scopes("inference")
    def chat() -> dict[str, Any]:
        calls.append("chat")
        return {"name": current_key.name}

    @app.get("/read")
    @require_scopes("read", "models:list")
    def read() -> dict[str, Any]:
        calls.append("read")
        return {"name": current_key.name}

    @app.get("/health")
    def health() -> dict[str, Any]:
        calls.append("health")
        return {"ok": True}

    @app.get("/health/me")
    def health_me() -> dict[str, Any]:
        calls.append("health_me")
        return {"name": current_key.name}

    if factory:
        ext = KeyGuardExtension()
        ext.init_app(app)
    else:
        ext = KeyGuardExtension(app)
    return app, ext, calls


CONFIG = {
    "store": "memory://",
    "public_paths": ["/health*"],
    "scope_implies": {"write": ["read"]},
    "rules": [{"path": "/me", "methods": ["GET"], "scopes": ["me"]}],
}


@pytest.fixture(params=[False, True], ids=["constructor", "init_app"])
def world(
    request: pytest.FixtureRequest,
) -> tuple[Flask, KeyGuardExtension, list[str], dict[str, str]]:
    app, ext, calls = make_app(CONFIG, request.param)
    assert isinstance(ext.guard, KeyGuard) and app.extensions["keyguard"] is ext
    assert ext.guard.settings.public_paths == ("/health*",)  # read from app.config["KEYGUARD"]
    k = ext.guard.keys
    tokens = {
        "all": k.create(
            owner="o", name="all", scopes=["me", "inference", "write", "models:*"]
        ).token
        or "",
        "me": k.create(owner="o", name="me", scopes=["me"]).token or "",
        "infer": k.create(owner="o", name="infer", scopes=["inference"]).token or "",
    }
    return app, ext, calls, tokens


CASES = [
    pytest.param("GET", "/me", "all", 200, None, id="current_key"),
    pytest.param("GET", "/me", None, 401, "missing_credentials", id="no-key"),
    pytest.param("GET", "/me", "infer", 403, "insufficient_scope", id="rule-from-config"),
    pytest.param("POST", "/v1/chat", "infer", 200, None, id="require_scopes-ok"),
    pytest.param("POST", "/v1/chat", "me", 403, "insufficient_scope", id="require_scopes-missing"),
    pytest.param("GET", "/read", "all", 200, None, id="require_scopes-implied-wildcard"),
    pytest.param("GET", "/read", "infer", 403, "insufficient_scope", id="require_scopes-several"),
    pytest.param("GET", "/health", None, 200, None, id="public"),
    pytest.param("GET", "/health/me", None, 401, "missing_credentials", id="public-current_key"),
]


@pytest.mark.parametrize(("method", "path", "who", "status", "code"), CASES)
def test_routes(
    world: Any, method: str, path: str, who: str | None, status: int, code: str | None
) -> None:
    app, _, calls, tokens = world
    headers = {} if who is None else {"X-API-Key": tokens[who]}
    before = list(calls)
    resp = app.test_client().open(path, method=method, headers=headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    if code is None:
        if who is not None:
            assert resp.get_json()["name"] == who
        return
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.get_json()["code"] == code
    assert "www-authenticate" in resp.headers
    # a view guarded by the decorator or the middleware never ran
    assert calls == before or calls[len(before) :] == ["health_me"]


def test_require_scopes_header(world: Any) -> None:
    app, _, _, tokens = world
    resp = app.test_client().post("/v1/chat", headers={"Authorization": f"Bearer {tokens['me']}"})
    assert (
        resp.headers["www-authenticate"]
        == 'Bearer realm="api", error="insufficient_scope", scope="inference"'
    )


def test_guard_is_usable(world: Any) -> None:
    _, ext, _, tokens = world
    assert ext.guard.verify(tokens["me"]).name == "me"


@pytest.mark.parametrize("bad", [["store", "memory://"], "memory://"], ids=["list", "str"])
def test_config_must_be_a_dict(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        make_app(bad, False)


def test_bad_settings_in_config() -> None:
    with pytest.raises(ConfigurationError) as info:
        make_app({"store": "memory://", "policy": {"max_keys_per_owner": "lots"}}, True)
    assert str(info.value).startswith("policy.max_keys_per_owner")


def test_given_guard_is_used(tmp_path: Path) -> None:
    guard = KeyGuard({"store": "memory://"})
    app = Flask(__name__)
    ext = KeyGuardExtension(app, guard=guard)
    assert ext.guard is guard

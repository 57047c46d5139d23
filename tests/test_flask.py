"""Flask helpers: KeyGuardExtension (constructor and init_app), current_key, @require_scopes."""

from __future__ import annotations

import json
import logging
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


# --- one settings source: flat KEYGUARD_* config keys, typos, the environment ------


def test_flat_config_keys_and_the_dict_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEYGUARD_RATE_LIMIT", "1/second")  # the environment, under both
    monkeypatch.setenv("KEYGUARD_TOKEN_PREFIX", "env")
    app = Flask(__name__)
    app.config.update(
        KEYGUARD_STORE=f"sqlite:///{tmp_path / 'flat.db'}",
        KEYGUARD_POLICY__MAX_KEYS_PER_OWNER=3,  # a typed value, as Python config gives it
        KEYGUARD_POLICY__ALLOW_PRIVATE_IPS="yes",  # text, as from_prefixed_env may give it
        KEYGUARD_PUBLIC_PATHS="/health, /docs",
        KEYGUARD_TOKEN_PREFIX="flat",
        KEYGUARD={"token_prefix": "dict", "policy": {"unrestricted_max_days": 7}},
    )
    ext = KeyGuardExtension(app)
    assert ext.guard is not None
    s = ext.guard.settings
    assert s.store == f"sqlite:///{tmp_path / 'flat.db'}"
    assert s.policy.max_keys_per_owner == 3 and s.policy.allow_private_ips is True
    assert s.policy.unrestricted_max_days == 7 and s.public_paths == ("/health", "/docs")
    assert s.token_prefix == "dict"  # dict > flat config > environment
    assert s.rate_limit == "1/second"
    ext.guard.close()


def test_unknown_flat_config_key_is_refused() -> None:
    app = Flask(__name__)
    app.config["KEYGUARD_STOER"] = "memory://"
    with pytest.raises(ConfigurationError) as info:
        KeyGuardExtension(app)
    assert str(info.value) == (
        "KEYGUARD_STOER: not a keyguard setting (did you mean KEYGUARD_STORE?)"
    )


TYPOS = ["KEYGAURD", "KEY_GUARD", "keyguard", "KEYGUARDS", "KEYGAURD_STORE"]


@pytest.mark.parametrize("name", TYPOS)
def test_misspelt_keyguard_config_is_warned_about(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    app.config[name] = {"store": "memory://"}
    app.config["KEYGUARD_STORE"] = "memory://"
    with caplog.at_level(logging.WARNING, logger="keyguard"):
        ext = KeyGuardExtension(app)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and repr(name) in warned[0] and "misspelt KEYGUARD" in warned[0]
    assert ext.guard is not None and ext.guard.settings.store == "memory://"


def test_flask_defaults_raise_no_typo_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)
    app.config.update(KEYGUARD={"store": "memory://"}, SECRET_KEY="x", API_KEY_HEADER="x")
    with caplog.at_level(logging.WARNING, logger="keyguard"):
        KeyGuardExtension(app)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- flask keyguard ...: the CLI on the app's own settings --------------------------


def test_flask_cli_uses_the_apps_own_guard(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    app = Flask(__name__)
    app.config["KEYGUARD_STORE"] = f"sqlite:///{db}"
    app.config["KEYGUARD"] = {"policy": {"allow_private_ips": True}}
    ext = KeyGuardExtension(app)
    assert ext.guard is not None
    runner = app.test_cli_runner()

    made = runner.invoke(args=["keyguard", "keys", "create", "--owner", "o", "--name", "lan",
                               "--ip", "10.0.0.0/8", "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert ext.guard.verify(data["token"], client_ip="10.1.2.3").name == "lan"  # the app's store
    listed = runner.invoke(args=["keyguard", "keys", "list"])
    assert listed.exit_code == 0 and data["key"]["id"] in listed.output
    assert f"1 key(s) in sqlite:///{db}" in listed.output
    quiet = runner.invoke(args=["keyguard", "keys", "create", "--owner", "o", "--name", "q", "-q"])
    assert quiet.exit_code == 0 and ext.guard.verify(quiet.stdout.strip()).name == "q"
    assert runner.invoke(args=["keyguard", "master-key", "new"]).exit_code == 0
    assert runner.invoke(args=["keyguard", "-h"]).output.startswith("Usage:")

    gone = runner.invoke(args=["keyguard", "keys", "show", "nope"])
    assert gone.exit_code == 1 and "no key with id 'nope'" in gone.output
    assert "Traceback" not in gone.output
    refused = runner.invoke(args=["keyguard", "keys", "delete", data["key"]["id"]], input="")
    assert refused.exit_code == 2 and "--yes" in refused.output
    bad = runner.invoke(args=["keyguard", "keys", "create", "--owner", "o", "--name", "x",
                              "--ip", "nonsense"])  # fmt: skip
    assert bad.exit_code == 2 and "allowed_ips" in bad.output
    # the app's guard stays open for the app after a command
    assert ext.guard.verify(data["token"], client_ip="10.1.2.3").id == data["key"]["id"]


# --- misuse: clear messages -----------------------------------------------------------


def test_current_key_without_the_middleware_names_the_fix() -> None:
    app = Flask(__name__)

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"name": current_key.name}

    @app.get("/scoped")
    @require_scopes("read")
    def scoped() -> dict[str, Any]:
        return {}

    for path in ("/me", "/scoped"):
        with app.test_request_context(path, headers={"Authorization": "Bearer kg_x"}):
            with pytest.raises(ConfigurationError) as info:
                app.full_dispatch_request()
            message = str(info.value)
            assert "needs the KeyGuard middleware, which is not installed" in message
            assert "KeyGuardExtension(app)" in message and "API key is required" not in message


def test_current_key_on_a_public_path_is_401_not_a_configuration_error() -> None:
    app = make_app({"store": "memory://", "public_paths": ["/health*"]}, False)[0]
    r = app.test_client().get("/health/me", headers={"Authorization": "Bearer kg_x"})
    assert r.status_code == 401 and r.json is not None
    assert r.json["code"] == "missing_credentials" and "public" in r.json["detail"]


def test_middleware_twice_is_refused() -> None:
    from keyguard.wsgi import KeyGuardMiddleware

    app = Flask(__name__)
    app.config["KEYGUARD"] = {"store": "memory://"}
    ext = KeyGuardExtension(app)
    with pytest.raises(ConfigurationError) as info:
        app.wsgi_app = KeyGuardMiddleware(app.wsgi_app, guard=ext.guard)  # type: ignore[method-assign]
    assert "installed twice" in str(info.value)
    with pytest.raises(ConfigurationError):
        KeyGuardExtension(app)  # a second extension on the same app

"""SPEC public names exist as written; __all__ sorted; py.typed shipped."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

import keyguard

ROOT = Path(__file__).resolve().parent.parent

SPEC_ROOT_NAMES = [
    "AuthenticationError",
    "AuthorizationError",
    "ConfigurationError",
    "IssuedKey",
    "KeyGuard",
    "KeyGuardError",
    "KeyInfo",
    "KeyLimitExceeded",
    "KeyNotFound",
    "StoreError",
]


def test_all_sorted_and_exported() -> None:
    assert keyguard.__all__ == sorted(keyguard.__all__)
    assert len(set(keyguard.__all__)) == len(keyguard.__all__)
    for name in keyguard.__all__:
        assert hasattr(keyguard, name), name


@pytest.mark.parametrize("name", SPEC_ROOT_NAMES)
def test_spec_names_at_the_root(name: str) -> None:
    assert name in keyguard.__all__
    assert getattr(keyguard, name) is not None


@pytest.mark.parametrize(
    ("module", "names"),
    [
        pytest.param("keyguard.asgi", ["KeyGuardMiddleware"], id="asgi"),
        pytest.param("keyguard.wsgi", ["KeyGuardMiddleware"], id="wsgi"),
        pytest.param("keyguard.fastapi", ["current_key", "require_scopes"], id="fastapi"),
        pytest.param(
            "keyguard.flask", ["KeyGuardExtension", "current_key", "require_scopes"], id="flask"
        ),
    ],
)
def test_door_modules(module: str, names: list[str]) -> None:
    mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"
    if hasattr(mod, "__all__"):
        assert mod.__all__ == sorted(mod.__all__)


def test_error_tree() -> None:
    k = keyguard
    for name in (
        "ConfigurationError",
        "StoreError",
        "KeyNotFound",
        "KeyLimitExceeded",
        "AuthenticationError",
        "AuthorizationError",
    ):
        assert issubclass(getattr(k, name), k.KeyGuardError), name
    assert issubclass(k.ConfigurationError, ValueError)
    assert k.AuthenticationError.status_code == 401 and k.AuthorizationError.status_code == 403
    assert k.AuthenticationError("expired_key").code == "expired_key"


def test_keyguard_signature() -> None:
    sig = inspect.signature(keyguard.KeyGuard)
    assert list(sig.parameters)[0] == "settings"
    assert sig.parameters["settings"].default is None
    verify = inspect.signature(keyguard.KeyGuard.verify)
    for name in ("client_ip", "scopes"):
        assert verify.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.iscoroutinefunction(keyguard.KeyGuard.averify)


def test_key_fields() -> None:
    fields = set(keyguard.KeyInfo.__dataclass_fields__)
    assert {
        "id",
        "owner",
        "name",
        "scopes",
        "allowed_ips",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "kind",
        "has_passphrase",
        "rate_limit",
        "metadata",
        "hint",
    } <= fields
    assert {"info", "token", "secret"} <= set(keyguard.IssuedKey.__dataclass_fields__)


def test_key_manager_methods() -> None:
    g = keyguard.KeyGuard({"store": "memory://"})
    for name in ("create", "get", "list", "update", "revoke", "delete", "rotate"):
        assert callable(getattr(g.keys, name))
        assert inspect.iscoroutinefunction(getattr(g.keys, "a" + name))
    create = inspect.signature(g.keys.create).parameters
    for name in (
        "owner",
        "name",
        "scopes",
        "allowed_ips",
        "expires_at",
        "expires_in",
        "kind",
        "passphrase",
        "rate_limit",
        "max_uses",
        "metadata",
    ):
        assert name in create, name


def test_py_typed_shipped() -> None:
    assert (Path(keyguard.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["keyguard"]
    assert pyproject["project"]["requires-python"] == ">=3.11"

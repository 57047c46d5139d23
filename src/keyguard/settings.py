"""The settings dict (SPEC section 2) -> validated, frozen `Settings`.

Owns validation only: every bad value becomes a `ConfigurationError` naming the
dotted key. Nested sections may be given nested (`{"policy": {...}}`) or dotted
(`{"policy.max_keys_per_owner": 5}`). Error messages never echo a value, since
some settings (pepper, master keys) are secrets.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .exceptions import ConfigurationError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RATE = re.compile(
    r"^\s*[1-9]\d*\s*(/|per)\s*([1-9]\d*\s*)?(second|minute|hour|day|month|year)s?\s*$"
)
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Rule(_Section):
    """Scopes a route needs: `path` glob (`*` matches anything), optional methods."""

    path: str
    methods: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        methods = tuple(m.upper() for m in value)
        unknown = [m for m in methods if m not in _METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method {unknown[0][:20]!r}")
        return methods

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class Policy(_Section):
    max_keys_per_owner: PositiveInt | None = 20
    unrestricted_max_days: PositiveInt | None = 90
    allow_private_ips: bool = False


class Signing(_Section):
    """Signed requests (SPEC section 6); the profiles themselves are `keyguard.signing.PROFILES`."""

    profile: Literal["kg", "bitget", "okx", "bybit", "rfc9421"] = "kg"
    # single header names replaced; `recv_window` is bybit's, rfc9421 takes only `passphrase`
    headers: dict[Literal["key", "timestamp", "signature", "passphrase", "recv_window"], str] = {}
    max_skew_seconds: PositiveInt = 30
    max_body_bytes: PositiveInt = 1_048_576
    master_keys: tuple[str, ...] = ()
    replay_prefix: str = "keyguard:replay:"


class Abuse(_Section):
    max_failures: str | None = "30/minute"

    @field_validator("max_failures")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return _check_rate(value)


def _check_rate(value: str | None) -> str | None:
    if value is not None and not all(_RATE.match(part) for part in value.split(";")):
        raise ValueError("must look like '100/minute' or '10/second;1000/hour'")
    return value


class Settings(_Section):
    store: str = "sqlite:///keyguard.db"
    cache: str | None = "memory://"
    cache_ttl: PositiveNumber = 60
    local_cache_ttl: PositiveNumber = 5
    local_cache_size: PositiveInt = 10_000
    pepper: str | None = None
    hashing: Literal["hmac-sha256", "argon2id"] = "hmac-sha256"
    token_prefix: str = "kg"
    header: str = "X-API-Key"
    public_paths: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    scope_implies: dict[str, tuple[str, ...]] = {}
    trusted_proxies: tuple[IPNetwork, ...] = ()
    policy: Policy = Policy()
    signing: Signing = Signing()
    rate_limit: str | None = None
    abuse: Abuse = Abuse()

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if scheme not in {"memory", "sqlite", "postgresql", "postgres", "redis", "rediss"}:
            raise ValueError("must be a memory://, sqlite:///, postgresql:// or redis:// URL")
        if scheme == "sqlite" and value.removeprefix("sqlite://").strip("/") == "":
            raise ValueError("a sqlite URL needs a path, as in sqlite:///keyguard.db")
        return value

    @field_validator("cache")
    @classmethod
    def _cache(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in {"memory", "redis", "rediss"}:
            raise ValueError("must be memory://, a redis:// URL or None")
        return value

    @field_validator("pepper")
    @classmethod
    def _pepper(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("token_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,15}", value):
            raise ValueError("must be 1-16 letters and digits, starting with a letter")
        return value

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value) or value.lower() == "authorization":
            raise ValueError("must be a header name (letters, digits, '-'), not Authorization")
        return value

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError("every path must start with '/'")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError("must be a list of CIDRs")
        try:
            return tuple(ipaddress.ip_network(str(v), strict=False) for v in value)
        except ValueError:
            raise ValueError("every entry must be an IP address or CIDR") from None

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return _check_rate(value)


def split_redis_url(url: str) -> tuple[str, str]:
    """A redis:// URL without keyguard's own `prefix` query option, and that prefix
    ("" when absent). Every Redis user in keyguard (store, cache, replay cache,
    rate limits) puts its keys under it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = "".join(v for k, v in query if k == "prefix")
    clean = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=clean)), prefix


def _nest(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Fold dotted keys (`policy.max_keys_per_owner`) into nested sections."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"settings keys must be strings, got {type(key).__name__}")
        head, dot, rest = key.partition(".")
        if dot:
            section = out.setdefault(head, {})
            if not isinstance(section, dict):
                raise ConfigurationError(f"{head}: given both as a value and as a section")
            section[rest] = value
        elif isinstance(value, Mapping) and head in {"policy", "signing", "abuse"}:
            out.setdefault(head, {}).update(value)
        else:
            out[key] = value
    return out


def _from_env(data: dict[str, Any]) -> None:
    if data.get("pepper") is None and os.environ.get("KEYGUARD_PEPPER"):
        data["pepper"] = os.environ["KEYGUARD_PEPPER"]
    signing = data.setdefault("signing", {})
    if isinstance(signing, dict) and "master_keys" not in signing:
        env = os.environ.get("KEYGUARD_MASTER_KEYS", "")
        signing["master_keys"] = [k.strip() for k in env.split(",") if k.strip()]


def _listish_to_tuple(value: Any) -> Any:
    # Strict mode refuses lists for tuple fields; users write lists in dicts/TOML.
    if isinstance(value, list):
        return tuple(_listish_to_tuple(v) for v in value)
    if isinstance(value, dict):
        return {k: _listish_to_tuple(v) for k, v in value.items()}
    return value


def load_settings(raw: Mapping[str, Any] | None) -> Settings:
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigurationError("settings must be a mapping (a dict)")
    data = _nest(raw or {})
    configures_signing = "signing" in data
    _from_env(data)
    try:
        settings = Settings.model_validate(_listish_to_tuple(data))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        why = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigurationError(f"{where}: {why}") from None
    if configures_signing and not settings.signing.master_keys:
        # Caught now, not on the first signed request (which no key could ever pass).
        raise ConfigurationError(
            "signing.master_keys: required when the settings configure signing (set it or "
            "KEYGUARD_MASTER_KEYS; make one with: python -c "
            "'import keyguard.crypto as c; print(c.generate_master_key())')"
        )
    return settings

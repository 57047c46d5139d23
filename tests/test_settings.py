"""SPEC section 2: every setting accepted with good values; bad ones named."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

import keyguard
from keyguard import ConfigurationError, KeyGuard
from keyguard.settings import load_settings

PEPPER = "pepper-that-is-secret-0123456789"

GOOD = [
    pytest.param("store", "memory://", id="store-memory"),
    pytest.param("store", "sqlite:////tmp/x.db", id="store-sqlite"),
    pytest.param("store", "postgresql://u@h/db", id="store-postgresql"),
    pytest.param("store", "redis://localhost:6379/0", id="store-redis"),
    pytest.param("cache", "memory://", id="cache-memory"),
    pytest.param("cache", "redis://localhost:6379/0", id="cache-redis"),
    pytest.param("cache", None, id="cache-none"),
    pytest.param("cache_ttl", 30, id="cache_ttl-int"),
    pytest.param("cache_ttl", 2.5, id="cache_ttl-float"),
    pytest.param("local_cache_ttl", 1, id="local_cache_ttl"),
    pytest.param("local_cache_size", 100, id="local_cache_size"),
    pytest.param("pepper", PEPPER, id="pepper"),
    pytest.param("hashing", "hmac-sha256", id="hashing-hmac"),
    pytest.param("hashing", "argon2id", id="hashing-argon2id"),
    pytest.param("token_prefix", "acme2", id="token_prefix"),
    pytest.param("header", "X-Service-Key", id="header"),
    pytest.param("public_paths", ["/health", "/docs*"], id="public_paths"),
    pytest.param(
        "rules", [{"path": "/v1/chat/*", "methods": ["post"], "scopes": ["inference"]}], id="rules"
    ),
    pytest.param("scope_implies", {"write": ["read"]}, id="scope_implies"),
    pytest.param("trusted_proxies", ["10.0.0.0/8", "::1", "192.0.2.7"], id="trusted_proxies"),
    pytest.param("policy.max_keys_per_owner", 5, id="policy.max_keys_per_owner"),
    pytest.param("policy.max_keys_per_owner", None, id="policy.max_keys_per_owner-none"),
    pytest.param("policy.unrestricted_max_days", 30, id="policy.unrestricted_max_days"),
    pytest.param("policy.unrestricted_max_days", None, id="policy.unrestricted_max_days-none"),
    pytest.param("policy.allow_private_ips", True, id="policy.allow_private_ips"),
    pytest.param("signing.profile", "okx", id="signing.profile"),
    pytest.param("signing.headers", {"key": "X-Access"}, id="signing.headers"),
    pytest.param("signing.max_skew_seconds", 60, id="signing.max_skew_seconds"),
    pytest.param("signing.max_body_bytes", 4096, id="signing.max_body_bytes"),
    pytest.param("signing.master_keys", ["A" * 43], id="signing.master_keys"),
    pytest.param("rate_limit", "100/minute", id="rate_limit"),
    pytest.param("rate_limit", "10/second;1000/hour", id="rate_limit-multi"),
    pytest.param("abuse.max_failures", "5/minute", id="abuse.max_failures"),
    pytest.param("abuse.max_failures", None, id="abuse.max_failures-none"),
]


def _get(settings: object, dotted: str) -> object:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def _nested(dotted: str, value: object) -> dict[str, object]:
    head, _, rest = dotted.partition(".")
    return {head: {rest: value}} if rest else {head: value}


@pytest.mark.parametrize(("key", "value"), GOOD)
@pytest.mark.parametrize("form", ["dotted", "nested"])
def test_every_setting_accepted(
    key: str, value: object, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if key.startswith("signing."):  # settings that configure signing need a master key
        monkeypatch.setenv("KEYGUARD_MASTER_KEYS", "A" * 43)
    raw = {key: value} if form == "dotted" else _nested(key, value)
    s = load_settings(raw)
    got = _get(s, key)
    if isinstance(value, list) and key == "trusted_proxies":
        assert got == tuple(ipaddress.ip_network(v) for v in value)
    elif isinstance(value, list):
        assert len(got) == len(value)  # type: ignore[arg-type]
    elif key == "scope_implies":
        assert got == {"write": ("read",)}
    elif key == "signing.headers":
        assert got == value
    else:
        assert got == value


def test_defaults_match_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, environ={})
    assert s.store == f"sqlite:///{tmp_path / 'keyguard.db'}"  # keyguard.db here, made absolute
    assert s.cache == "memory://"
    assert (s.cache_ttl, s.local_cache_ttl, s.local_cache_size) == (60, 5, 10_000)
    assert s.hashing == "hmac-sha256" and s.token_prefix == "kg" and s.header == "X-API-Key"
    assert (
        s.public_paths == () and s.rules == () and s.scope_implies == {} and s.trusted_proxies == ()
    )
    assert s.policy.max_keys_per_owner == 20 and s.policy.unrestricted_max_days == 90
    assert s.policy.allow_private_ips is False
    assert s.signing.profile == "kg" and s.signing.max_skew_seconds == 30
    assert s.signing.max_body_bytes == 1_048_576
    assert s.rate_limit is None and s.abuse.max_failures == "30/minute"


def test_rule_methods_upper_cased() -> None:
    s = load_settings({"rules": [{"path": "/x", "methods": ["get", "Post"]}]})
    assert s.rules[0].methods == ("GET", "POST")


def test_settings_frozen() -> None:
    s = load_settings({"store": "memory://"})
    with pytest.raises(Exception):  # pydantic's frozen-instance error
        s.store = "x"  # type: ignore[misc]


BAD = [
    pytest.param({"stroe": "memory://"}, "stroe", id="unknown-top"),
    pytest.param({"policy": {"max_keys": 3}}, "policy.max_keys", id="unknown-nested"),
    pytest.param({"policy.max_keys": 3}, "policy.max_keys", id="unknown-dotted"),
    pytest.param({"signing": {"colour": 1}}, "signing.colour", id="unknown-signing"),
    pytest.param({"store": 5}, "store", id="store-type"),
    pytest.param({"store": "mysql://x"}, "store", id="store-scheme"),
    pytest.param({"cache": "sqlite:///x"}, "cache", id="cache-scheme"),
    pytest.param({"cache_ttl": "60"}, "cache_ttl", id="cache_ttl-str"),
    pytest.param({"cache_ttl": 0}, "cache_ttl", id="cache_ttl-zero"),
    pytest.param({"local_cache_ttl": -1}, "local_cache_ttl", id="local_cache_ttl-negative"),
    pytest.param({"local_cache_size": 1.5}, "local_cache_size", id="local_cache_size-float"),
    pytest.param({"local_cache_size": True}, "local_cache_size", id="local_cache_size-bool"),
    pytest.param({"pepper": 12345678901234567890}, "pepper", id="pepper-type"),
    pytest.param({"hashing": "md5"}, "hashing", id="hashing"),
    pytest.param({"token_prefix": "k_g"}, "token_prefix", id="token_prefix-underscore"),
    pytest.param({"token_prefix": ""}, "token_prefix", id="token_prefix-empty"),
    pytest.param({"header": "Authorization"}, "header", id="header-authorization"),
    pytest.param({"header": "X Key"}, "header", id="header-space"),
    pytest.param({"public_paths": "/health"}, "public_paths", id="public_paths-str"),
    pytest.param({"public_paths": ["health"]}, "public_paths", id="public_paths-relative"),
    pytest.param({"rules": [{"path": "x"}]}, "rules.0.path", id="rules-path"),
    pytest.param(
        {"rules": [{"path": "/x", "scopes": "read"}]}, "rules.0.scopes", id="rules-scopes-str"
    ),
    pytest.param(
        {"rules": [{"path": "/x", "verbs": ["GET"]}]}, "rules.0.verbs", id="rules-unknown"
    ),
    pytest.param(
        {"scope_implies": {"write": "read"}}, "scope_implies.write", id="scope_implies-str"
    ),
    pytest.param({"trusted_proxies": "10.0.0.0/8"}, "trusted_proxies", id="trusted_proxies-str"),
    pytest.param({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies", id="trusted_proxies-bad"),
    pytest.param({"policy.max_keys_per_owner": 0}, "policy.max_keys_per_owner", id="max_keys-zero"),
    pytest.param(
        {"policy.max_keys_per_owner": "20"}, "policy.max_keys_per_owner", id="max_keys-str"
    ),
    pytest.param(
        {"policy.unrestricted_max_days": -1}, "policy.unrestricted_max_days", id="max_days-neg"
    ),
    pytest.param(
        {"policy.allow_private_ips": "yes"}, "policy.allow_private_ips", id="allow_private-str"
    ),
    pytest.param({"policy": 5}, "policy", id="policy-not-dict"),
    pytest.param({"signing.profile": "aws"}, "signing.profile", id="signing.profile"),
    pytest.param({"signing.headers": {"nonce": "X"}}, "signing.headers", id="signing.headers-key"),
    pytest.param({"signing.max_skew_seconds": 0}, "signing.max_skew_seconds", id="max_skew-zero"),
    pytest.param({"signing.max_body_bytes": "1MB"}, "signing.max_body_bytes", id="max_body-str"),
    pytest.param({"signing.master_keys": "abc"}, "signing.master_keys", id="master_keys-str"),
    pytest.param({"rate_limit": "lots"}, "rate_limit", id="rate_limit"),
    pytest.param({"rate_limit": 100}, "rate_limit", id="rate_limit-int"),
    pytest.param({"abuse.max_failures": "30 per fortnight"}, "abuse.max_failures", id="abuse"),
    pytest.param({"rate_limit": "100/0 minute"}, "rate_limit", id="rate_limit-zero-window"),
    pytest.param({"rate_limit": "0/minute"}, "rate_limit", id="rate_limit-zero-amount"),
    pytest.param({"rules": [{"path": "/v1", "methods": ["FOO"]}]}, "rules.0.methods", id="method"),
    pytest.param({"local_cache_ttl": float("inf")}, "local_cache_ttl", id="ttl-inf"),
    pytest.param({"cache_ttl": float("nan")}, "cache_ttl", id="ttl-nan"),
    pytest.param({"store": "sqlite:///"}, "store", id="sqlite-no-path"),
]


@pytest.mark.parametrize(("raw", "named"), BAD)
def test_bad_settings_named(raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeyGuard(raw)
    message = str(info.value)
    assert message.startswith(named) and message[len(named)] in ":.", message
    assert isinstance(info.value, ValueError)


def test_settings_must_be_a_mapping() -> None:
    with pytest.raises(ConfigurationError):
        KeyGuard(["store", "memory://"])  # type: ignore[arg-type]


def test_non_string_key_refused() -> None:
    with pytest.raises(ConfigurationError):
        load_settings({1: "x"})  # type: ignore[dict-item]


SECRETS = [
    pytest.param({"pepper": "short-secret"}, "short-secret", id="pepper-too-short"),
    pytest.param({"pepper": ["hunter2-hunter2-hunter2"]}, "hunter2", id="pepper-wrong-type"),
    pytest.param(
        {"signing.master_keys": "topsecret-master-key"}, "topsecret", id="master_keys-str"
    ),
    pytest.param(
        {"signing.master_keys": [b"topsecret-master-key"]}, "topsecret", id="master_keys-bytes"
    ),
]


@pytest.mark.parametrize(("raw", "secret"), SECRETS)
def test_secrets_never_echoed(raw: dict[str, object], secret: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(raw)
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert info.value.__cause__ is None  # pydantic's error (which holds the input) is not chained
    assert info.value.__suppress_context__


def test_pepper_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_PEPPER", PEPPER)
    assert load_settings({}).pepper == PEPPER
    assert load_settings({"pepper": "x" * 20}).pepper == "x" * 20


def test_master_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", "aaa, bbb,")
    assert load_settings({}).signing.master_keys == ("aaa", "bbb")


# --- one settings source: the KEYGUARD_* environment, under the dict (SPEC section 1) ----

ENV = [
    pytest.param("KEYGUARD_STORE", "memory://", "store", "memory://", id="str"),
    pytest.param("KEYGUARD_CACHE", "none", "cache", None, id="none"),
    pytest.param("KEYGUARD_CACHE", "NULL", "cache", None, id="null"),
    pytest.param("KEYGUARD_CACHE_TTL", "2.5", "cache_ttl", 2.5, id="float"),
    pytest.param("KEYGUARD_LOCAL_CACHE_SIZE", "50", "local_cache_size", 50, id="int"),
    pytest.param("KEYGUARD_TOKEN_PREFIX", "acme2", "token_prefix", "acme2", id="str-digits"),
    pytest.param(
        "KEYGUARD_POLICY__MAX_KEYS_PER_OWNER", "5", "policy.max_keys_per_owner", 5, id="nested-int"
    ),
    pytest.param(
        "KEYGUARD_POLICY__MAX_KEYS_PER_OWNER",
        "none",
        "policy.max_keys_per_owner",
        None,
        id="nested-none",
    ),  # fmt: skip
    *[
        pytest.param(
            "KEYGUARD_POLICY__ALLOW_PRIVATE_IPS", text, "policy.allow_private_ips", flag, id=text
        )
        for text, flag in [
            ("1", True),
            ("true", True),
            ("YES", True),
            ("on", True),
            ("0", False),
            ("false", False),
            ("no", False),
            ("off", False),
        ]
    ],  # fmt: skip
    pytest.param(
        "KEYGUARD_PUBLIC_PATHS", "/health, /docs*", "public_paths", ("/health", "/docs*"), id="csv"
    ),
    pytest.param(
        "KEYGUARD_PUBLIC_PATHS", '["/a", "/b"]', "public_paths", ("/a", "/b"), id="json-list"
    ),
    pytest.param(
        "KEYGUARD_SCOPE_IMPLIES",
        '{"write": ["read"]}',
        "scope_implies",
        {"write": ("read",)},
        id="json-dict",
    ),  # fmt: skip
    pytest.param(
        "KEYGUARD_RULES",
        '[{"path": "/v1/*", "scopes": ["read"]}]',
        "rules",
        ({"path": "/v1/*", "methods": (), "scopes": ("read",)},),
        id="json-rules",
    ),
    pytest.param(
        "KEYGUARD_POLICY",
        '{"unrestricted_max_days": 7}',
        "policy.unrestricted_max_days",
        7,
        id="json-section",
    ),  # fmt: skip
    pytest.param("KEYGUARD_ABUSE__MAX_FAILURES", "none", "abuse.max_failures", None, id="abuse"),
    pytest.param("KEYGUARD_RATE_LIMIT", "10/second", "rate_limit", "10/second", id="rate"),
]


@pytest.mark.parametrize(("name", "text", "key", "want"), ENV)
def test_environment_is_read_by_type(name: str, text: str, key: str, want: object) -> None:
    got = _get(load_settings({}, environ={name: text}), key)
    if key == "rules":
        got = tuple(r.model_dump() for r in got)  # type: ignore[attr-defined]
    assert got == want


def test_keyguard_reads_the_environment_and_the_dict_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_STORE", "memory://")
    monkeypatch.setenv("KEYGUARD_POLICY__MAX_KEYS_PER_OWNER", "1")
    monkeypatch.setenv("KEYGUARD_POLICY__UNRESTRICTED_MAX_DAYS", "3")
    guard = KeyGuard({"policy": {"unrestricted_max_days": 30}})  # the dict names one key
    try:
        assert guard.settings.store == "memory://"
        assert guard.settings.policy.max_keys_per_owner == 1  # from the environment
        assert guard.settings.policy.unrestricted_max_days == 30  # the dict wins
        guard.keys.create(owner="o", name="first")
        with pytest.raises(keyguard.KeyLimitExceeded):
            guard.keys.create(owner="o", name="second")
    finally:
        guard.close()
    environ = {"KEYGUARD_POLICY__MAX_KEYS_PER_OWNER": "1"}
    environ["KEYGUARD_POLICY__ALLOW_PRIVATE_IPS"] = "1"
    dotted = load_settings({"policy.max_keys_per_owner": 9}, environ=environ)
    assert dotted.policy.max_keys_per_owner == 9 and dotted.policy.allow_private_ips is True


ENV_ERRORS = [  # (variable, text, the whole message)
    ("KEYGUARD_CACHE_TTL", "soon", "cache_ttl (from KEYGUARD_CACHE_TTL): must be a number"),
    (
        "KEYGUARD_POLICY__ALLOW_PRIVATE_IPS",
        "maybe",
        "policy.allow_private_ips (from KEYGUARD_POLICY__ALLOW_PRIVATE_IPS): must be true or false",
    ),
    ("KEYGUARD_RULES", "[{", "KEYGUARD_RULES: not valid JSON"),
    (
        "KEYGUARD_POLICY__MAX_KEYS",
        "3",
        "policy.max_keys (from KEYGUARD_POLICY__MAX_KEYS): unknown setting "
        "(did you mean 'max_keys_per_owner'?)",
    ),
    (
        "KEYGUARD_HASHING",
        "md5",
        "hashing (from KEYGUARD_HASHING): must be one of 'hmac-sha256' or 'argon2id'",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), ENV_ERRORS, ids=[e[0] for e in ENV_ERRORS])
def test_environment_errors_name_the_variable(name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({}, environ={name: text})
    assert str(info.value) == message


PLAIN = [
    ({"public_paths": "/x"}, "public_paths: must be a list"),
    (
        {"trusted_proxies": "10.0.0.0/8"},
        "trusted_proxies: must be a list of CIDRs (and 'unix' for a unix-socket peer)",
    ),
    ({"store": 5}, "store: must be a string"),
    ({"local_cache_size": 1.5}, "local_cache_size: must be a whole number"),
    ({"policy.max_keys_per_owner": 0}, "policy.max_keys_per_owner: must be greater than 0"),
    ({"policy": 5}, "policy: must be a mapping (a section of settings)"),
    ({"stroe": "memory://"}, "stroe: unknown setting (did you mean 'store'?)"),
    ({"nonsense": 1}, "nonsense: unknown setting"),
    (
        {"rules": [{"path": "/v1/*", "scope": ["read"]}]},
        "rules.0.scope: unknown setting (did you mean 'scopes'?)",
    ),
    (
        {"rules": [{"path": "/a"}, {"path": "/b", "method": ["GET"]}]},
        "rules.1.method: unknown setting (did you mean 'methods'?)",
    ),
    ({"rules": [{"path": "/a", "nonsense": 1}]}, "rules.0.nonsense: unknown setting"),
    (
        {"policy": {"max_key_per_owner": 1}},
        "policy.max_key_per_owner: unknown setting (did you mean 'max_keys_per_owner'?)",
    ),  # fmt: skip
    ({"signing": {"profil": "kg"}}, "signing.profil: unknown setting (did you mean 'profile'?)"),
    (
        {"store": "mysql://db/keys"},
        "store: must be a memory://, sqlite:///, postgresql://, redis://, rediss:// or "
        "redis+sentinel:// URL",
    ),
]


@pytest.mark.parametrize(("raw", "message"), PLAIN, ids=[m.split(":")[0] for _, m in PLAIN])
def test_errors_in_plain_words(raw: dict[str, object], message: str) -> None:
    """Not pydantic's wording ("Value error, ...", "Input should be a valid tuple")."""
    with pytest.raises(ConfigurationError) as info:
        load_settings(raw, environ={})
    assert str(info.value) == message


def test_unrelated_and_misspelt_environment(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "KEYGUARD_REQUIRE_SERVERS": "1",  # the test suite's own: no setting, not a near miss
        "KEYGUARD_PUBLIC_PATH": "/x",  # a near miss: warned about, ignored
        "KEYGUARD_STORE": "",  # empty in a shell means unset
        "OTHER": "x",
    }
    with caplog.at_level(logging.WARNING, logger="keyguard"):
        s = load_settings({}, environ=environ)
    assert s.public_paths == () and s.store.endswith("/keyguard.db")
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "KEYGUARD_PUBLIC_PATH is not a keyguard setting "
        "(did you mean KEYGUARD_PUBLIC_PATHS?); ignored"
    ]


@pytest.mark.parametrize(
    ("url", "want"),
    [
        pytest.param("sqlite:///keys.db", "sqlite:///{cwd}/keys.db", id="relative"),
        pytest.param("sqlite:///data/keys.db", "sqlite:///{cwd}/data/keys.db", id="relative-dir"),
        pytest.param("sqlite://keys.db", "sqlite:///{cwd}/keys.db", id="two-slashes"),
        pytest.param("sqlite:////srv/keys.db", "sqlite:////srv/keys.db", id="absolute"),
        pytest.param("sqlite:///:memory:", "sqlite:///:memory:", id="memory"),
        pytest.param("memory://", "memory://", id="not-sqlite"),
    ],
)
def test_relative_sqlite_paths_are_resolved_once(
    url: str, want: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    guard = KeyGuard({"store": url, "cache": None})
    try:
        assert guard.settings.store == want.format(cwd=tmp_path)
        if url.startswith("sqlite:///keys"):
            issued = guard.keys.create(owner="o", name="n")
            monkeypatch.chdir(Path(tmp_path).parent)  # a later chdir opens no other file
            assert guard.keys.get(issued.id).name == "n"
            assert (tmp_path / "keys.db").is_file()
    finally:
        guard.close()


def test_start_up_logs_store_and_cache_with_passwords_masked(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="keyguard"):
        KeyGuard({}).close()
        KeyGuard(
            {
                "store": "postgresql://app:hunter2pw@db.internal:5432/keys?password=qs-secret",
                "cache": "redis://:s3cr3t-pw@cache.internal:6379/0?prefix=kg:",
            }
        ).close()
        KeyGuard({"store": "memory://", "cache": None}).close()
    lines = [r.getMessage() for r in caplog.records if r.name == "keyguard"]
    assert lines == [
        f"configured store sqlite:///{tmp_path}/keyguard.db (file {tmp_path}/keyguard.db),"
        " cache memory:// (this process only)",
        "configured store postgresql://app:****@db.internal:5432/keys?password=****,"
        " cache redis://:****@cache.internal:6379/0?prefix=kg:",
        "configured store memory://, no cache",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "keyguard")


@pytest.mark.parametrize(
    "password", ["123/SECRET", "p@Zq9SECRET", "a?Zq9SECRET", "a#Zq9SECRET", "p%zzSECRET1"]
)
@pytest.mark.parametrize("where", ["store", "cache"])
def test_a_url_password_that_parsers_read_differently_is_refused_unquoted(
    where: str, password: str
) -> None:
    """An unencoded '@ / ? #' (or a stray '%') in a URL's password: urlsplit reads
    the user info to the last '@', libpq to the first, so a message built from one
    reading would quote part of the password. Refused at start-up, never quoted."""
    scheme = "postgresql" if where == "store" else "redis"
    url = f"{scheme}://app:{password}@db.internal:5432/keys"
    with pytest.raises(ConfigurationError) as info:
        KeyGuard({where: url, **({"store": "memory://"} if where == "cache" else {})})
    message = str(info.value)
    assert message.startswith(where) and "percent-encode" in message
    assert "SECRET" not in message and password not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:123/SECRET@h/db", "postgresql://app:****@h/db"),
        ("postgresql://app:p@Zq9SECRET@h:5432/db", "postgresql://app:****@h:5432/db"),
        ("redis://:pw@h:6379/0?prefix=kg:", "redis://:****@h:6379/0?prefix=kg:"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("postgresql://app@h/db?sslpassword=x&a=1", "postgresql://app@h/db?sslpassword=****&a=1"),
    ],
)
def test_mask_url_masks_the_password_however_it_is_spelt(url: str, shown: str) -> None:
    from keyguard.settings import mask_url, url_secrets

    assert mask_url(url) == shown
    for secret in ("SECRET", "Zq9SECRET", "pw"):
        assert secret not in mask_url(url)
    assert all(s in url for s in url_secrets(url))


def test_a_postgresql_store_built_directly_never_quotes_its_password() -> None:
    """The settings refuse such a URL; a store built by hand refuses it the same way."""
    pytest.importorskip("psycopg_pool")
    from keyguard.stores.postgresql import PostgreSQLStore

    for url in (
        "postgresql://postgres:p@Zq9SECRET@127.0.0.1:5432/db",
        "postgresql://postgres:Zq9/SECRET@127.0.0.1:5432/db",
    ):
        with pytest.raises(ConfigurationError) as info:
            PostgreSQLStore(url)
        assert str(info.value).startswith("store:") and "SECRET" not in str(info.value)


def test_the_pool_log_of_keyguards_pool_is_scrubbed_of_its_passwords() -> None:
    """psycopg_pool's own warnings about keyguard's pool (once a minute each) carry no
    password of a keyguard store, even where the driver quotes one."""
    pytest.importorskip("psycopg_pool")
    from keyguard.stores import postgresql

    store = postgresql.PostgreSQLStore("postgresql://app:Zq9SECRETpw@127.0.0.1:5432/db")
    record = logging.LogRecord(
        "psycopg.pool",
        logging.WARNING,
        "pool.py",
        1,
        "error connecting in %r: %s",
        ("keyguard", "password=Zq9SECRETpw rejected Zq9SECRETpw"),
        None,
    )
    assert postgresql._OncePerMinute().filter(record)
    assert "Zq9SECRETpw" not in record.getMessage() and "keyguard" in record.getMessage()
    store.close()


@pytest.mark.parametrize(
    ("setting", "url", "shown"),
    [
        ("store", "postgresql://127.0.0.1:5432/test?user=alice@example.com", None),
        (
            "store",
            "postgresql://kg:pw@db.internal:5432/test?application_name=billing@eu",
            "postgresql://kg:****@db.internal:5432/test?application_name=billing@eu",
        ),
        ("cache", "redis://127.0.0.1:6379/0?client_name=worker@host1", None),
    ],
)
def test_an_at_sign_in_the_query_is_no_user_info(setting: str, url: str, shown: str) -> None:
    """An "@" after the authority (Azure's user=name@server, an application name) is
    no password: accepted, and the URL shown with its host as it is."""
    from keyguard.settings import mask_url

    extra = {"cache": None} if setting == "store" else {"store": "memory://"}
    assert getattr(load_settings({setting: url, **extra}), setting) == url
    assert mask_url(url) == (shown or url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db.internal/test?password=Hunter2#TopSecretTail",
        "postgresql://u@db.internal/test?password=Hunter2&TopSecretTail",
        "redis+sentinel://s1:26379/main?sentinel_password=Hunter2&TopSecretTail",
    ],
)
def test_a_query_password_with_a_raw_separator_is_refused_unquoted(url: str) -> None:
    where = "cache" if url.startswith("redis") else "store"
    with pytest.raises(ConfigurationError) as info:
        KeyGuard({where: url, **({"store": "memory://"} if where == "cache" else {})})
    assert str(info.value).startswith(where) and "TopSecretTail" not in str(info.value)
    assert "Hunter2" not in str(info.value)

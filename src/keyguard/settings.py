"""The settings dict (SPEC section 2) -> validated, frozen `Settings`.

Owns validation and where settings come from: the dict, and under it the
`KEYGUARD_*` environment (`KEYGUARD_STORE`, `KEYGUARD_POLICY__MAX_KEYS_PER_OWNER`;
a key in the dict wins), read the same way for `KeyGuard()`, the CLI and
Flask's flat `app.config` keys. Every bad value becomes a `ConfigurationError`
naming the dotted key (and the variable it came from) in plain words. Nested
sections may be given nested (`{"policy": {...}}`) or dotted
(`{"policy.max_keys_per_owner": 5}`). Error messages never echo a value, since
some settings (pepper, master keys) are secrets. Must not open anything: the
store and cache are opened by `KeyGuard`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .exceptions import ConfigurationError
from .redis import parse_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Bounded numbers: at most 10**9 requests a window of at most 9999 of a unit (a window
# of 10**400 seconds overflows, one of 10**20 is refused by Redis's PEXPIRE).
_RATE = re.compile(
    r"^\s*[1-9][0-9]{0,8}\s*(/|per)\s*([1-9][0-9]{0,3}\s*)?"
    r"(second|minute|hour|day|month|year)s?\s*$"
)
MAX_RATE_PARTS = 8
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
    master_keys: tuple[str, ...] = Field(default=(), repr=False)  # secrets: never shown


class Abuse(_Section):
    max_failures: str | None = "30/minute"

    @field_validator("max_failures")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return _check_rate(value)


def _check_rate(value: str | None) -> str | None:
    if value is not None and (
        not isinstance(value, str)
        or len(value) > 200
        or value.count(";") >= MAX_RATE_PARTS
        or not all(_RATE.match(part) for part in value.split(";"))
    ):
        raise ValueError(
            "must look like '100/minute' or '10/second;1000/hour' (at most 10**9 a window, "
            f"windows of at most 9999 units, {MAX_RATE_PARTS} windows)"
        )
    return value


class Settings(_Section):
    """The validated settings. `repr` shows no secret: no pepper, no master key, and
    the store and cache URLs with their passwords masked."""

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("store", "cache") and isinstance(value, str):
                value = mask_url(value)
            yield name, value

    store: str = "sqlite:///keyguard.db"
    cache: str | None = "memory://"
    cache_ttl: PositiveNumber = 60
    local_cache_ttl: PositiveNumber = 5
    local_cache_size: PositiveInt = 10_000
    pepper: str | None = Field(default=None, repr=False)  # a secret: never shown
    hashing: Literal["hmac-sha256", "argon2id"] = "hmac-sha256"
    token_prefix: str = "kg"
    header: str = "X-API-Key"
    public_paths: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    scope_implies: dict[str, tuple[str, ...]] = {}
    trusted_proxies: tuple[IPNetwork | Literal["unix"], ...] = ()
    proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    require_tls: bool = False
    policy: Policy = Policy()
    signing: Signing = Signing()
    rate_limit: str | None = None
    abuse: Abuse = Abuse()

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if scheme not in ("sqlite", "memory"):  # (a file path may hold what a URL may not)
            check_url_password(value)  # first: no later message may quote a misread URL
        if scheme == "redis+cluster":
            raise ValueError(
                "a Redis store needs one master (its scripts span many keys): use redis://, "
                "rediss:// or redis+sentinel://; redis+cluster:// is for the cache"
            )
        if scheme in {"redis", "rediss", "redis+sentinel"}:
            parse_url(value)  # ValueError says what is wrong
        elif scheme not in {"memory", "sqlite", "postgresql", "postgres"}:
            raise ValueError(
                "must be a memory://, sqlite:///, postgresql://, redis://, rediss:// or "
                "redis+sentinel:// URL"
            )
        if scheme == "sqlite" and value.removeprefix("sqlite://").strip("/") == "":
            raise ValueError("a sqlite URL needs a path, as in sqlite:///keyguard.db")
        return value

    @field_validator("cache")
    @classmethod
    def _cache(cls, value: str | None) -> str | None:
        if value is None or value.split("://", 1)[0] == "memory":
            return value
        check_url_password(value)
        try:
            parse_url(value)
        except ValueError as exc:
            raise ValueError(f"must be memory://, None or a Redis URL: {exc}") from None
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
            raise ValueError("must be a list of CIDRs (and 'unix' for a unix-socket peer)")
        try:
            return tuple(
                "unix" if v == "unix" else ipaddress.ip_network(str(v), strict=False) for v in value
            )
        except ValueError:
            raise ValueError("every entry must be an IP address, a CIDR or 'unix'") from None

    @field_validator("proxy_header", mode="before")
    @classmethod
    def _proxy_header(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return _check_rate(value)


def _listish_to_tuple(value: Any) -> Any:
    # Strict mode refuses lists for tuple fields; users write lists in dicts/TOML.
    if isinstance(value, list):
        return tuple(_listish_to_tuple(v) for v in value)
    if isinstance(value, dict):
        return {k: _listish_to_tuple(v) for k, v in value.items()}
    return value


# -- where settings come from: the dict, flat KEYGUARD_* names, the environment --------

ENV_PREFIX = "KEYGUARD_"
_ALIASES = {"master_keys": "signing.master_keys"}  # KEYGUARD_MASTER_KEYS, as documented
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}
logger = logging.getLogger("keyguard")


def _sections() -> dict[str, type[BaseModel]]:
    """Setting name -> its model, for every nested section (policy, signing, ...)."""
    return {
        name: f.annotation
        for name, f in Settings.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


def _annotation(dotted: str) -> Any:
    """The declared type of a dotted setting, or None for a name that is no setting."""
    head, _, rest = dotted.partition(".")
    field = Settings.model_fields.get(head)
    if field is None or not rest:
        return None if field is None else field.annotation
    section = _sections().get(head)
    sub = section.model_fields.get(rest) if section is not None else None
    return None if sub is None else sub.annotation


def _kinds(annotation: Any) -> set[str]:
    """What a setting's type accepts, coarsely: none, bool, number, list, dict, str."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {"str"}
    if origin in (tuple, list):
        return {"list"}
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return {"dict"}
    if annotation is type(None):
        return {"none"}
    if annotation is bool:
        return {"bool"}
    if annotation in (int, float):
        return {"number"}
    return {"str"}


def parse_text(name: str, dotted: str, text: str) -> Any:
    """A setting written as text (an environment variable), read by the setting's
    type: `none`/`null` for None; 1/0, true/false, yes/no, on/off for flags;
    numbers; JSON for lists and mappings, or a comma-separated list. Text that
    fits no reading is handed on as is, for validation to name."""
    kinds = _kinds(_annotation(dotted))
    word = text.strip().lower()
    if "none" in kinds and word in _NONE:
        return None
    if "bool" in kinds:
        return True if word in _TRUE else False if word in _FALSE else text
    if kinds & {"list", "dict"}:
        if text.lstrip()[:1] in ("[", "{"):
            try:
                return json.loads(text)
            except ValueError:
                raise ConfigurationError(f"{name}: not valid JSON") from None
        if "list" in kinds:
            return [part.strip() for part in text.split(",") if part.strip()]
        return text
    if "number" in kinds:
        try:
            number = json.loads(text)
        except ValueError:
            return text
        return number if isinstance(number, int | float) and not isinstance(number, bool) else text
    return text


# Environment variables of keyguard's own test suite (and CI), never settings.
NOT_SETTINGS = frozenset({"KEYGUARD_REQUIRE_SERVERS"})


def flat_settings(
    source: Mapping[str, Any], *, strict: bool, origin: dict[str, str] | None = None
) -> dict[str, Any]:
    """`KEYGUARD_STORE`-style names -> dotted settings (`KEYGUARD_POLICY__MAX_KEYS_PER_OWNER`
    -> `policy.max_keys_per_owner`; a double underscore nests). Text values are
    read by `parse_text`; other values (a Flask config's) pass as they are. Names
    that are no setting are refused when `strict` (a config the app wrote), else
    skipped (the environment is shared), with a warning when one is a near miss.
    `origin`, when given, records which name each setting came from."""
    out: dict[str, Any] = {}
    for name, value in source.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        dotted = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
        dotted = _ALIASES.get(dotted, dotted)
        head = dotted.split(".", 1)[0]
        if name in NOT_SETTINGS or name.startswith(ENV_PREFIX + "TEST_"):
            continue  # keyguard's own test-suite switches, not settings
        if head not in Settings.model_fields:
            known = [ENV_PREFIX + n.upper() for n in Settings.model_fields] + [
                "KEYGUARD_PEPPER",
                "KEYGUARD_MASTER_KEYS",
            ]
            close = difflib.get_close_matches(name.split("__")[0], known, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            if strict:
                raise ConfigurationError(f"{name}: not a keyguard setting{hint}")
            if close:
                logger.warning("%s is not a keyguard setting%s; ignored", name, hint)
            continue
        if isinstance(value, str):
            if strict is False and not value.strip():
                continue  # KEYGUARD_X= in a shell means "not set"
            value = parse_text(name, dotted, value)
        out[dotted] = value
        if origin is not None:
            origin[dotted] = name
    return out


def _nest(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Fold dotted keys (`policy.max_keys_per_owner`) into nested sections; a
    later entry wins over an earlier one, key by key within a section."""
    sections = _sections()
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
        elif isinstance(value, Mapping) and head in sections and isinstance(out.get(head), dict):
            out[head].update(value)
        elif isinstance(value, Mapping) and head in sections:
            out[head] = dict(value)
        else:
            out[key] = value
    return out


_WORDING = {
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping (a section of settings)",
    "finite_number": "must be a finite number",
    "missing": "is required",
}


def _model_at(loc: Any) -> type[BaseModel] | None:
    """The settings model an error location points into (`("rules", 0)` -> `Rule`), for
    naming a close field in a message; None where it is no model."""
    current: Any = Settings
    for part in loc:
        current = _model_of(current)
        if current is None:
            return None
        if isinstance(part, int):
            continue  # an item of a list of models: the same model
        field = current.model_fields.get(str(part))
        current = None if field is None else field.annotation
    return _model_of(current)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """`Rule`, from `Rule`, `tuple[Rule, ...]`, `Rule | None` or `Annotated[Rule, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _plain(error: Any) -> str:
    """pydantic's error in the words of these settings ("must be a list", not
    "Input should be a valid tuple"; a validator's own message without "Value error,")."""
    kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    bounds = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
    for name, words in bounds.items():
        if name in ctx and kind.startswith(("greater", "less")):
            return f"must be {words} {ctx[name]}"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])  # also inside a list: rules.0.scope
        names = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        return "unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")
    return _WORDING.get(kind) or str(error["msg"]).replace("Input should be", "must be")


def absolute_sqlite(url: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////<cwd>/rel.db`, once, at start-up: a guard
    (or a later `chdir`) then always opens the file it named first."""
    if not url.startswith("sqlite://"):
        return url
    path = url.removeprefix("sqlite://")
    path = path[1:] if path.startswith("/") else path
    if not path or path == ":memory:" or os.path.isabs(path):
        return url
    return "sqlite:///" + os.path.abspath(path)


_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|sslpassword|sentinel_password)=)[^&#]*")
_PIECES = re.compile(r"[@/?#]")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://user, password, @rest) read as no parser could read less: the user
    info runs to the LAST "@" (a password may hold an unencoded "@", "/", "?",
    "#": urlsplit reads up to the last "@" of the authority, libpq up to the first
    "@"), the password from the first ":" in it. None without one."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)  # (an "@" in the query, user=a@b, is no user info)
    if not sep or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon:
        return None
    return f"{scheme}://{user}", password, rest[at:]


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_url_password(url: str) -> None:
    """A URL must be one that every parser reads alike (urlsplit and redis-py take the
    user info to the last "@", libpq to the first; a "&" or "#" ends a query value):
    its password percent-encoded, no fragment, every query parameter name=value.
    Never quotes the URL."""
    info = _userinfo(url)
    if info is not None and (_PIECES.search(info[1]) or _BAD_ESCAPE.search(info[1])):
        raise ValueError(
            "the password in the URL holds a raw '@', '/', '?', '#' or '%': percent-encode "
            "it (%40, %2F, %3F, %23, %25), or pass it another way (a ?password= parameter, "
            "percent-encoded too, or the driver's environment such as PGPASSWORD)"
        )
    query = url.partition("?")[2]
    if "#" in url or any(part and "=" not in part for part in query.split("&")):
        raise ValueError(
            "the URL holds a '#' or a query part that is not name=value: a value with '&' "
            "or '#' in it (a password, say) must be percent-encoded (%26, %23)"
        )


def mask_url(url: str | None) -> str:
    """A store or cache URL fit for a log line: `redis://:****@host:6379/0` (the
    whole user-info password, however it is spelt, and `?password=` and the like)."""
    if url is None:
        return "none"
    found = _userinfo(url)
    if found is not None:
        url = f"{found[0]}:****{found[2]}"
    return _QUERY_PASSWORD.sub(r"\1****", url)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """Every text a driver's message could quote of a URL's passwords: the user-info
    password as any parser reads it, whole, percent-decoded and in the pieces an
    unencoded "@ / ? #" splits it into (libpq quotes what follows the first "@" as
    the host), and the `...password=` query values. For scrubbing messages."""
    if not url:
        return ()
    found: list[str] = []
    info = _userinfo(url)
    if info is not None:
        password = info[1]
        found += [password, unquote(password)]
        found += [p for p in _PIECES.split(password) if len(p) >= 3]
    found += [v for k, v in parse_qsl(urlsplit(url).query) if k.lower().endswith("password")]
    unique = dict.fromkeys(p for p in found if p)
    return tuple(sorted(unique, key=len, reverse=True))  # the longest replaced first


def load_settings(
    raw: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate `raw` over the `KEYGUARD_*` environment (`os.environ` unless given):
    a key in `raw` wins over the environment. Relative SQLite paths are made
    absolute here, once."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigurationError("settings must be a mapping (a dict)")
    origin: dict[str, str] = {}
    env = flat_settings(os.environ if environ is None else environ, strict=False, origin=origin)
    given = _nest(raw or {})
    for key, value in given.items():  # what the dict sets is not the environment's
        if isinstance(value, Mapping):
            for sub in value:
                origin.pop(f"{key}.{sub}", None)
        origin.pop(key, None)
    data = _nest({**env, **{k: v for k, v in (raw or {}).items()}})
    configures_signing = "signing" in given or any(
        k.startswith("signing.") and k != "signing.master_keys" for k in env
    )
    try:
        settings = Settings.model_validate(_listish_to_tuple(data))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = [str(p) for p in first["loc"] if p != "[key]"]
        where = ".".join(loc) or "settings"
        source = next((origin[k] for k in (".".join(loc[:2]), loc[0]) if k in origin), None)
        if source is not None:
            where += f" (from {source})"
        raise ConfigurationError(f"{where}: {_plain(first)}") from None
    if configures_signing and not settings.signing.master_keys:
        # Caught now, not on the first signed request (which no key could ever pass).
        raise ConfigurationError(
            "signing.master_keys: required when the settings configure signing (set it or "
            "KEYGUARD_MASTER_KEYS; make one with: keyguard master-key new)"
        )
    store = absolute_sqlite(settings.store)
    return settings if store == settings.store else settings.model_copy(update={"store": store})

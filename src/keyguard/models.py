"""Records and public views. Frozen dataclasses, no I/O.

`KeyRecord` is what a store keeps (hashes, never secrets). `KeyInfo` is the
public view: everything a listing may show, nothing that can authenticate; its
`metadata` is a read-only copy, so what one request is handed no other request
sees changed. `IssuedKey` is returned once, at create or rotate, with the token
or secret.

Owns the one check of JSON-safe values (`json_value`: finite numbers, strings
without lone surrogates, string keys, bounded depth and size), used when a key
is created or updated and again when a stored record is read back
(`KeyRecord.from_json`), so a value the API could not render is refused before
it is stored, and a stored one that slipped in another way is caught on the
way out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from .exceptions import InvalidKeySettings

Kind = Literal["bearer", "signing"]
SuspendedBy = Literal["operator", "owner"]
MAX_JSON_DEPTH = 8  # metadata nesting: objects and arrays inside one another
MAX_JSON_BYTES = 16_384  # metadata as compact JSON


def text_ok(value: str) -> bool:
    """True when `value` encodes as UTF-8 (no lone surrogates): JSON can carry it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_value(field: str, value: object, depth: int = 0) -> Any:
    """A plain-JSON copy of `value` (dicts, lists, str, finite numbers, bools,
    None), or InvalidKeySettings naming `field`: NaN and infinities, lone
    surrogates in keys or strings, non-string keys, other types, or nesting
    deeper than MAX_JSON_DEPTH. The caller bounds the size."""
    if value is None or isinstance(value, bool | str | int | float):
        if isinstance(value, str) and not text_ok(value):
            raise InvalidKeySettings(field, "strings must be valid Unicode (no lone surrogates)")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidKeySettings(field, "numbers must be finite (no NaN or Infinity)")
        return value
    if depth >= MAX_JSON_DEPTH:
        raise InvalidKeySettings(field, f"must be nested at most {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidKeySettings(field, "object keys must be strings")
            out[json_value(field, key, depth)] = json_value(field, item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [json_value(field, item, depth + 1) for item in value]
    raise InvalidKeySettings(field, f"must be JSON: a {type(value).__name__} is not")


def metadata_value(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated `metadata`: a JSON object of at most MAX_JSON_BYTES (see `json_value`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidKeySettings("metadata", "must be a dict")
    plain: dict[str, Any] = json_value("metadata", value)
    try:
        size = len(json.dumps(plain, separators=(",", ":"), allow_nan=False))
    except ValueError:  # an int too long to print (sys.int_info.default_max_str_digits)
        raise InvalidKeySettings("metadata", "numbers must be at most 4300 digits") from None
    if size > MAX_JSON_BYTES:
        raise InvalidKeySettings("metadata", "must be at most 16 KiB as JSON")
    return plain


def frozen(value: Any) -> Any:
    """A read-only deep copy of a JSON value: mappings become MappingProxyType
    over a private dict, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """Plain JSON again (dicts and lists) from `frozen`."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thawed(v) for v in value]
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The public view of a key. `metadata` is read-only (nested objects too)."""

    id: str
    owner: str
    name: str
    kind: Kind
    scopes: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_from: str | None  # the client IP of that use
    revoked_at: datetime | None
    suspended_at: datetime | None
    has_passphrase: bool
    rate_limit: str | None
    max_uses: int | None
    metadata: Mapping[str, Any]
    hint: str
    # Who suspended the key, while it is suspended: "operator" (only an operator
    # may resume it) or "owner" (its owner, self-service, who may resume it).
    suspended_by: SuspendedBy | None = None

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())

    def status(self, now: datetime | None = None) -> str:
        """`revoked`, `expired`, `suspended` or `active` (the first that holds)."""
        if self.is_revoked:
            return "revoked"
        if self.is_expired(now):
            return "expired"
        return "suspended" if self.is_suspended else "active"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601, plain lists and dicts), with `status`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple | Mapping):
                value = thawed(value)
            out[f.name] = value
        out["status"] = self.status()
        return out

    # Immutable, so a copy is the object itself; pickled (a task queue, a cache), the
    # read-only metadata travels as plain JSON and is frozen again on arrival.
    def __copy__(self) -> KeyInfo:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> KeyInfo:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["metadata"] = thawed(self.metadata)
        return _key_info, (values,)


def _key_info(values: dict[str, Any]) -> KeyInfo:
    return KeyInfo(**{**values, "metadata": frozen(values["metadata"])})


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created or rotated key. `token`/`secret` are never shown again."""

    info: KeyInfo
    token: str | None = None
    secret: str | None = None

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:  # never print the secret by accident
        return f"IssuedKey(id={self.info.id!r}, name={self.info.name!r}, token=<hidden>)"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key. Times are Unix seconds (floats) for cheap comparison."""

    id: str
    owner: str
    name: str
    kind: Kind
    scopes: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    created_at: float
    hint: str
    secret_hash: str = ""
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    last_used_from: str | None = None
    suspended_at: float | None = None
    previous_secret_hash: str | None = None
    previous_valid_until: float | None = None
    passphrase_hash: str | None = None
    encrypted_secret: str | None = None
    previous_encrypted_secret: str | None = None
    unrestricted_since: float | None = None
    rate_limit: str | None = None
    max_uses: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The owner suspended the key (self-service) and may resume it. False: an
    # operator did (or the key is not suspended), so only an operator may resume
    # it; a row from before this field reads so, which is the safe reading.
    suspended_by_owner: bool = False

    def replace(self, **changes: Any) -> KeyRecord:
        return dataclasses.replace(self, **changes)

    def info(self) -> KeyInfo:
        return KeyInfo(
            id=self.id,
            owner=self.owner,
            name=self.name,
            kind=self.kind,
            scopes=self.scopes,
            allowed_ips=self.allowed_ips,
            created_at=from_ts(self.created_at),  # type: ignore[arg-type]
            expires_at=from_ts(self.expires_at),
            last_used_at=from_ts(self.last_used_at),
            last_used_from=self.last_used_from,
            revoked_at=from_ts(self.revoked_at),
            suspended_at=from_ts(self.suspended_at),
            has_passphrase=self.passphrase_hash is not None,
            rate_limit=self.rate_limit,
            max_uses=self.max_uses,
            metadata=frozen(self.metadata),
            hint=self.hint,
            suspended_by=self.suspended_by,
        )

    @property
    def suspended_by(self) -> SuspendedBy | None:
        """Who suspended the key ("operator" or "owner"); None when it is not suspended."""
        if self.suspended_at is None:
            return None
        return "owner" if self.suspended_by_owner else "operator"

    # One serialisation for every backend: a JSON document.
    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        if not doc["suspended_by_owner"]:  # the default: rows stay as earlier versions read them
            del doc["suspended_by_owner"]
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRecord:
        """Decode a stored document; ValueError (never quoting it) when it is not
        one this module writes: bad JSON, a missing or unknown field, a wrong type,
        or values the API could not render (see `json_value`)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ValueError("not a JSON document") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        for name, kind in _FIELDS.items():
            if name not in data:
                if name in _REQUIRED:
                    raise ValueError(f"field {name} is missing")
                continue
            if not _TYPE_OK[kind](data[name]):
                raise ValueError(f"field {name} has the wrong type")
        unknown = set(data) - _FIELDS.keys()
        if unknown:
            raise ValueError(f"{len(unknown)} unknown field(s)")
        if data["kind"] not in ("bearer", "signing"):
            raise ValueError("field kind has the wrong value")
        try:
            data["metadata"] = metadata_value(data.get("metadata"))
        except InvalidKeySettings as exc:
            raise ValueError(f"field metadata: {exc.message}") from None
        for text in data["allowed_ips"]:  # read by the gate and by every policy check
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError("field allowed_ips holds an entry that is not a network") from None
        data["scopes"] = tuple(data["scopes"])
        data["allowed_ips"] = tuple(data["allowed_ips"])
        return cls(**data)


def is_time(value: object) -> bool:
    """A Unix time a datetime can show: a number from 1970 to the year 9999."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value < 253_402_300_800  # also refuses NaN
    )


def _is_text(value: object) -> bool:
    return isinstance(value, str) and text_ok(value)


_TYPE_OK: dict[str, Callable[[object], bool]] = {
    "str": _is_text,
    "str?": lambda v: v is None or _is_text(v),
    "ascii": lambda v: isinstance(v, str) and v.isascii(),
    "ascii?": lambda v: v is None or (isinstance(v, str) and v.isascii()),
    "num": is_time,
    "num?": lambda v: v is None or is_time(v),
    "int?": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "strs": lambda v: isinstance(v, list) and all(_is_text(x) for x in v),
    "json": lambda v: v is None or isinstance(v, dict),  # checked by metadata_value
    "bool": lambda v: isinstance(v, bool),
}
# Every field of KeyRecord and what a stored value must be.
_FIELDS = {
    "id": "str",
    "owner": "str",
    "name": "str",
    "kind": "str",
    "scopes": "strs",
    "allowed_ips": "strs",
    "created_at": "num",
    "hint": "str",
    "secret_hash": "ascii",  # hashes and ciphertexts: compared with compare_digest
    "expires_at": "num?",
    "revoked_at": "num?",
    "last_used_at": "num?",
    "last_used_from": "str?",
    "suspended_at": "num?",
    "previous_secret_hash": "ascii?",
    "previous_valid_until": "num?",
    "passphrase_hash": "ascii?",
    "encrypted_secret": "ascii?",
    "previous_encrypted_secret": "ascii?",
    "unrestricted_since": "num?",
    "rate_limit": "str?",
    "max_uses": "int?",
    "metadata": "json",
    "suspended_by_owner": "bool",  # optional: absent in rows written before it, and when False
}
_REQUIRED = frozenset(
    {"id", "owner", "name", "kind", "scopes", "allowed_ips", "created_at", "hint"}
)

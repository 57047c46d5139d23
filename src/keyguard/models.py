"""Records and public views. Frozen dataclasses, no I/O.

`KeyRecord` is what a store keeps (hashes, never secrets). `KeyInfo` is the
public view: everything a listing may show, nothing that can authenticate.
`IssuedKey` is returned once, at create or rotate, with the token or secret.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["bearer", "signing"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    kind: Kind
    scopes: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    has_passphrase: bool
    rate_limit: str | None
    max_uses: int | None
    metadata: dict[str, Any]
    hint: str

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601)."""
        out = dataclasses.asdict(self)
        for name, value in out.items():
            if isinstance(value, datetime):
                out[name] = value.isoformat()
            elif isinstance(value, tuple):
                out[name] = list(value)
        return out


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
    previous_secret_hash: str | None = None
    previous_valid_until: float | None = None
    passphrase_hash: str | None = None
    encrypted_secret: str | None = None
    previous_encrypted_secret: str | None = None
    unrestricted_since: float | None = None
    rate_limit: str | None = None
    max_uses: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

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
            revoked_at=from_ts(self.revoked_at),
            has_passphrase=self.passphrase_hash is not None,
            rate_limit=self.rate_limit,
            max_uses=self.max_uses,
            metadata=dict(self.metadata),
            hint=self.hint,
        )

    # One serialisation for every backend: a JSON document.
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRecord:
        data = json.loads(text)
        data["scopes"] = tuple(data["scopes"])
        data["allowed_ips"] = tuple(data["allowed_ips"])
        return cls(**data)

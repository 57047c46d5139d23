"""The decision of SPEC section 4, steps 2-7, as pure code: no I/O, no clock.

The doors gather facts (`credential`), the guard fetches the `Entry`, and
`decide` answers with the caller's `KeyInfo` or raises the rejection. Each
rule lives here once, in the order the SPEC gives; the order matters, since
`revoked_key`, `expired_key` and the later codes are only told to a caller
that proved the secret (as is `suspended_key`).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .exceptions import AuthenticationError, AuthorizationError, BadRequest
from .hashing import Hasher
from .models import KeyInfo, KeyRecord
from .network import Allowlist, IPAddress
from .scopes import Scopes


@dataclass(slots=True, eq=False)
class Entry:
    """A record prepared for the hot path: expanded scopes, the allowlist as ranges.

    `proof` is the last token that proved this record's current secret, kept in
    this process only (as a signing key's secret is), so the next request with
    it skips the checksum and the hash. A record change makes a new Entry, so a
    proof never outlives the secret it was checked against.
    """

    record: KeyRecord
    info: KeyInfo
    scopes: frozenset[str]
    allowlist: Allowlist | None  # None: the key may be used from anywhere
    proof: str | None = field(default=None, repr=False)
    door: Any = field(default=None, repr=False)  # what a door derives from the entry, once
    limited: bool = False  # a rate limit or use quota applies (set by the guard)
    # The warm path's memory of (peer, method, path) that `decide` passed with no
    # passphrase and no forwarding header: each is a pure function of the record,
    # the peer and the route, so until `until` (revocation or expiry) it passes
    # again. A record change makes a new Entry, and this memory goes with it.
    passed: set[tuple[str | None, str, str]] = field(default_factory=set, repr=False)
    until: float = field(init=False)

    def __post_init__(self) -> None:
        ends = [t for t in (self.record.revoked_at, self.record.expires_at) if t is not None]
        self.until = min(ends, default=math.inf)


def remembered(entry: object, token: str) -> TypeGuard[Entry]:
    """Steps 2-3 from memory: this exact token already passed them against this entry
    (a well-formed token with a valid checksum whose secret matched the current hash).
    Compared in constant time; `compare_digest` takes ASCII text only."""
    return (
        isinstance(entry, Entry)
        and entry.proof is not None
        and token.isascii()
        and hmac.compare_digest(entry.proof, token)
    )


def invalid_key() -> AuthenticationError:
    return AuthenticationError()  # the class defaults: invalid_key, "The API key is not valid."


def credential(authorization: Sequence[str], api_key: Sequence[str]) -> str:
    """Step 1: the one bearer token of a request (raises 401/400 otherwise)."""
    # Fast paths for the usual request (one credential); the same answers as below.
    if not api_key and len(authorization) == 1:
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    elif not authorization and len(api_key) == 1:
        return api_key[0].strip()
    tokens = set()
    for value in authorization:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            tokens.add(token.strip())
    if len(authorization) > 1:
        raise BadRequest("invalid_request", "Send one Authorization header.")
    tokens.update(v.strip() for v in api_key)
    if not tokens:
        raise AuthenticationError("missing_credentials", "An API key is required.")
    if len(tokens) > 1:
        raise BadRequest("invalid_request", "Send one API key, not several.")
    return tokens.pop()


def bearer_proven(entry: Entry, token: str, secret: str, hasher: Hasher, now: float) -> bool:
    """Step 3: the secret matches the current hash, or the previous one in grace.
    A match of the current hash is remembered on the entry (see `remembered`)."""
    record = entry.record
    if hasher.check(record.secret_hash, secret):
        entry.proof = token
        return True
    until = record.previous_valid_until
    return until is not None and now < until and hasher.check(record.previous_secret_hash, secret)


def decide(
    entry: Entry,
    proven: bool,
    now: float,
    hasher: Hasher,
    passphrase: str | None,
    client_ip: IPAddress | None,
    needed: Sequence[str],
) -> KeyInfo:
    """Steps 3-7 for a found key whose proof (secret or signature) was checked."""
    if not proven:
        raise invalid_key()
    record = entry.record
    if record.revoked_at is not None and record.revoked_at <= now:
        raise AuthenticationError("revoked_key", "The API key has been revoked.")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthenticationError("expired_key", "The API key has expired.")
    if record.suspended_at is not None and record.suspended_at <= now:
        raise AuthenticationError("suspended_key", "The API key is suspended.")
    if record.passphrase_hash is not None and (
        passphrase is None or not hasher.check(record.passphrase_hash, passphrase)
    ):
        raise AuthenticationError("invalid_passphrase", "The passphrase is missing or wrong.")
    if entry.allowlist is not None and client_ip not in entry.allowlist:
        raise AuthorizationError(
            "ip_not_allowed", "This API key may not be used from this address."
        )
    if needed and not entry.scopes.issuperset(needed):  # held outright: nothing to walk
        missing = Scopes.missing(entry.scopes, needed)
        if missing:
            raise AuthorizationError(
                "insufficient_scope", "The API key lacks a scope this route needs.", scopes=missing
            )
    return entry.info

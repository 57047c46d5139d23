"""`guard.keys`: issue, list, edit, rotate, suspend, resume, revoke and delete keys.

Owns field validation and the key policies (owner limit, the cap on keys
without an IP allowlist, private ranges). Every refusal is an
`InvalidKeySettings` naming the field, raised before anything is stored. The
owner limit is the store's to enforce atomically (`Store.insert`, and
`Store.modify` for a change that makes a key count again); what counts is
`stores.base.is_live`. Every change drops the cached copy (and,
with a shared cache, tells the other instances). The async twins run the sync
method in a worker thread: store writes and argon2 never block an event loop.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import anyio.to_thread

from . import tokens
from .audit import audited
from .exceptions import (
    ConfigurationError,
    InvalidKeySettings,
    KeyLimitExceeded,
    KeyNotFound,
    KeyStateConflict,
)
from .models import IssuedKey, KeyInfo, KeyRecord, metadata_value, text_ok
from .network import PRIVATE_RANGES, carried_v4, parse_allowlist
from .settings import _check_rate
from .stores.base import is_live

if TYPE_CHECKING:
    from .cache import KeyCache
    from .crypto import MasterKeyRing
    from .hashing import Hasher
    from .settings import Settings
    from .stores import Store

P = ParamSpec("P")
R = TypeVar("R")
V = TypeVar("V")
DAY = 86_400.0
SIGNING_SECRET_LEN = 43  # base62: ~256 bits
_SCOPE = re.compile(r"[A-Za-z0-9_.:*/-]{1,128}")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def _offload(method: Callable[P, R]) -> Callable[P, Any]:
    @functools.wraps(method)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

    twin.__doc__ = f"Async twin of `{method.__name__}` (runs it in a worker thread)."
    return twin


# What names and owners may not hold, as a regex character class (openapi.py's text
# pattern uses it too): C0 controls (ESC among them), DEL, C1 controls (U+009B is a
# terminal's CSI), Unicode's bidirectional controls (marks, embeddings, overrides,
# isolates: they reorder what a listing shows) and the line and paragraph separators.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{CONTROL_CHARS}]")


def _owner(value: object) -> str:
    """An owner, taken exactly: owners are identities (a principal's `owner` is
    compared with them), so one with surrounding white space is refused rather
    than stripped into someone else's name."""
    owner = _text("owner", value)
    if owner != value:
        raise InvalidKeySettings("owner", "must not begin or end with white space")
    return owner


def _text(field: str, value: object, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidKeySettings(field, f"must be a non-empty string of at most {limit} characters")
    if not text_ok(value) or _CONTROL.search(value):
        raise InvalidKeySettings(
            field,
            "must be valid Unicode without control characters (C0, C1, bidirectional"
            " or line separators) or lone surrogates",
        )
    return value.strip()


def _strings(value: object) -> Iterator[str]:
    """Every string in a validated value: text, scopes, metadata keys and values."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _key_id(value: object) -> str:
    """A key id to look up. Anything that cannot be a stored id (not text, too long,
    not valid Unicode: a token or secret pasted by mistake, say) is KeyNotFound at
    once, without a store call; KeyNotFound shows only its hint (`shown_id`)."""
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not text_ok(value):
        raise KeyNotFound(value)
    return value


def _scopes(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidKeySettings("scopes", "must be a list of strings, not one string")
    out: dict[str, None] = {}
    for scope in value:
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise InvalidKeySettings(
                "scopes", "each scope is 1-128 of letters, digits and _ . : * / -"
            )
        out[scope] = None
    return tuple(out)


def _when(value: datetime | None, now: float, field: str = "expires_at") -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidKeySettings(field, "must be a datetime")
    if value.tzinfo is None:
        raise InvalidKeySettings(field, "must be timezone-aware (use datetime.now(UTC) + ...)")
    try:
        ts = value.timestamp()
    except (OverflowError, ValueError, OSError):
        ts = float("inf")
    if ts <= now:
        raise InvalidKeySettings(field, "must be in the future")
    if ts > now + MAX_SECONDS:
        raise InvalidKeySettings(field, "must be within 100 years")
    return ts


MAX_SECONDS = 100 * 365 * DAY  # durations and expiries beyond a century are a mistake
# A rotation's grace: how long the old secret keeps working beside the new one.
# Long enough to roll a new secret out everywhere; a longer one keeps two live
# secrets for no reason (and a leaked old one alive).
MAX_GRACE = 30 * DAY


def duration(
    field: str,
    value: timedelta | float | int,
    most: float = MAX_SECONDS,
    most_text: str = "100 years",
) -> float:
    """Seconds of a duration given as a timedelta or a number: 0 to `most`
    (100 years unless told; `most_text` says it in words)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= most  # also refuses NaN
    ):
        raise InvalidKeySettings(field, f"must be a duration from 0 seconds to {most_text}")
    return float(seconds)


def rotation_grace(value: timedelta | float | int) -> float:
    """Seconds of a rotation's grace: 0 to 30 days (`MAX_GRACE`), else
    InvalidKeySettings naming `grace`. `rotate` takes only this."""
    return duration("grace", value, MAX_GRACE, "30 days")


def _grace_within_expiry(old: KeyRecord, new: KeyRecord, now: float) -> KeyRecord:
    """A change that moves a key's expiry later (or removes it) does not lengthen a
    rotation's grace: the old secret stops at the expiry that was in force, so it
    never works past the key's own expiry (an expired key refuses every secret)."""
    until, was = new.previous_valid_until, old.expires_at
    if until is None or was is None or until <= was:
        return new
    if new.expires_at is not None and new.expires_at <= was:
        return new  # not later: the key stops first
    if was <= now:  # the key had expired: its old secret stays gone
        return new.replace(
            previous_secret_hash=None, previous_encrypted_secret=None, previous_valid_until=None
        )
    return new.replace(previous_valid_until=was)


GRANT_REFUSED = "holds a scope you may not grant"


def check_grants(
    scopes: Iterable[str], grantable: Collection[str] | None, held: Iterable[str] = ()
) -> None:
    """The grant rule: each of `scopes` is in `grantable` or already `held` by the
    key (a key keeps what an operator gave it; nothing is added). `grantable` None:
    any scope. Else InvalidKeySettings naming `scopes`."""
    if grantable is None:
        return
    kept = frozenset(held)
    if any(s not in grantable and s not in kept for s in scopes):
        raise InvalidKeySettings("scopes", GRANT_REFUSED)


# What an owner (a self-service caller) may not do to its own key: give it a longer
# life, or take back a suspension an operator put on it. `update`, `suspend` and
# `resume` check these against the key as stored, inside the store's atomic change.
EXTEND_REFUSED = (
    "may only be moved earlier: only an operator can extend a key's life or remove its expiry"
)
RESUME_REFUSED = "an operator suspended this key: only an operator can resume it"


def owner_expiry(current: float | None, wanted: float | None) -> float | None:
    """The expiry an owner may set on its key: `wanted`, if it is not later than
    `current` (an expiry may be shortened, never lengthened nor removed), else
    InvalidKeySettings naming `expires_at`. A key without an expiry may be given
    any. Within a millisecond of `current` is `current` (an expiry read from the
    API and sent back, rounded to microseconds, is not a longer one)."""
    if current is None or (wanted is not None and wanted <= current):
        return wanted
    if wanted is not None and wanted - current <= 0.001:
        return current
    raise InvalidKeySettings("expires_at", EXTEND_REFUSED)


_REVOKED_REFUSES = {"rotate": "rotated", "suspend": "suspended", "resume": "resumed"}


def check_not_revoked(revoked_at: object, action: str) -> None:
    """The state rule of `rotate`, `suspend` and `resume`: a revoked key (any
    `revoked_at` but None) cannot be given them (KeyStateConflict: 409 in the admin
    API). Other actions pass. The change checks it against the key as stored; the
    admin app against the key as read, before it asks for a step-up code."""
    done = _REVOKED_REFUSES.get(action)
    if done is not None and revoked_at is not None:
        raise KeyStateConflict(f"a revoked key cannot be {done}")


def check_owner_resume(suspended_by: str | None) -> None:
    """An owner may resume only its own suspension, never an operator's
    (InvalidKeySettings naming `key`; 422 in the admin API)."""
    if suspended_by == "operator":
        raise InvalidKeySettings("key", RESUME_REFUSED)


def _rate(value: str | None) -> str | None:
    try:
        return _check_rate(value)
    except ValueError as exc:
        raise InvalidKeySettings("rate_limit", str(exc)) from None


# -- allowlists that admit nearly everyone -----------------------------------------
#
# The cap on unrestricted keys (`policy.unrestricted_max_days`) is about keys that
# work from anywhere. An allowlist earns the exemption by confining a key to
# networks its owner runs, and no one organisation holds more than about one
# sixteenth of the public IPv4 space (the largest holders have a dozen or so of the
# 256 /8s). So an allowlist that admits at least WIDE_SHARE of the public
# addresses of either IP version counts as no allowlist: every public CIDR, or
# 0.0.0.0/1 + 128.0.0.0/1, or one /4, is not a restriction. Public IPv4 is the
# whole space less network.PRIVATE_RANGES and multicast/reserved (224.0.0.0/3).
# Public IPv6 is where IPv6 clients are: the blocks IANA has allocated to the five
# regional registries (ALLOCATED_V6), not the whole of 2000::/3, most of which is
# unallocated, so a list of the registries' blocks is no restriction, while one
# large provider's /19 is.
WIDE_SHARE = 1 / 16
ALLOCATED_V6 = (  # IANA's "IPv6 Global Unicast Address Assignments", by registry
    "2001::/16",  # (its /23s and /20s: every registry, and IANA's own 2001::/23)
    "2003::/18",  # RIPE NCC
    "2400::/12",  # APNIC
    "2410::/12",  # APNIC
    "2600::/12",  # ARIN
    "2610::/23",  # ARIN
    "2620::/23",  # ARIN
    "2630::/12",  # ARIN
    "2800::/12",  # LACNIC
    "2a00::/12",  # RIPE NCC
    "2a10::/12",  # RIPE NCC
    "2c00::/12",  # AFRINIC
)


def _ranges(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[list[int]]:
    """Merged, sorted [first, last] integer ranges of `nets` (one IP version)."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
    merged: list[list[int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged


def _public(version: int) -> list[list[int]]:
    if version == 6:
        return _ranges([ipaddress.IPv6Network(block) for block in ALLOCATED_V6])
    closed = _ranges(
        [n for n in PRIVATE_RANGES if n.version == 4] + [ipaddress.IPv4Network("224.0.0.0/3")]
    )
    out, start = [], 0
    for first, last in closed:
        if first > start:
            out.append([start, first - 1])
        start = last + 1
    if start <= 2**32 - 1:
        out.append([start, 2**32 - 1])
    return out


_PUBLIC = {4: _public(4), 6: _public(6)}
_PUBLIC_SIZE = {v: sum(last - first + 1 for first, last in r) for v, r in _PUBLIC.items()}


def admits_nearly_everyone(allowed_ips: Iterable[str]) -> bool:
    """Whether an allowlist admits at least WIDE_SHARE of the public addresses of
    IPv4 or of IPv6 (see above): such a key counts as unrestricted."""
    # An IPv6 entry that reaches IPv4 hosts (6to4, NAT64) counts as the IPv4 it reaches.
    nets = [ipaddress.ip_network(text, strict=False) for text in allowed_ips]
    nets = [carried_v4(net) or net for net in nets]
    for version, public in _PUBLIC.items():
        covered = 0
        for first, last in _ranges(n for n in nets if n.version == version):
            for p_first, p_last in public:
                covered += max(0, min(last, p_last) - max(first, p_first) + 1)
        if covered >= WIDE_SHARE * _PUBLIC_SIZE[version]:
            return True
    return False


def _restricted(record: KeyRecord) -> bool:
    """The key has an allowlist that confines it (see `admits_nearly_everyone`)."""
    return bool(record.allowed_ips) and not admits_nearly_everyone(record.allowed_ips)


def _lost_master_key(key_id: str) -> ConfigurationError:
    return ConfigurationError(
        f"signing.master_keys: the secret of key {key_id} is not under any configured master key"
    )


class KeyManager:
    """`guard.keys`. Built by `KeyGuard` from its parts: the store, the settings
    (policy, token prefix), the key cache (every change is forgotten there, on
    every instance), the master-key ring of signing secrets, the clock, `setup`
    (the hasher; the store set up on first use) and `pending_use` (the drivers'
    buffered last uses, so a listing shows them before they are flushed)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        cache: KeyCache,
        ring: MasterKeyRing,
        clock: Callable[[], float],
        setup: Callable[[], Hasher],
        pending_use: Callable[[str], tuple[float, str | None] | None],
    ) -> None:
        self._store_ = store
        self._settings = settings
        self._cache = cache
        self._ring = ring
        self._clock = clock
        self._setup = setup
        self._pending_use = pending_use
        # This guard's tokens, as the gate parses them: what a listed field must not hold.
        self.token_parser = tokens.TokenParser(settings.token_prefix)

    # -- policy -------------------------------------------------------------

    def _listed(self, field: str, value: V) -> V:
        """`value` (a name, owner, scopes or metadata: text shown in every listing),
        unless a string in it holds something of this guard's token shape
        (`TokenParser.found_in`, the gate's own parser), which a listing must never
        show: InvalidKeySettings naming `field`, which never quotes the value."""
        if any(self.token_parser.found_in(text) for text in _strings(value)):
            raise InvalidKeySettings(
                field, "must not contain an API key token: it would be shown in every listing"
            )
        return value

    def _allowlist(self, value: Iterable[str]) -> tuple[str, ...]:
        nets = parse_allowlist(value, self._settings.policy.allow_private_ips)
        return tuple(dict.fromkeys(str(n) for n in nets))

    def _cap(self, record: KeyRecord) -> KeyRecord:
        """A key without an allowlist (or with one that admits nearly everyone)
        lives at most `unrestricted_max_days`."""
        days = self._settings.policy.unrestricted_max_days
        if days is None or _restricted(record):
            return record.replace(unrestricted_since=None)
        since = record.unrestricted_since or record.created_at
        limit = since + days * DAY
        expires = limit if record.expires_at is None else min(record.expires_at, limit)
        return record.replace(unrestricted_since=since, expires_at=expires)

    def _info(self, record: KeyRecord) -> KeyInfo:
        pending = self._pending_use(record.id)
        if pending is not None and (record.last_used_at or 0) < pending[0]:
            record = record.replace(last_used_at=pending[0], last_used_from=pending[1])
        return record.info()

    def _store(self) -> Any:
        self._setup()  # sets the store up on first use
        return self._store_

    # -- operations ---------------------------------------------------------

    def _signing_ring(self) -> MasterKeyRing:
        if not self._ring.enabled:
            raise InvalidKeySettings(
                "kind",
                "signing keys need a master key to encrypt their secret: set "
                "signing.master_keys or KEYGUARD_MASTER_KEYS",
            )
        return self._ring

    def check_create(self, **fields: Any) -> None:
        """Would `create(**fields)` take these fields? Raises its `InvalidKeySettings`
        (the owner's key limit aside, which only the store can tell); changes nothing.
        For callers that confirm a change before making it (the admin app's step-up)."""
        names = (
            "owner", "name", "scopes", "allowed_ips", "expires_at", "expires_in", "kind",
            "passphrase", "rate_limit", "max_uses", "metadata",
        )  # fmt: skip
        defaults: dict[str, Any] = {"scopes": (), "allowed_ips": (), "kind": "bearer"}
        self._draft(self._clock(), *(fields.get(n, defaults.get(n)) for n in names))

    def check_room(self, owner: str, key_id: str | None = None) -> None:
        """KeyLimitExceeded when `owner` already holds `max_keys_per_owner` live keys
        besides `key_id`: what a create or a resume would meet, told before a change
        is confirmed (the admin app's step-up). Reads the store (blocking); the store
        checks again, atomically, when the change is made."""
        limit = self._settings.policy.max_keys_per_owner
        if limit is None:
            return
        now = self._clock()
        held = self._store().list(owner=owner)
        if sum(1 for r in held if r.id != key_id and is_live(r, now)) >= limit:
            raise KeyLimitExceeded(limit)

    def _draft(
        self,
        now: float,
        owner: Any,
        name: Any,
        scopes: Any,
        allowed_ips: Any,
        expires_at: Any,
        expires_in: Any,
        kind: Any,
        passphrase: Any,
        rate_limit: Any,
        max_uses: Any,
        metadata: Any,
    ) -> KeyRecord:
        """`create`'s fields validated into a record (no secret yet); `InvalidKeySettings`
        names the first refused one."""
        if expires_at is not None and expires_in is not None:
            raise InvalidKeySettings("expires_in", "give expires_at or expires_in, not both")
        expires: float | None
        if expires_in is not None:
            # Added to now as it is (no datetime between): a lifetime of exactly 100
            # years is within 100 years, whatever a datetime would round it to.
            expires = now + duration("expires_in", expires_in)
            if expires <= now:  # 0, or too small to move now
                raise InvalidKeySettings("expires_in", "must be in the future")
        else:
            expires = _when(expires_at, now)
        if kind not in ("bearer", "signing"):
            raise InvalidKeySettings("kind", "must be 'bearer' or 'signing'")
        if passphrase is not None and (
            not isinstance(passphrase, str)
            or not 8 <= len(passphrase) <= 256
            or not text_ok(passphrase)
        ):
            raise InvalidKeySettings("passphrase", "must be 8 to 256 characters of valid Unicode")
        if max_uses is not None and (
            isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1
        ):
            raise InvalidKeySettings("max_uses", "must be a positive integer")
        if kind == "signing":
            self._signing_ring()
        return KeyRecord(
            id=tokens.new_key_id(),
            owner=self._listed("owner", _owner(owner)),
            name=self._listed("name", _text("name", name)),
            kind=kind,
            scopes=self._listed("scopes", _scopes(scopes)),
            allowed_ips=self._allowlist(allowed_ips),
            created_at=now,
            hint="",
            expires_at=expires,
            rate_limit=_rate(rate_limit),
            max_uses=max_uses,
            metadata=self._listed("metadata", metadata_value(metadata)),
        )

    @audited("key.create")
    def create(
        self,
        *,
        owner: str,
        name: str,
        scopes: Iterable[str] = (),
        allowed_ips: Iterable[str] = (),
        expires_at: datetime | None = None,
        expires_in: timedelta | float | None = None,
        kind: str = "bearer",
        passphrase: str | None = None,
        rate_limit: str | None = None,
        max_uses: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> IssuedKey:
        """Issue a key. The token (or signing secret) is in the result, and only there."""
        now = self._clock()
        record = self._draft(
            now, owner, name, scopes, allowed_ips, expires_at, expires_in, kind, passphrase,
            rate_limit, max_uses, metadata,
        )  # fmt: skip
        store = self._store()
        hasher = self._setup()
        record, token, secret = self._new_secret(record)
        if passphrase is not None:
            record = record.replace(passphrase_hash=hasher.hash_passphrase(passphrase))
        record = self._cap(record)
        store.insert(record, self._settings.policy.max_keys_per_owner, now)
        self._cache.forget(record.id)
        return IssuedKey(self._info(record), token=token, secret=secret)

    def _new_secret(self, record: KeyRecord) -> tuple[KeyRecord, str | None, str | None]:
        """A fresh secret for `record`: (record with its hash or ciphertext, token, secret)."""
        if record.kind == "signing":
            ring = self._signing_ring()
            secret = tokens.random_string(SIGNING_SECRET_LEN)
            return (
                record.replace(
                    secret_hash="",
                    encrypted_secret=ring.encrypt(secret, record.id),
                    hint=f"{record.id}_…{secret[-4:]}",
                ),
                None,
                secret,
            )
        token, _secret = tokens.make_token(self._settings.token_prefix, record.id)
        return (
            record.replace(secret_hash=self._setup().hash_secret(_secret), hint=tokens.hint(token)),
            token,
            None,
        )

    def get(self, key_id: str) -> KeyInfo:
        record = self._store().get(_key_id(key_id))
        if record is None:
            raise KeyNotFound(key_id)
        return self._info(record)

    def list(self, owner: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        """Keys sorted by creation time (suspended ones too; revoked ones only with
        `include_revoked`). Nothing in a listing can authenticate. A stored row that
        does not decode is logged and left out (see `stores.base`)."""
        if owner is not None and not (isinstance(owner, str) and text_ok(owner)):
            raise InvalidKeySettings("owner", "must be a string of valid Unicode")
        return [self._info(r) for r in self._store().list(owner, include_revoked)]

    def _modify(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord], now: float
    ) -> KeyRecord:
        """Apply `change` atomically. A change that makes the key count toward its
        owner's limit again (revived, resumed) is refused at the limit, as a create."""
        limit = self._settings.policy.max_keys_per_owner
        record: KeyRecord = self._store().modify(_key_id(key_id), change, limit, now)
        self._cache.forget(key_id)
        return record

    @audited("key.update")
    def update(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        scopes: Iterable[str] | _Unset = UNSET,
        allowed_ips: Iterable[str] | _Unset = UNSET,
        expires_at: datetime | None | _Unset = UNSET,
        rate_limit: str | None | _Unset = UNSET,
        metadata: Mapping[str, Any] | None | _Unset = UNSET,
        grantable: Collection[str] | None = None,
        by_owner: bool = False,
    ) -> KeyInfo:
        """Change the given fields; others stay. `expires_at=None` removes the expiry
        (for a key without an allowlist the cap still applies). A later expiry that
        makes an expired key live again counts against `max_keys_per_owner`.

        For a self-service caller (the admin app's owner-bound principal):
        `grantable`: new `scopes` may add only these to the ones the key holds
        (`check_grants`; else InvalidKeySettings naming `scopes`); `by_owner=True`:
        the key's owner makes the change, so `expires_at` may only move earlier
        (`owner_expiry`; a later one or None: InvalidKeySettings naming
        `expires_at`). Both are checked against the key as stored, inside the
        store's atomic change, so what an operator changes meanwhile holds."""
        now = self._clock()
        changes = self._changes(now, name, scopes, allowed_ips, expires_at, rate_limit, metadata)
        if grantable is not None:
            grantable = frozenset(grantable)

        def change(record: KeyRecord) -> KeyRecord:
            mine = changes
            if "scopes" in changes:
                check_grants(changes["scopes"], grantable, record.scopes)
            if by_owner and "expires_at" in changes:
                wanted = owner_expiry(record.expires_at, changes["expires_at"])
                mine = {**changes, "expires_at": wanted}
            new = record.replace(**mine)
            if _restricted(record) and not _restricted(new):  # lost its allowlist now
                new = new.replace(unrestricted_since=now)
            return _grace_within_expiry(record, self._cap(new), now)

        return self._info(self._modify(key_id, change, now))

    def check_update(self, **fields: Any) -> None:
        """Would `update(key_id, **fields)` take these fields? Raises its
        `InvalidKeySettings` (limits that depend on the stored key aside); changes
        nothing (see `check_create`)."""
        names = ("name", "scopes", "allowed_ips", "expires_at", "rate_limit", "metadata")
        self._changes(self._clock(), *(fields.get(n, UNSET) for n in names))

    def _changes(
        self,
        now: float,
        name: Any,
        scopes: Any,
        allowed_ips: Any,
        expires_at: Any,
        rate_limit: Any,
        metadata: Any,
    ) -> dict[str, Any]:
        """`update`'s given fields, validated (UNSET: not given)."""
        changes: dict[str, Any] = {}
        if not isinstance(name, _Unset):
            changes["name"] = self._listed("name", _text("name", name))
        if not isinstance(scopes, _Unset):
            changes["scopes"] = self._listed("scopes", _scopes(scopes))
        if not isinstance(allowed_ips, _Unset):  # None or [] removes the allowlist
            changes["allowed_ips"] = self._allowlist(allowed_ips or ())
        if not isinstance(expires_at, _Unset):
            changes["expires_at"] = _when(expires_at, now)
        if not isinstance(rate_limit, _Unset):
            changes["rate_limit"] = _rate(rate_limit)
        if not isinstance(metadata, _Unset):
            changes["metadata"] = self._listed("metadata", metadata_value(metadata))
        return changes

    @audited("key.revoke")
    def revoke(self, key_id: str) -> KeyInfo:
        """Refuse the key from now on (it stays listed with `include_revoked`)."""
        now = self._clock()
        return self._info(
            self._modify(
                key_id, lambda r: r if r.revoked_at is not None else r.replace(revoked_at=now), now
            )
        )

    @audited("key.suspend")
    def suspend(self, key_id: str, *, by_owner: bool = False) -> KeyInfo:
        """Refuse the key (401 `suspended_key`) until `resume`; nothing else changes.
        A revoked key: KeyStateConflict.

        The key remembers who suspended it (`KeyInfo.suspended_by`): an operator
        (the default: Python, the CLI, an operator of the admin app), whom only an
        operator may undo, or its owner (`by_owner=True`: self-service), who may
        resume it. Suspending a suspended key changes nothing, except that an
        operator's suspension takes over the owner's."""
        now = self._clock()

        def change(record: KeyRecord) -> KeyRecord:
            check_not_revoked(record.revoked_at, "suspend")
            if record.suspended_at is None:
                return record.replace(suspended_at=now, suspended_by_owner=by_owner)
            if record.suspended_by_owner and not by_owner:
                return record.replace(suspended_by_owner=False)  # now the operator's
            return record

        return self._info(self._modify(key_id, change, now))

    @audited("key.resume")
    def resume(self, key_id: str, *, by_owner: bool = False) -> KeyInfo:
        """Accept a suspended key again. Counts against `max_keys_per_owner` as a
        create does (a suspended key does not count). A revoked key: KeyStateConflict.
        `by_owner=True` (self-service): a key an operator suspended is refused
        (`check_owner_resume`: InvalidKeySettings naming `key`), checked against the
        key as stored, inside the store's atomic change."""
        now = self._clock()

        def change(record: KeyRecord) -> KeyRecord:
            check_not_revoked(record.revoked_at, "resume")
            if by_owner:
                check_owner_resume(record.suspended_by)
            return record.replace(suspended_at=None, suspended_by_owner=False)

        return self._info(self._modify(key_id, change, now))

    @audited("key.delete")
    def delete(self, key_id: str) -> None:
        if not self._store().delete(_key_id(key_id)):
            raise KeyNotFound(key_id)
        self._cache.forget(key_id)

    @audited("key.rotate")
    def rotate(self, key_id: str, grace: timedelta | float = timedelta(0)) -> IssuedKey:
        """A new secret now; the old one keeps working for `grace`, then stops.

        `grace` is at most 30 days (`MAX_GRACE`; more: InvalidKeySettings naming
        `grace`, nothing changed). The old secret never works past the key's own
        expiry either: the key stops then with every secret, and an `update` that
        later extends or removes the expiry ends the grace at the old expiry."""
        now = self._clock()
        until = now + rotation_grace(grace)
        issued: list[tuple[str | None, str | None]] = []

        def change(record: KeyRecord) -> KeyRecord:
            check_not_revoked(record.revoked_at, "rotate")
            new, token, secret = self._new_secret(record)
            issued[:] = [(token, secret)]
            return new.replace(
                previous_secret_hash=record.secret_hash if until > now else None,
                previous_encrypted_secret=record.encrypted_secret if until > now else None,
                previous_valid_until=until if until > now else None,
            )

        record = self._modify(key_id, change, now)
        token, secret = issued[0]
        return IssuedKey(self._info(record), token=token, secret=secret)

    def reencrypt(self) -> int:
        """Re-encrypt every signing secret (and any previous one still stored) under
        the newest master key; returns how many keys changed. After it, older
        master keys can be dropped from `signing.master_keys`. Idempotent.

        Refuses (ConfigurationError, nothing changed) when a secret is under a
        master key that is no longer in the ring."""
        ring = self._ring
        if not ring.enabled:
            raise ConfigurationError("signing.master_keys: no master key is configured")
        records = [r for r in self._store().list(None, True) if r.kind == "signing"]
        for r in records:
            for text in (r.encrypted_secret, r.previous_encrypted_secret):
                if text is not None and ring.decrypt(text, r.id) is None:
                    raise _lost_master_key(r.id)

        def again(text: str | None, key_id: str) -> str | None:
            if ring.is_current(text):
                return text
            plain = ring.decrypt(text, key_id)
            if plain is None:
                raise _lost_master_key(key_id)
            return ring.encrypt(plain, key_id)

        def change(record: KeyRecord) -> KeyRecord:
            return record.replace(
                encrypted_secret=again(record.encrypted_secret, record.id),
                previous_encrypted_secret=again(record.previous_encrypted_secret, record.id),
            )

        count = 0
        for r in records:
            current = ring.is_current(r.encrypted_secret)
            if not (current and ring.is_current(r.previous_encrypted_secret)):
                try:
                    self._modify(r.id, change, self._clock())
                except KeyNotFound:  # deleted meanwhile: nothing to re-encrypt
                    continue
                count += 1
        return count

    acreate = _offload(create)
    aget = _offload(get)
    alist = _offload(list)
    aupdate = _offload(update)
    arevoke = _offload(revoke)
    adelete = _offload(delete)
    arotate = _offload(rotate)
    asuspend = _offload(suspend)
    aresume = _offload(resume)
    areencrypt = _offload(reencrypt)

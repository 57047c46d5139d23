"""Signed requests (SPEC section 6): header profiles, the string to sign, the
signature check, freshness and replay protection.

    signature = base64(HMAC-SHA256(secret, timestamp + METHOD + path
                                           + ("?" + raw query if any) + body))

`path` and the query are the raw bytes of the request target, as the client
sent them (not percent-decoded). The pure functions (`message`, `sign`,
`format_timestamp`, `parse_timestamp`) are shared with `keyguard.client`.

`SignedRequests` (`guard.signing`) is what the guard uses. Order of checks:
headers well-formed (400) -> timestamp fresh (401 `stale_request`, no I/O) ->
key found (401 `invalid_key`) -> signature matches, the previous secret too
during a rotate grace (401 `invalid_signature`) -> the rest of `decide()` ->
signature not seen before (401 `replayed_request`). A signature is remembered
until its timestamp leaves the window, in this process always, and in Redis
(`SET NX PX`) when `cache` is a redis:// URL, so another instance refuses it
too. If Redis cannot be reached the check falls back to this process's cache
alone and logs a warning (at most once a minute): a replay to *another*
instance is then not caught until Redis is back. It does not fail closed
there, since that would turn a cache outage into a full outage of signed
traffic; it does not fail silently either.

Two identical requests signed in the same millisecond have the same
signature: the second one is refused as a replay (clients must vary the
timestamp, the path or the body).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .crypto import MasterKeyRing
from .exceptions import AuthenticationError, BadRequest, ConfigurationError, ServiceUnavailable
from .hashing import HmacSha256
from .settings import split_redis_url
from .tokens import ID_LEN

if TYPE_CHECKING:
    from .decision import Entry, Facts
    from .guard import KeyGuard

log = logging.getLogger("keyguard.signing")

FUTURE_SKEW = 5.0  # seconds a timestamp may be ahead of our clock
MAC_SIZE = hashlib.sha256().digest_size  # 32 bytes
REPLAY_LIMIT = 1_000_000  # remembered signatures per process before refusing (fail closed)
REDIS_RETRY_AFTER = 1.0  # seconds to skip Redis after it failed, so requests don't each time out
_ISO = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
).fullmatch


@dataclass(frozen=True, slots=True)
class Profile:
    """Header names of one signing scheme, and how its timestamp is written."""

    key: str
    timestamp: str
    signature: str
    passphrase: str
    iso_time: bool = False


PROFILES: dict[str, Profile] = {
    "kg": Profile("KG-ACCESS-KEY", "KG-TIMESTAMP", "KG-SIGNATURE", "KG-PASSPHRASE"),
    "bitget": Profile("ACCESS-KEY", "ACCESS-TIMESTAMP", "ACCESS-SIGN", "ACCESS-PASSPHRASE"),
    "okx": Profile(
        "OK-ACCESS-KEY",
        "OK-ACCESS-TIMESTAMP",
        "OK-ACCESS-SIGN",
        "OK-ACCESS-PASSPHRASE",
        iso_time=True,
    ),
}


def profile(name: str, headers: Mapping[str, str] | None = None) -> Profile:
    """The named profile, with single header names replaced by `headers`
    (keys `key`, `timestamp`, `signature`, `passphrase`)."""
    if name not in PROFILES:
        raise ConfigurationError(f"signing.profile: must be one of {', '.join(PROFILES)}")
    base = PROFILES[name]
    names = {
        "key": base.key,
        "timestamp": base.timestamp,
        "signature": base.signature,
        "passphrase": base.passphrase,
    }
    for field, value in (headers or {}).items():
        if field not in names:
            raise ConfigurationError(
                f"signing.headers.{field}: unknown (use key, timestamp, signature, passphrase)"
            )
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value):
            raise ConfigurationError(f"signing.headers.{field}: must be a header name")
        names[field] = value
    if len({n.lower() for n in names.values()}) != 4:
        raise ConfigurationError("signing.headers: the four header names must differ")
    return Profile(**names, iso_time=base.iso_time)


def message(timestamp: str, method: str, path: str, query: str = "", body: bytes = b"") -> bytes:
    """The string to sign: timestamp + METHOD + path + ("?" + query if any) + body."""
    target = path + "?" + query if query else path
    return (timestamp + method.upper() + target).encode("utf-8") + body


def sign(
    secret: str | bytes, timestamp: str, method: str, path: str, query: str = "", body: bytes = b""
) -> str:
    """base64(HMAC-SHA256(secret, message(...))), as a client sends it."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.digest(key, message(timestamp, method, path, query, body), "sha256")
    return base64.b64encode(mac).decode("ascii")


def format_timestamp(now: float, iso: bool = False) -> str:
    """Unix milliseconds (`kg`, `bitget`) or ISO 8601 UTC with milliseconds (`okx`)."""
    if iso:
        text = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return str(int(now * 1000))


def parse_timestamp(text: str, iso: bool = False) -> float | None:
    """Seconds since the epoch, or None when `text` is not a timestamp of that form."""
    if iso:
        if not _ISO(text):
            return None
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    # 1-15 ASCII digits (isdigit alone would admit other scripts' digits)
    return int(text) / 1000 if len(text) <= 15 and text.isascii() and text.isdigit() else None


def _bad(detail: str) -> BadRequest:
    return BadRequest("invalid_request", detail)


def invalid_signature() -> AuthenticationError:
    return AuthenticationError("invalid_signature", "The request signature does not match.")


@dataclass(slots=True)  # not frozen: made per request, and frozen __init__ is slower
class Signed:
    """A signed request whose headers parsed and whose timestamp is fresh.
    The signature, the signed text (it holds the body) and the passphrase stay
    out of `repr`."""

    key_id: str
    ts: float
    mac: bytes = dataclasses.field(repr=False)
    message: bytes = dataclasses.field(repr=False)
    needed: tuple[str, ...]
    passphrase: str | None = dataclasses.field(repr=False)


class SignedRequests:
    """`guard.signing`: recognises, checks and remembers signed requests."""

    def __init__(self, guard: KeyGuard) -> None:
        s = guard.settings.signing
        self._guard = guard
        self.ring = MasterKeyRing(s.master_keys)
        self.profile = profile(s.profile, {str(k): v for k, v in s.headers.items()})
        p = self.profile
        self._key, self._ts, self._sig, self._pass = (
            p.key.lower(),
            p.timestamp.lower(),
            p.signature.lower(),
            p.passphrase.lower(),
        )
        if {self._key, self._ts, self._sig, self._pass} & {"authorization", guard.header}:
            raise ConfigurationError(
                "signing.headers: may not reuse Authorization or the API key header"
            )
        # Without a master key no signed request can be checked: its headers are then
        # no credential, not gathered, and no body is ever read for them.
        self.enabled = self.ring.enabled
        self.names = frozenset({self._key, self._ts, self._sig} if self.enabled else ())
        self.header_names = self.names | {self._pass} if self.enabled else frozenset()
        self.max_skew = float(s.max_skew_seconds)
        self.max_body_bytes = s.max_body_bytes
        # ciphertext -> the secret's HMAC, keyed once (decrypt once, never per request)
        self._secrets: dict[str, HmacSha256 | None] = {}
        self._seen: dict[bytes, float] = {}  # MAC -> until when it is remembered
        self._expiry: deque[tuple[float, bytes]] = deque()  # (until, MAC) in arrival order
        self._seen_lock = threading.Lock()
        url, url_prefix = split_redis_url(guard.settings.cache or "")
        self._redis_url: str | None = url if _is_redis(url) else None
        self._redis: Any = None
        self._redis_lock = threading.Lock()
        self._redis_skip_until = 0.0
        self._redis_warned = 0.0
        self.replay_prefix = url_prefix + s.replay_prefix

    # -- recognise and parse (no I/O) ---------------------------------------

    def is_signed(self, headers: Mapping[str, Sequence[str]]) -> bool:
        """Does the request carry any signing header (so it is a signed credential)?"""
        return not self.names.isdisjoint(headers)

    def begin(self, facts: Facts) -> Signed:
        """Step 1 and freshness for a signed request; raises the rejection."""
        h = facts.headers
        guard = self._guard
        authorization = h.get("authorization")
        if h.get(guard.header) or (
            authorization
            and any(v.strip().partition(" ")[0].lower() == "bearer" for v in authorization)
        ):
            raise _bad("Send either a signed request or an API key, not both.")
        key_id, timestamp, signature = self._one(h)
        if facts.body is None:  # a door that cannot give the body cannot check a signature
            raise _bad("This endpoint does not accept signed requests.")
        ts = parse_timestamp(timestamp, self.profile.iso_time)
        if ts is None:
            raise _bad(f"{self.profile.timestamp} is not a valid timestamp.")
        now = guard.clock()
        if ts < now - self.max_skew or ts > now + FUTURE_SKEW:
            raise AuthenticationError(
                "stale_request", "The request timestamp is outside the allowed window."
            )
        if not (len(key_id) == ID_LEN and key_id.isascii() and key_id.isalnum()):
            raise AuthenticationError("invalid_key", "The API key is not valid.")
        try:  # strict base64 (no stray characters), decoded in C (ASCII text only)
            mac = binascii.a2b_base64(signature, strict_mode=True)
        except (binascii.Error, ValueError):
            mac = b""
        if len(mac) != MAC_SIZE:
            raise invalid_signature()
        passphrases = h.get(self._pass)
        path = facts.raw_path if facts.raw_path is not None else facts.path or ""
        return Signed(  # key_id, ts, mac, message, needed, passphrase
            key_id,
            ts,
            mac,
            message(timestamp, facts.method, path, facts.query, facts.body),
            guard.router.required(facts.method, facts.path) if facts.path is not None else (),
            passphrases[0] if passphrases else None,
        )

    def _one(self, h: Mapping[str, Sequence[str]]) -> tuple[str, str, str]:
        """The one non-blank value of each of the three signing headers (400 otherwise)."""
        k, t, s = h.get(self._key, ()), h.get(self._ts, ()), h.get(self._sig, ())
        if len(k) == len(t) == len(s) == 1:
            key_id, timestamp, signature = k[0].strip(), t[0].strip(), s[0].strip()
            if key_id and timestamp and signature:
                return key_id, timestamp, signature
        pairs = ((self._key, k), (self._ts, t), (self._sig, s))
        name = next(n for n, v in pairs if len(v) != 1 or not v[0].strip())
        raise _bad(f"A signed request needs exactly one {name.upper()} header.")

    # -- the proof (no I/O) -------------------------------------------------

    def _secret(self, ciphertext: str | None, key_id: str) -> HmacSha256 | None:
        if ciphertext is None:
            return None
        cache = self._secrets
        try:
            return cache[ciphertext]
        except KeyError:
            pass
        secret = self.ring.decrypt(ciphertext, key_id)
        value = None if secret is None else HmacSha256(secret.encode("utf-8"))
        if len(cache) >= 2 * self._guard.settings.local_cache_size:
            cache.clear()
        cache[ciphertext] = value
        return value

    def prove(self, entry: Entry, signed: Signed, now: float) -> bool:
        """True when the signature matches the key's secret (or the previous one
        within a rotate grace). False (-> `invalid_key`) when the key is not a
        signing key or its secret cannot be decrypted; `invalid_signature` otherwise."""
        record = entry.record
        if record.kind != "signing":
            return False
        secret = self._secret(record.encrypted_secret, record.id)
        if secret is None:
            return False
        if hmac.compare_digest(secret.digest(signed.message), signed.mac):
            return True
        until = record.previous_valid_until
        if until is not None and now < until:
            previous = self._secret(record.previous_encrypted_secret, record.id)
            if previous is not None and hmac.compare_digest(
                previous.digest(signed.message), signed.mac
            ):
                return True
        raise invalid_signature()

    # -- replay protection --------------------------------------------------

    def _remember_locally(self, signed: Signed, now: float) -> bool:
        """Record the MAC; False when it was already seen inside its window.

        No lock on the usual path: `dict.setdefault` is atomic, so of two threads
        with one MAC exactly one inserts it. (A MAC fixes the timestamp, so a fresh
        request never meets an expired copy of its own MAC; that case, and the
        clean-up, take the lock.)"""
        mac, until, seen = signed.mac, signed.ts + self.max_skew + 1.0, self._seen
        previous = seen.setdefault(mac, until)
        if previous is not until:  # this MAC was here before
            with self._seen_lock:
                if seen.get(mac, now) > now:
                    return False
                seen[mac] = until
        queue = self._expiry
        queue.append((until, mac))
        if queue[0][0] <= now or len(seen) > REPLAY_LIMIT:
            self._forget_expired(now, mac)
        return True

    def _forget_expired(self, now: float, mac: bytes) -> None:
        """Drop expired MACs (arrival order is nearly expiry order: from the front);
        still over the limit: refuse this one, unremembered (fail closed)."""
        seen, queue = self._seen, self._expiry
        with self._seen_lock:
            while queue and queue[0][0] <= now:
                old_until, old = queue.popleft()
                if seen.get(old) == old_until:
                    del seen[old]
            if len(seen) > REPLAY_LIMIT:
                seen.pop(mac, None)
                raise ServiceUnavailable(
                    detail="Too many signed requests in the window; try again later."
                )

    def _client(self) -> Any:
        if self._redis is None:
            with self._redis_lock:
                if self._redis is None:
                    import redis

                    assert self._redis_url is not None

                    self._redis = redis.Redis.from_url(
                        self._redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
                    )
        return self._redis

    def _remember_shared(self, signed: Signed, now: float) -> bool:
        """SET NX in Redis; False when another request (anywhere) had this MAC."""
        wall = time.monotonic()
        if wall < self._redis_skip_until:
            return True
        ttl_ms = max(1000, int((signed.ts + self.max_skew + 1.0 - now) * 1000))
        mac = base64.urlsafe_b64encode(signed.mac).decode()
        key = f"{self.replay_prefix}{signed.key_id}:{mac}"
        try:
            return bool(self._client().set(key, b"1", nx=True, px=ttl_ms))
        except Exception:  # redis.RedisError, OSError, a missing driver: fall back, loudly
            self._redis_skip_until = wall + REDIS_RETRY_AFTER
            if wall - self._redis_warned > 60.0:
                self._redis_warned = wall
                log.warning(
                    "keyguard: Redis replay cache unreachable; signed requests are checked "
                    "against this process's replay cache only until it is back",
                    exc_info=True,
                )
            return True

    def _replayed(self) -> AuthenticationError:
        return AuthenticationError("replayed_request", "This signed request was already received.")

    def remember(self, signed: Signed) -> None:
        """Refuse a signature seen before inside its window (blocking Redis call)."""
        now = self._guard.clock()
        if not self._remember_locally(signed, now):
            raise self._replayed()
        if self._redis_url is not None and not self._remember_shared(signed, now):
            raise self._replayed()

    @property
    def shared(self) -> bool:
        """Is the replay cache shared through Redis (so remembering does I/O)?"""
        return self._redis_url is not None

    async def aremember(self, signed: Signed) -> None:
        """`remember` for the event loop: the Redis call runs in a worker thread."""
        now = self._guard.clock()
        if not self._remember_locally(signed, now):
            raise self._replayed()
        if self._redis_url is not None and not await anyio.to_thread.run_sync(
            self._remember_shared, signed, now
        ):
            raise self._replayed()

    def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            client.close()


def _is_redis(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0] in {"redis", "rediss"}

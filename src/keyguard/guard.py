"""`KeyGuard`: settings, the lookup chain, and verification for both doors.

Lookup chain: in-process `LocalCache` -> shared cache (Redis, when set) ->
store. The warm path (key cached) does no I/O and never awaits; the doors
first try `warm`, which answers the usual repeat request in one call (the
token that proved the key last time, a decision already taken for this peer
and route), or for a signed request `warm_signed` once its body is read, and
fall back to `authenticate` for everything else. A miss runs
once per id however many requests wait for it (`SingleFlight`); async callers
run it in a worker thread, so the event loop never blocks on a store.
Sync and async share every line except that one call: `authenticate` and
`aauthenticate` differ only in how a miss is fetched.

`last_used_at` is buffered in memory and written in one batch a minute (and
on `close()`), never once per request.
"""

from __future__ import annotations

import atexit
import base64
import hmac
import ipaddress
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cache import ABSENT, LocalCache, SingleFlight, _Absent
from .decision import Entry, bearer_proven, credential, decide, invalid_key, remembered
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    RequestRejected,
    ServiceUnavailable,
    StoreError,
)
from .hashing import Hasher
from .models import KeyInfo, KeyRecord
from .network import Allowlist, ClientResolver, IPAddress, IPNetwork, parse_ip
from .ratelimit import Abuse
from .scopes import Router, Scopes
from .settings import Settings, load_settings
from .signing import Signed, SignedRequests
from .stores import Store, open_store
from .tokens import TokenParser

if TYPE_CHECKING:
    from .shared import SharedCache

logger = logging.getLogger("keyguard")
FLUSH_INTERVAL = 60.0
WARM_ROUTES = 256  # (peer, method, path) a cached key remembers as passed (see Entry.passed)
_NEVER = ipaddress.ip_network("0.0.0.0/32")  # matches no real peer


@dataclass(slots=True)
class Facts:
    """What a door gathered from one request (header names lower-case)."""

    method: str
    path: str
    peer: str | None
    headers: dict[str, list[str]] = field(default_factory=dict)
    query: str = ""
    # Signed requests only (the door reads them when `guard.signing.is_signed`):
    body: bytes | None = None
    raw_path: str | None = None
    # ... and only when `guard.signing.wants_fields` (rfc9421, whose signature may
    # cover any header): every header line (names lower-case) and the URL scheme.
    # Not set otherwise (read them only then): two defaulted fields would cost every
    # request's Facts about 10% more instructions.
    fields: Sequence[tuple[str, str]] = field(init=False, repr=False)
    scheme: str = field(init=False, repr=False)


class KeyGuard:
    """The one core object: `guard.keys` manages keys, `guard.verify` checks one."""

    def __init__(
        self, settings: Mapping[str, Any] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings: Settings = load_settings(settings)
        s = self.settings
        self.clock = clock
        self.store: Store = open_store(s.store)
        self.router = Router(s.public_paths, s.rules)
        self.scopes = Scopes(s.scope_implies)
        self.clients = ClientResolver(s.trusted_proxies)
        self._tokens = TokenParser(s.token_prefix)
        self._local: LocalCache[Entry] = LocalCache(s.local_cache_size)
        self._cache_positive = s.cache is not None
        self._shared = _shared_cache(s, self._dropped, self._dropped_all)
        self._flight: SingleFlight[Entry | _Absent] = SingleFlight(self._load)
        self._epoch = 0  # bumped on every local change; a load that saw an older one isn't cached
        self._hasher: Hasher | None = None
        self._ready_lock = threading.Lock()
        self._used: dict[str, float] = {}
        self._next_flush = clock() + FLUSH_INTERVAL
        self.header = s.header.lower()
        self.passphrase_header = "kg-passphrase"
        self.signing = SignedRequests(self)  # checks signing.master_keys now, not on first use
        self.header_names = (
            frozenset(
                {
                    "authorization",
                    self.header,
                    "x-forwarded-for",
                    "forwarded",
                    self.passphrase_header,
                }
            )
            | self.signing.header_names
        )
        self._cold_headers = self.header_names - {"authorization", self.header}  # see `warm`
        self._cold_signed = self.header_names - self.signing.names  # see `warm_signed`
        from .keys import KeyManager

        self.keys = KeyManager(self)
        self.abuse = Abuse(s, self.store)
        atexit.register(_flush_at_exit, weakref.ref(self))

    # -- start-up -----------------------------------------------------------

    @property
    def hasher(self) -> Hasher:
        """The secret hasher; the first call sets the store up (I/O, once)."""
        if self._hasher is None:
            with self._ready_lock:
                if self._hasher is None:
                    self.store.setup()
                    pepper = self.settings.pepper or self.store.set_meta_default(
                        "pepper", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
                    )
                    hasher = Hasher(pepper.encode(), self.settings.hashing)
                    check = hasher.digest("keyguard pepper check").hex()
                    if not hmac.compare_digest(
                        self.store.set_meta_default("pepper_check", check), check
                    ):
                        logger.error(
                            "keyguard: this pepper is not the one the store's keys were issued "
                            "under, so they will not verify (was the pepper set, changed or "
                            "dropped after keys were created?)"
                        )
                    self._hasher = hasher
        return self._hasher

    # -- the lookup chain ---------------------------------------------------

    def _prepare(self, record: KeyRecord) -> Entry:
        networks: list[IPNetwork] = []
        for text in record.allowed_ips:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                networks.append(_NEVER)  # fail closed on a corrupt stored entry
        entry = Entry(
            record,
            record.info(),
            self.scopes.expand(record.scopes),
            Allowlist(networks) if networks else None,
        )
        entry.limited = self.abuse.applies(entry)
        return entry

    def _load(self, key_id: str) -> Entry | _Absent:
        epoch = self._epoch
        try:
            self.hasher  # noqa: B018 - sets the store up on first use
            shared, fetch = self._shared, self.store.get
            record = fetch(key_id) if shared is None else shared.load(key_id, fetch)
        except StoreError as exc:
            raise ServiceUnavailable() from exc
        value: Entry | _Absent = ABSENT if record is None else self._prepare(record)
        if epoch == self._epoch and (self._cache_positive or value is ABSENT):
            ttl = self.settings.local_cache_ttl
            self._local.set(key_id, value, ttl)
        return value

    def forget(self, key_id: str) -> None:
        """Drop any cached copy of a key (called after every change), on every instance."""
        self._dropped(key_id)
        if self._shared is not None:
            self._shared.publish(key_id)

    def _dropped(self, key_id: str) -> None:
        self._epoch += 1
        self._local.drop(key_id)

    def _dropped_all(self) -> None:
        self._epoch += 1
        self._local.clear()

    # -- verification -------------------------------------------------------

    def verify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        """Check a bearer token without HTTP; raises the errors of SPEC section 5.
        With `client_ip`, failed-attempt throttling applies to that address."""
        if client_ip is None:  # no client to count failures against: no handler in the way
            entry = self._verified(token, None, scopes, passphrase)
        else:
            ip = _ip(client_ip)
            self.abuse.check_client(ip)
            try:
                entry = self._verified(token, ip, scopes, passphrase)
            except AuthenticationError as exc:
                if exc.code != "missing_credentials":
                    self.abuse.failed(ip)
                raise
        self.abuse.admit(entry)
        return entry.info

    def _verified(
        self, token: str, ip: IPAddress | None, scopes: Sequence[str], passphrase: str | None
    ) -> Entry:
        key_id, secret, found = self._bearer(token)
        found = found or self._fetch(key_id)
        return self._decide(found, ip, _scopes(scopes), passphrase, token=token, secret=secret)

    async def averify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        ip = _ip(client_ip)
        if client_ip is not None:
            self.abuse.check_client(ip)
        try:
            key_id, secret, found = self._bearer(token)
            found = found or await self._afetch(key_id)
            entry = self._decide(found, ip, _scopes(scopes), passphrase, token=token, secret=secret)
        except AuthenticationError as exc:
            if client_ip is not None and exc.code != "missing_credentials":
                await self.abuse.afailed(ip)
            raise
        if self.abuse.applies(entry):
            await self.abuse.aadmit(entry)
        return entry.info

    def warm(
        self, method: str, path: str, peer: str | None, headers: Mapping[str, Sequence[str]]
    ) -> Entry | None:
        """Steps 1-8 for the usual request, in one call that never awaits: a lone
        bearer credential header whose token already proved its cached key (see
        `remembered`), no forwarding, passphrase or signing header, a client that
        is not throttled, rate limits counted in memory. None when `authenticate`
        must answer: a miss, a first use, anything that needs I/O or fails steps 1-7
        (so it is counted there). Raises only step 8's 429 (a spent rate limit or
        quota)."""
        abuse = self.abuse
        if not self._cold_headers.isdisjoint(headers) or (abuse.blocked and abuse.throttles(peer)):
            return None
        try:
            token = credential(headers.get("authorization", ()), headers.get(self.header, ()))
        except RequestRejected:
            return None
        key_id = self._tokens.quick_id(token)
        entry = None if key_id is None else self._local.peek(key_id)
        if not remembered(entry, token):
            return None
        now = self.clock()
        if not self._warm_passes(entry, method, path, peer, now):
            return None
        return self._warm_admit(entry, now)

    def warm_signed(self, facts: Facts) -> Entry | None:
        """`warm` for a signed request whose body the door has read: a cached
        signing key, no forwarding, passphrase or bearer header, the replay cache
        in this process (with Redis, remembering is I/O: `aauthenticate` does it).
        The signature is checked and remembered as `authenticate` does it (the
        same calls); None when that must answer instead, as for `warm`."""
        signing, abuse = self.signing, self.abuse
        if (
            not self._cold_signed.isdisjoint(facts.headers)
            or (abuse.blocked and abuse.throttles(facts.peer))
            or signing.shared
        ):
            return None
        try:
            signed = signing.begin(facts)
            entry = self._local.peek(signed.key_id)
            now = self.clock()
            if not isinstance(entry, Entry) or not signing.prove(entry, signed, now):
                return None
        except RequestRejected:
            return None
        if not self._warm_passes(entry, facts.method, facts.path, facts.peer, now):
            return None
        try:
            signing.remember(signed)  # last: a refused request must not use the signature up
        except RequestRejected:
            return None  # a replay: `authenticate` refuses it again, and counts it
        return self._warm_admit(entry, now)

    def _warm_passes(
        self, entry: Entry, method: str, path: str, peer: str | None, now: float
    ) -> bool:
        """Steps 4-8 of a warm request whose credential proved `entry`, short of
        counting it: `decide` for this peer (no forwarding header: the peer is the
        client) and route, unless it passed before (see `Entry.passed`)."""
        if entry.limited and not self.abuse.admits_now(entry):
            return False
        seen = (peer, method, path)
        if now >= entry.until or seen not in entry.passed:
            ip = parse_ip(peer) if peer else None
            try:
                hasher = self._hasher or self.hasher
                decide(entry, True, now, hasher, None, ip, self.router.required(method, path))
            except RequestRejected:
                return False
            if len(entry.passed) < WARM_ROUTES:
                entry.passed.add(seen)
        return True

    def _warm_admit(self, entry: Entry, now: float) -> Entry:
        self._used[entry.record.id] = now  # as in `_decide`
        if now >= self._next_flush:
            self._flush_soon(now)
        if entry.limited:
            self.abuse.admit(entry)  # in memory; a spent limit raises 429 for the door to send
        return entry

    def authenticate(self, facts: Facts) -> Entry:
        """Steps 1-8 for a request the door described; returns the passing entry."""
        ip = self._client(facts)
        self.abuse.check_client(ip)  # a throttled client is refused before any parsing or lookup
        try:
            if self.signing.is_signed(facts.headers):
                signed = self.signing.begin(facts)
                found = self._local.get(signed.key_id) or self._fetch(signed.key_id)
                entry = self._decide(found, ip, signed.needed, signed.passphrase, signed=signed)
                self.signing.remember(signed)
            else:
                token, needed, passphrase = self._begin(facts)
                key_id, secret, cached = self._bearer(token)
                found = cached or self._fetch(key_id)
                entry = self._decide(found, ip, needed, passphrase, token=token, secret=secret)
        except AuthenticationError as exc:
            if exc.code != "missing_credentials":
                self.abuse.failed(ip)
            raise
        self.abuse.admit(entry)
        return entry

    async def aauthenticate(self, facts: Facts) -> Entry:
        ip = self._client(facts)
        self.abuse.check_client(ip)
        try:
            if self.signing.is_signed(facts.headers):
                signed = self.signing.begin(facts)
                found = self._local.get(signed.key_id) or await self._afetch(signed.key_id)
                entry = self._decide(found, ip, signed.needed, signed.passphrase, signed=signed)
                if self.signing.shared:  # Redis: the call runs in a worker thread
                    await self.signing.aremember(signed)
                else:
                    self.signing.remember(signed)
            else:
                token, needed, passphrase = self._begin(facts)
                key_id, secret, cached = self._bearer(token)
                found = cached or await self._afetch(key_id)
                entry = self._decide(found, ip, needed, passphrase, token=token, secret=secret)
        except AuthenticationError as exc:
            if exc.code != "missing_credentials":
                await self.abuse.afailed(ip)
            raise
        if self.abuse.applies(entry):
            await self.abuse.aadmit(entry)
        return entry

    def _begin(self, facts: Facts) -> tuple[str, tuple[str, ...], str | None]:
        """Step 1 for a bearer request: (token, scopes needed, passphrase)."""
        h = facts.headers
        token = credential(h.get("authorization", ()), h.get(self.header, ()))
        passphrases = h.get(self.passphrase_header)
        return (
            token,
            self.router.required(facts.method, facts.path),
            passphrases[0] if passphrases else None,
        )

    def _bearer(self, token: str) -> tuple[str, str | None, Entry | _Absent | None]:
        """Step 2, and step 3 when memory can answer it, before any I/O.

        Returns (key id, the secret still to check or None when this very token
        already proved the cached entry, the cached entry or None)."""
        tokens = self._tokens
        key_id = tokens.quick_id(token)
        if key_id is None:
            raise invalid_key()
        found = self._local.get(key_id)
        if found is not None and remembered(found, token):
            return key_id, None, found
        # The checksum first: it refuses random tokens fastest (split only checks shape).
        if not tokens.checksum_ok(token):
            raise invalid_key()
        parts = tokens.split(token)
        if parts is None:
            raise invalid_key()
        key_id, secret = parts  # split() accepts only tokens whose quick_id is this id
        return key_id, secret, found

    def _client(self, facts: Facts) -> IPAddress | None:
        h = facts.headers
        xff, fwd = h.get("x-forwarded-for", ()), h.get("forwarded", ())
        return self.clients.resolve(facts.peer, xff, fwd)

    def _fetch(self, key_id: str) -> Entry | _Absent:
        return self._flight(key_id)

    async def _afetch(self, key_id: str) -> Entry | _Absent:
        return await self._flight.acall(key_id)

    def _decide(
        self,
        entry: Entry | _Absent,
        ip: IPAddress | None,
        needed: Sequence[str],
        passphrase: str | None,
        *,
        token: str = "",
        secret: str | None = None,
        signed: Signed | None = None,
    ) -> Entry:
        if entry is ABSENT:
            raise invalid_key()
        assert isinstance(entry, Entry)  # for mypy; ABSENT is the only other value
        now = self.clock()
        hasher = self._hasher or self.hasher  # the property only until it is set up
        if signed is not None:
            proven = self.signing.prove(entry, signed, now)
        elif secret is None:  # `remembered`: this token proved this entry before
            proven = True
        else:
            proven = bearer_proven(entry, token, secret, hasher, now)
        decide(entry, proven, now, hasher, passphrase, ip, needed)
        self._used[entry.record.id] = now  # `last_used_at`, buffered
        if now >= self._next_flush:
            self._flush_soon(now)
        return entry

    def _flush_soon(self, now: float) -> None:
        """Once a minute, a thread writes the buffered `last_used_at` times out."""
        self._next_flush = now + FLUSH_INTERVAL
        threading.Thread(target=self.flush, name="keyguard-flush", daemon=True).start()

    def has_scopes(self, key: KeyInfo, needed: Iterable[str]) -> list[str]:
        """The scopes in `needed` that `key` lacks (after implication and wildcards)."""
        return Scopes.missing(self.scopes.expand(key.scopes), needed)

    # -- last use -----------------------------------------------------------

    def pending_use(self, key_id: str) -> float | None:
        return self._used.get(key_id)

    def flush(self) -> None:
        """Write buffered `last_used_at` times to the store (best effort)."""
        self.abuse.flush()
        used, self._used = self._used, {}
        if not used:
            return
        # A request thread that read `self._used` just before the swap may still add
        # to `used`: the store iterates a snapshot (dict.copy is atomic), never a dict
        # that changes size under it.
        used = used.copy()
        try:
            self.store.touch(used)
        except StoreError:
            for key_id, ts in used.items():  # keep them for the next try
                self._used.setdefault(key_id, ts)

    def close(self) -> None:
        self.flush()
        self.signing.close()
        if self._shared is not None:
            self._shared.close()
        self.abuse.close()
        self.store.close()


def _flush_at_exit(ref: weakref.ref[KeyGuard]) -> None:
    guard = ref()
    if guard is not None:
        guard.flush()


def _scopes(value: str | Sequence[str]) -> Sequence[str]:
    return (value,) if isinstance(value, str) else value


def _shared_cache(
    s: Settings, on_change: Callable[[str], None], on_reset: Callable[[], None]
) -> SharedCache | None:
    if s.cache is None or not s.cache.startswith(("redis://", "rediss://")):
        return None
    try:
        from .shared import SharedCache
    except ImportError as exc:
        raise ConfigurationError(
            f"cache: a redis:// cache needs its driver: pip install 'keyguard[redis]' ({exc.name})"
        ) from None
    return SharedCache(s.cache, s.cache_ttl, on_change, on_reset)


def _ip(value: str | IPAddress | None) -> IPAddress | None:
    if value is None or isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return parse_ip(value)

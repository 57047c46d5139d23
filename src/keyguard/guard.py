"""`KeyGuard`: settings, the lookup chain, and verification for both doors.

Lookup chain: in-process `LocalCache` -> shared cache (Redis, when set) ->
store. The warm path (key cached) does no I/O and never awaits. A miss runs
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
import ipaddress
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cache import ABSENT, LocalCache, SingleFlight, _Absent
from .decision import Entry, bearer_proven, credential, decide, invalid_key
from .exceptions import ServiceUnavailable, StoreError
from .hashing import Hasher
from .models import KeyInfo, KeyRecord
from .network import ClientResolver, IPAddress, IPNetwork, parse_ip
from .scopes import Router, Scopes
from .settings import Settings, load_settings
from .stores import Store, open_store
from .tokens import TokenParser

FLUSH_INTERVAL = 60.0
_NEVER = ipaddress.ip_network("0.0.0.0/32")  # matches no real peer


@dataclass(slots=True)
class Facts:
    """What a door gathered from one request (header names lower-case)."""

    method: str
    path: str
    peer: str | None
    headers: dict[str, list[str]] = field(default_factory=dict)
    query: str = ""


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
        self._flight: SingleFlight[Entry | _Absent] = SingleFlight(self._load)
        self._epoch = 0  # bumped on every local change; a load that saw an older one isn't cached
        self._hasher: Hasher | None = None
        self._ready_lock = threading.Lock()
        self._used: dict[str, float] = {}
        self._next_flush = clock() + FLUSH_INTERVAL
        self.header = s.header.lower()
        self.passphrase_header = "kg-passphrase"
        self.header_names = frozenset(
            {"authorization", self.header, "x-forwarded-for", "forwarded", self.passphrase_header}
        )
        from .keys import KeyManager

        self.keys = KeyManager(self)
        ref = weakref.ref(self)
        atexit.register(lambda: (g := ref()) is not None and g.flush())

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
                    self._hasher = Hasher(pepper.encode(), self.settings.hashing)
        return self._hasher

    # -- the lookup chain ---------------------------------------------------

    def _prepare(self, record: KeyRecord) -> Entry:
        networks: list[IPNetwork] = []
        for text in record.allowed_ips:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                networks.append(_NEVER)  # fail closed on a corrupt stored entry
        return Entry(record, record.info(), self.scopes.expand(record.scopes), tuple(networks))

    def _load(self, key_id: str) -> Entry | _Absent:
        epoch = self._epoch
        try:
            self.hasher  # noqa: B018 - sets the store up on first use
            record = self.store.get(key_id)
        except StoreError as exc:
            raise ServiceUnavailable() from exc
        value: Entry | _Absent = ABSENT if record is None else self._prepare(record)
        if epoch == self._epoch and (self._cache_positive or value is ABSENT):
            ttl = self.settings.local_cache_ttl
            self._local.set(key_id, value, ttl)
        return value

    def forget(self, key_id: str) -> None:
        """Drop any cached copy of a key (called after every change)."""
        self._epoch += 1
        self._local.drop(key_id)

    # -- verification -------------------------------------------------------

    def verify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        """Check a bearer token without HTTP; raises the errors of SPEC section 5."""
        key_id, secret = self._parse(token)
        entry = self._local.get(key_id) or self._fetch(key_id)
        return self._decide(entry, secret, _ip(client_ip), scopes, passphrase).info

    async def averify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        key_id, secret = self._parse(token)
        entry = self._local.get(key_id) or await self._afetch(key_id)
        return self._decide(entry, secret, _ip(client_ip), scopes, passphrase).info

    def authenticate(self, facts: Facts) -> Entry:
        """Steps 1-7 for a request the door described; returns the passing entry."""
        key_id, secret, ip, needed, passphrase = self._begin(facts)
        entry = self._local.get(key_id) or self._fetch(key_id)
        return self._decide(entry, secret, ip, needed, passphrase)

    async def aauthenticate(self, facts: Facts) -> Entry:
        key_id, secret, ip, needed, passphrase = self._begin(facts)
        entry = self._local.get(key_id) or await self._afetch(key_id)
        return self._decide(entry, secret, ip, needed, passphrase)

    def _begin(
        self, facts: Facts
    ) -> tuple[str, str, IPAddress | None, tuple[str, ...], str | None]:
        h = facts.headers
        token = credential(h.get("authorization", ()), h.get(self.header, ()))
        parsed = self._tokens.parse(token) if isinstance(token, str) else None  # = _parse, inlined
        if parsed is None:
            raise invalid_key()
        key_id, secret = parsed
        ip = self.clients.resolve(facts.peer, h.get("x-forwarded-for", ()), h.get("forwarded", ()))
        passphrases = h.get(self.passphrase_header)
        return (
            key_id,
            secret,
            ip,
            self.router.required(facts.method, facts.path),
            passphrases[0] if passphrases else None,
        )

    def _parse(self, token: str) -> tuple[str, str]:
        parsed = self._tokens.parse(token) if isinstance(token, str) else None
        if parsed is None:
            raise invalid_key()
        return parsed

    def _fetch(self, key_id: str) -> Entry | _Absent:
        return self._flight(key_id)

    async def _afetch(self, key_id: str) -> Entry | _Absent:
        return await self._flight.acall(key_id)

    def _decide(
        self,
        entry: Entry | _Absent,
        secret: str,
        ip: IPAddress | None,
        needed: Sequence[str],
        passphrase: str | None,
    ) -> Entry:
        if entry is ABSENT:
            raise invalid_key()
        assert isinstance(entry, Entry)  # for mypy; ABSENT is the only other value
        now = self.clock()
        hasher = self._hasher or self.hasher  # the property only until it is set up
        decide(
            entry,
            proven=bearer_proven(entry, secret, hasher, now),
            now=now,
            hasher=hasher,
            passphrase=passphrase,
            client_ip=ip,
            needed=needed,
        )
        self._used[entry.record.id] = now
        if now >= self._next_flush:
            self._next_flush = now + FLUSH_INTERVAL
            threading.Thread(target=self.flush, name="keyguard-flush", daemon=True).start()
        return entry

    def has_scopes(self, key: KeyInfo, needed: Iterable[str]) -> list[str]:
        """The scopes in `needed` that `key` lacks (after implication and wildcards)."""
        return Scopes.missing(self.scopes.expand(key.scopes), needed)

    # -- last use -----------------------------------------------------------

    def pending_use(self, key_id: str) -> float | None:
        return self._used.get(key_id)

    def flush(self) -> None:
        """Write buffered `last_used_at` times to the store (best effort)."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            self.store.touch(used)
        except StoreError:
            for key_id, ts in used.items():  # keep them for the next try
                self._used.setdefault(key_id, ts)

    def close(self) -> None:
        self.flush()
        self.store.close()


def _ip(value: str | IPAddress | None) -> IPAddress | None:
    if value is None or isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return parse_ip(value)

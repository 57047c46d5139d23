"""`KeyGuard`: the façade that builds the parts and wires them. No rule lives here.

    settings -> store, key cache (cache.py), signed-request checker (signing.py),
                abuse counters (ratelimit.py), key manager (keys.py)
             -> the step's parts (decision.py) and its two drivers (check.py)

`verify`/`averify` describe a bare token as `Facts` and run the same drivers
as the doors. `last_used_at` and `last_used_from` are buffered by the drivers
and written here in one batch a minute (and on `close()`), never once per
request.
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
from typing import TYPE_CHECKING, Any

from . import audit
from .cache import KeyCache
from .check import Drivers
from .decision import Entry, Facts, Parts, Verdict
from .exceptions import StoreError
from .hashing import Hasher
from .keys import KeyManager
from .models import KeyInfo, KeyRecord
from .network import Allowlist, ClientResolver, IPAddress, parse_ip
from .ratelimit import Abuse
from .redis import RedisTier, open_tier
from .replay import ReplayCache
from .scopes import Router, Scopes
from .settings import Settings, load_settings
from .signing import SignedRequests
from .startup import log_start
from .stores import Store, open_store
from .tokens import TokenParser

if TYPE_CHECKING:
    from .shared import SharedCache

logger = logging.getLogger("keyguard")


class KeyGuard:
    """The one core object: `guard.keys` manages keys, `guard.verify` checks one."""

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
    ) -> None:
        """`clock` and `store` replace the wall clock and the store the `store`
        setting names (tests, a custom backend)."""
        self.settings: Settings = load_settings(settings)
        s = self.settings
        self.clock = clock
        self.store: Store = open_store(s.store) if store is None else store
        self.router = Router(s.public_paths, s.rules)
        self.scopes = Scopes(s.scope_implies)
        self.clients = ClientResolver(s.trusted_proxies, s.proxy_header)
        self.header = s.header.lower()
        self.passphrase_header = "kg-passphrase"
        self._hasher: Hasher | None = None
        self._ready_lock = threading.Lock()
        self.signing = SignedRequests(s, clock)  # checks signing.master_keys now
        # The one Redis tier (None without a Redis cache): the shared cache, the
        # invalidation channel, the replay cache, rate limits, failures and quotas.
        self.redis = open_tier(s.cache)
        self.abuse = Abuse(s, self.store, self.redis)
        self.replay = ReplayCache(self.redis, s.signing.max_skew_seconds, clock)
        self.cache = KeyCache(
            self.store,
            self._prepare,
            lambda: self.hasher,
            size=s.local_cache_size,
            ttl=s.local_cache_ttl,
            cache_positive=s.cache is not None,
            shared=lambda on_change, on_reset: _shared_cache(
                s, self.redis, on_change, on_reset, lambda: self.store.get_meta("changed")
            ),
        )
        self.header_names = (
            frozenset({"authorization", self.header, self.passphrase_header})
            | self.clients.header_names  # the one forwarding family the proxies write
            | self.signing.header_names  # empty unless signed requests can be checked
        )
        self.parts = Parts(
            router=self.router,
            clients=self.clients,
            tokens=TokenParser(s.token_prefix),
            peek=self.cache.peek,
            abuse=self.abuse,
            signing=self.signing,
            clock=clock,
            header=self.header,
            passphrase_header=self.passphrase_header,
            require_tls=s.require_tls,
            setup=lambda: self.hasher,
            cold=self.clients.header_names | {self.passphrase_header},
            signed=self.signing.names,  # empty unless signed requests can be checked
            signing_on=self.signing.enabled,
        )
        self.drivers = Drivers(
            self.parts, self.cache, self.abuse, self.replay, clock, lambda: self.flush()
        )
        self.drivers.refusals.append(audit.observer(self.parts.tokens))
        self.keys = KeyManager(
            self.store,
            s,
            self.cache,
            self.signing.ring,
            clock,
            lambda: self.hasher,
            self.pending_use,
        )
        atexit.register(_flush_at_exit, weakref.ref(self))
        log_start(s)  # INFO: which store and cache (passwords masked); WARNING: many workers

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
                    self._hasher = self.parts.hasher = hasher
        return self._hasher

    def _prepare(self, record: KeyRecord) -> Entry:
        # Every entry parses: `KeyRecord.from_json` refuses a stored row where one does not.
        networks = [ipaddress.ip_network(text, strict=False) for text in record.allowed_ips]
        return Entry(
            record,
            record.info(),
            self.scopes.expand(record.scopes),
            Allowlist(networks) if networks else None,
            self.abuse.applies(record),
        )

    def forget(self, key_id: str) -> None:
        """Drop any cached copy of a key (called after every change), on every instance."""
        self.cache.forget(key_id)

    # -- checking -------------------------------------------------------------

    def check(self, facts: Facts) -> Verdict:
        """SPEC section 4 for one request, by the sync driver (the WSGI door's)."""
        return self.drivers.run(facts)

    async def acheck(self, facts: Facts) -> Verdict:
        """SPEC section 4 for one request, by the async driver (the ASGI door's)."""
        return await self.drivers.arun(facts)

    def verify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: str | Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        """Check a bearer token without HTTP; raises the errors of SPEC section 5.
        With `client_ip`, the allowlist and failed-attempt throttling apply to it."""
        verdict = self.drivers.run(_bare(token, client_ip, scopes, passphrase))
        if verdict.error is not None:
            raise verdict.error
        assert verdict.entry is not None  # a bare token is never on a public path
        return verdict.entry.info

    async def averify(
        self,
        token: str,
        *,
        client_ip: str | IPAddress | None = None,
        scopes: str | Sequence[str] = (),
        passphrase: str | None = None,
    ) -> KeyInfo:
        verdict = await self.drivers.arun(_bare(token, client_ip, scopes, passphrase))
        if verdict.error is not None:
            raise verdict.error
        assert verdict.entry is not None
        return verdict.entry.info

    def has_scopes(self, key: KeyInfo, needed: Iterable[str]) -> list[str]:
        """The scopes in `needed` that `key` lacks (after implication and wildcards)."""
        return Scopes.missing(self.scopes.expand(key.scopes), needed)

    # -- last use -----------------------------------------------------------

    def pending_use(self, key_id: str) -> tuple[float, str | None] | None:
        """The buffered last use of a key not yet flushed: (time, client IP)."""
        use = self.drivers.used.get(key_id)
        return None if use is None else (use[0], _client_text(use[1]))

    def flush(self) -> None:
        """Write buffered last uses (time and client IP) to the store (best effort)."""
        self.abuse.flush()
        drivers = self.drivers
        used, drivers.used = drivers.used, {}
        if not used:
            return
        # A request thread that read `self._used` just before the swap may still add
        # to `used`: the store iterates a snapshot (dict.copy is atomic), never a dict
        # that changes size under it.
        used = used.copy()
        try:
            self.store.touch({k: (ts, _client_text(ip)) for k, (ts, ip) in used.items()})
        except StoreError:
            for key_id, use in used.items():  # keep them for the next try
                drivers.used.setdefault(key_id, use)

    def close(self) -> None:
        self.flush()
        self.replay.close()
        self.cache.close()
        self.abuse.close()
        if self.redis is not None:
            self.redis.close()
        self.store.close()


def _bare(
    token: str,
    client_ip: str | IPAddress | None,
    scopes: str | Sequence[str],
    passphrase: str | None,
) -> Facts:
    """`verify`'s facts: no route, no transport, the client (if named) as the peer."""
    facts = Facts("", None, None if client_ip is None else str(client_ip), scheme=None)
    facts.scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
    facts.token = token if isinstance(token, str) else ""
    facts.passphrase = passphrase
    return facts


def _client_text(client: IPAddress | str | None) -> str | None:
    """A buffered client as stored: an address's text, None for none."""
    if isinstance(client, str):
        client = parse_ip(client)
    return None if client is None else str(client)


def _flush_at_exit(ref: weakref.ref[KeyGuard]) -> None:
    guard = ref()
    if guard is not None:
        guard.flush()


def _shared_cache(
    s: Settings,
    tier: RedisTier | None,
    on_change: Callable[[str], None],
    on_reset: Callable[[], None],
    changed: Callable[[], str | None],
) -> SharedCache | None:
    if tier is None:
        return None
    from .shared import SharedCache

    return SharedCache(tier, s.cache_ttl, on_change, on_reset, changed, s.local_cache_ttl)

"""A hypothesis state machine of the key lifecycle: create, update scopes and
IPs, rotate (with grace), suspend, resume, revoke, delete, and time passing
past expiry and grace. After every step, any token ever issued, sent from some
address to some route (whose rules need some scopes), gets what a plain model
says. The guard runs with an injected clock and its caches ON (`memory://`,
and Redis), and requests go through the step as a door sends them, so the
warm path's memory (the proving token and the routes passed, cache.Slot) is
reached: it must never answer differently from the record as it is now."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from keyguard import InvalidKeySettings, KeyGuard, KeyNotFound
from keyguard.decision import Facts

# Routes and what their rules need (the model's `needed`).
ROUTES = {"/open": (), "/read": ("read",), "/write": ("write",), "/both": ("read", "write")}
RULES = [
    {"path": "/read", "scopes": ["read"]},
    {"path": "/write", "scopes": ["write"]},
    {"path": "/both", "scopes": ["read", "write"]},
]

IPS = ["192.0.2.5", "198.51.100.7", "203.0.113.1"]
ALLOWLISTS = [(), ("192.0.2.0/24",), ("198.51.100.7",), ("192.0.2.0/24", "203.0.113.0/24")]
SCOPES = ["read", "write", "*"]
scope_sets = st.lists(st.sampled_from(SCOPES), unique=True, max_size=3)


@dataclass
class ModelKey:
    id: str
    token: str
    scopes: tuple[str, ...]
    ips: tuple[str, ...]
    expires_at: float | None
    previous: str | None = None
    previous_until: float | None = None
    revoked: bool = False
    suspended: bool = False
    deleted: bool = False
    retired: list[str] = field(default_factory=list)


def _in(ip: str, allowlist: tuple[str, ...]) -> bool:
    import ipaddress

    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(n) for n in allowlist)


class Lifecycle(RuleBasedStateMachine):
    keys = Bundle("keys")
    cache: str | None = "memory://"  # the subclasses below: memory://, Redis

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_700_000_000.0
        self.guard = KeyGuard(
            {
                "store": "memory://",
                "cache": self.cache,
                "local_cache_ttl": 3_600,  # cached across the whole run: only changes drop it
                "rules": RULES,
                "policy": {
                    "allow_private_ips": True,
                    "unrestricted_max_days": None,
                    "max_keys_per_owner": None,
                },
                "abuse": {"max_failures": None},
            },
            clock=lambda: self.now,
        )
        self.model: dict[str, ModelKey] = {}
        self.tokens: list[str] = []

    def teardown(self) -> None:
        self.guard.close()

    # -- the plain model ---------------------------------------------------------

    def expected(self, token: str, ip: str, needed: tuple[str, ...]) -> str:
        key = next(
            (k for k in self.model.values() if token in (k.token, k.previous, *k.retired)), None
        )
        if key is None or key.deleted:
            return "invalid_key"
        proven = token == key.token or (
            token == key.previous
            and key.previous_until is not None
            and self.now < key.previous_until
        )
        if not proven:
            return "invalid_key"
        if key.revoked:
            return "revoked_key"
        if key.expires_at is not None and key.expires_at <= self.now:
            return "expired_key"
        if key.suspended:
            return "suspended_key"
        if key.ips and not _in(ip, key.ips):
            return "ip_not_allowed"
        if "*" not in key.scopes and any(s not in key.scopes for s in needed):
            return "insufficient_scope"
        return "ok"

    # -- rules -------------------------------------------------------------------

    @rule(
        target=keys,
        scopes=scope_sets,
        ips=st.sampled_from(ALLOWLISTS),
        expires_in=st.sampled_from([None, 30, 60, 600, 3_600]),
    )
    def create(self, scopes: list[str], ips: tuple[str, ...], expires_in: int | None) -> str:
        issued = self.guard.keys.create(
            owner="o", name="k", scopes=scopes, allowed_ips=list(ips), expires_in=expires_in
        )
        assert issued.token is not None
        self.model[issued.id] = ModelKey(
            issued.id,
            issued.token,
            tuple(scopes),
            ips,
            None if expires_in is None else self.now + expires_in,
        )
        self.tokens.append(issued.token)
        return issued.id

    @rule(key_id=keys, scopes=scope_sets)
    def update_scopes(self, key_id: str, scopes: list[str]) -> None:
        key = self.model[key_id]
        try:
            info = self.guard.keys.update(key_id, scopes=scopes)
        except KeyNotFound:
            assert key.deleted
            return
        assert not key.deleted and info.scopes == tuple(scopes)
        key.scopes = tuple(scopes)

    @rule(key_id=keys, ips=st.sampled_from(ALLOWLISTS))
    def update_ips(self, key_id: str, ips: tuple[str, ...]) -> None:
        key = self.model[key_id]
        try:
            self.guard.keys.update(key_id, allowed_ips=list(ips))
        except KeyNotFound:
            assert key.deleted
            return
        assert not key.deleted
        key.ips = ips

    @rule(key_id=keys, grace=st.sampled_from([0, 60, 3_600]))
    def rotate(self, key_id: str, grace: int) -> None:
        key = self.model[key_id]
        try:
            issued = self.guard.keys.rotate(key_id, grace=grace)
        except KeyNotFound:
            assert key.deleted
            return
        except InvalidKeySettings:
            assert key.revoked and not key.deleted
            return
        assert not key.deleted and not key.revoked and issued.token is not None
        if key.previous is not None:
            key.retired.append(key.previous)
        key.previous, key.previous_until = (
            (key.token, self.now + grace) if grace > 0 else (None, None)
        )
        if key.previous is None:
            key.retired.append(key.token)
        key.token = issued.token
        self.tokens.append(issued.token)

    @rule(key_id=keys)
    def revoke(self, key_id: str) -> None:
        key = self.model[key_id]
        try:
            self.guard.keys.revoke(key_id)
        except KeyNotFound:
            assert key.deleted
            return
        key.revoked = True

    @rule(key_id=keys)
    def suspend(self, key_id: str) -> None:
        key = self.model[key_id]
        try:
            self.guard.keys.suspend(key_id)
        except KeyNotFound:
            assert key.deleted
            return
        except InvalidKeySettings:
            assert key.revoked
            return
        key.suspended = True

    @rule(key_id=keys)
    def resume(self, key_id: str) -> None:
        key = self.model[key_id]
        try:
            self.guard.keys.resume(key_id)
        except KeyNotFound:
            assert key.deleted
            return
        except InvalidKeySettings:
            assert key.revoked
            return
        key.suspended = False

    @rule(key_id=consumes(keys))
    def delete(self, key_id: str) -> None:
        self.guard.keys.delete(key_id)
        self.model[key_id].deleted = True

    @rule(seconds=st.sampled_from([0.5, 30, 60, 600, 3_600]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        data=st.data(),
        ip=st.sampled_from(IPS),
        route=st.sampled_from(sorted(ROUTES)),
    )
    def request_one(self, data: st.DataObject, ip: str, route: str) -> None:
        if self.tokens:
            self._check(data.draw(st.sampled_from(self.tokens)), ip, route)

    @invariant()
    def every_token_agrees(self) -> None:
        routes = sorted(ROUTES)
        for i, token in enumerate(self.tokens[-12:]):
            self._check(token, IPS[i % len(IPS)], routes[i % len(routes)])

    @invariant()
    def the_cache_remembers_only_what_holds(self) -> None:
        """The slot invariant (cache.Slot): a remembered proof is a token that
        matches the entry's current hash; a remembered route is one the rules of
        steps 4-7 pass for that entry from that peer, while it is live."""
        hasher = self.guard.hasher
        tokens = self.guard.parts.tokens
        for slot in list(self.guard.cache._local._data.values()):
            entry = slot.entry
            if not hasattr(entry, "record"):
                assert slot.proof is None and not slot.routes  # an unknown id: nothing
                continue
            record = entry.record
            if slot.proof is not None:
                secret = slot.proof[tokens.secret_start : tokens.secret_end]
                assert hasher.check(record.secret_hash, secret)
            for peer, method, path in slot.routes:
                assert method == "GET" and record.passphrase_hash is None
                assert not record.allowed_ips or (
                    peer is not None and _in(peer, record.allowed_ips)
                )
                assert "*" in record.scopes or set(ROUTES[path]) <= set(record.scopes)
                assert record.revoked_at is None and record.suspended_at is None

    def _check(self, token: str, ip: str, route: str) -> None:
        """The request as a door sends it (twice: cold, then with what the first taught
        the cache), and as `verify` does."""
        needed = ROUTES[route]
        want = self.expected(token, ip, needed)
        facts = Facts("GET", route, ip, {"authorization": [f"Bearer {token}"]})
        for _ in range(2):
            verdict = self.guard.check(facts)
            got = "ok" if verdict.error is None else verdict.error.code
            if verdict.entry is not None:
                key = self.model[verdict.entry.record.id]
                assert token in (key.token, key.previous)
                assert verdict.entry.info.scopes == key.scopes
            assert got == want, (token[-6:], ip, route, self.now)
        try:
            self.guard.verify(token, client_ip=ip, scopes=needed)
            got = "ok"
        except Exception as exc:  # noqa: BLE001 - the code is what is compared
            got = getattr(exc, "code", repr(exc))
        assert got == want, ("verify", token[-6:], ip, route, self.now)


STEPS = settings(max_examples=60, stateful_step_count=30, deadline=None)
Lifecycle.TestCase.settings = STEPS
TestLifecycleMemoryCache = Lifecycle.TestCase


class RedisLifecycle(Lifecycle):
    cache = None  # set by the fixture below, for this class's run


RedisLifecycle.TestCase.settings = STEPS


@pytest.mark.servers
def test_lifecycle_with_the_redis_cache(redis_url: str) -> None:
    from ..test_stores import _redis_cleanup

    prefix = f"kgtest:{uuid.uuid4().hex[:10]}:"
    RedisLifecycle.cache = f"{redis_url}?prefix={prefix}"
    try:
        RedisLifecycle.TestCase().runTest()
    finally:
        _redis_cleanup(redis_url, prefix)

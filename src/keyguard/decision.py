"""The check of SPEC section 4, as one sans-I/O step: every rule, once, in order.

    request --door--> Facts --driver--> step(parts, facts, known) --> Verdict | Need
                                   ^                                        |
                                   +------ the I/O the Need names ----------+

`step` reads the facts a door gathered (or `verify` made) and what the key
cache holds, and answers either a `Verdict` or the one piece of I/O it needs
next: a `Need` (fetch this key id, gather a signed request's target, read its
body, run this slow hash, count this key, remember this signature, count this
failure). A driver
(check.py: sync for `verify` and the WSGI door, async for `averify`, the ASGI
door and the admin app) performs it, records the answer in the need's `Known`
and calls `step` again, until it answers. A request whose key is cached and
whose token already proved it (the warm path) is simply one call that needs
nothing. The step does no I/O, reads the clock once per call, and changes
nothing outside the `Known` it was handed: what the warm path may remember
(the proving token, the routes passed) is returned in the verdict and stored
by the driver in the key cache (`cache.Slot`, whose invariant is written there).

Order matters: `revoked_key`, `expired_key`, `suspended_key` and every later
code are only told to a caller that proved the key's secret, and the rate limit is spent only by
a request that passed everything else. A signed request's body is read only
after everything that needs no body passed (its headers, the timestamp, the
access key's form, the key found and able to sign): an anonymous caller cannot
make a body be read.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from .cache import Slot, _Absent
from .exceptions import (
    AuthenticationError,
    AuthorizationError,
    BadRequest,
    RequestRejected,
    invalid_signature,
)
from .hashing import Hasher
from .models import KeyInfo, KeyRecord
from .network import Allowlist, ClientResolver, IPAddress, bucket, parse_ip
from .scopes import MEMO_PATH_LEN, Router, Scopes
from .tokens import TokenParser

if TYPE_CHECKING:
    from .ratelimit import Abuse
    from .signing import Signed, SignedRequests

INF = math.inf
WARM_ROUTES = 256  # routes one cached key remembers as passed (see cache.Slot)
_NO_HEADERS: Mapping[str, Sequence[str]] = MappingProxyType({})


@dataclass(slots=True, eq=False)
class Entry:
    """A record prepared once for the hot path, never changed after: expanded
    scopes, the allowlist as integer ranges, and the verdict of a pass."""

    record: KeyRecord
    info: KeyInfo
    scopes: frozenset[str]
    allowlist: Allowlist | None  # None: the key may be used from anywhere
    limited: bool  # a rate limit or use quota applies (step 8 has work to do)
    id: str = field(init=False)  # the record's
    until: float = field(init=False)  # revocation or expiry: no remembered pass outlives it
    granted: tuple[str, ...] = field(init=False, repr=False)  # `scopes` sorted, for the doors
    passed: Verdict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.id = self.record.id
        ends = [t for t in (self.record.revoked_at, self.record.expires_at) if t is not None]
        self.until = min(ends, default=math.inf)
        self.granted = tuple(sorted(self.scopes))
        self.passed = Verdict(self, None, self.record.id, True)


class Verdict(NamedTuple):
    """What the step decided. `entry` is set when the request passed; `error` when
    it was refused (it renders itself); `key_id` names the key the request claimed
    once its credential parsed, and `proven` says whether it proved that key's
    secret (audit names the caller only then). `client`: the client IP as step 6
    found it; None with `peer_is_client` means the socket peer is the client (no
    forwarding header: the usual request, whose verdict is made once per key).
    `memo`: what the driver may remember about the cached key (see cache.Slot)."""

    entry: Entry | None
    error: RequestRejected | None
    key_id: str | None = None
    proven: bool = False
    client: IPAddress | None = None
    peer_is_client: bool = True
    memo: tuple[Slot, str | None, tuple[str | None, str, str] | None] | None = None

    def __repr__(self) -> str:  # the memo may hold the proving token: never shown
        code = None if self.error is None else self.error.code
        return (
            f"Verdict(passed={self.entry is not None}, code={code!r}, key_id={self.key_id!r}, "
            f"proven={self.proven}, client={self.client!r})"
        )


PUBLIC = Verdict(None, None)  # a public path: nothing checked, nothing to say


class Facts:
    """One request as a door gathered it, or as `verify` describes a bare token.

    `method` upper-cased and `path` below the mount point: what the app routes
    (SPEC section 4 step 0); `path` None means no route (`verify`, the admin
    app): no rules or public paths apply, only `scopes`. `scheme` None means no
    transport to judge (`verify`). Header names are lower-case. `source` (and
    `receive`, ASGI) is where the body need reads a signed body from. Headers,
    token, passphrase and body hold credentials, so `repr` leaves them out.

    A plain class, not a dataclass: a door makes one per request, and setting
    only what it has (the rest are class-level defaults) costs the least."""

    scopes: tuple[str, ...] = ()  # needed beyond the rules (verify's, the admin app's)
    token: str | None = None  # verify(): the credential itself
    passphrase: str | None = None  # verify()'s
    target: str | None = None  # the path the audit trail names when `path` is None
    # Filled in for a signed request by the target need (`raw_path`, `query`;
    # `fields`: rfc9421 only) and then the body need (`body`):
    body: bytes | None = None
    length: int | None = None  # the body size the request declares (Content-Length)
    chunked: bool = False  # it declares a body of a size to come (Transfer-Encoding)
    raw_path: str | None = None
    query: str = ""
    fields: Sequence[tuple[str, str]] | None = None
    # Where those needs read from: the WSGI environ or the ASGI scope, and ASGI's
    # `receive` (replaced by one that replays the body). Set by a door before the
    # driver's I/O (the ASGI door: only when the step needs some).
    source: Any = None
    receive: Any = None

    def __init__(
        self,
        method: str,
        path: str | None,
        peer: str | None,
        headers: Mapping[str, Sequence[str]] = _NO_HEADERS,
        scheme: str | None = "http",
    ) -> None:
        self.method = method
        self.path = path
        self.peer = peer
        self.headers = headers
        self.scheme = scheme

    def __repr__(self) -> str:
        return f"Facts(method={self.method!r}, path={self.path!r}, peer={self.peer!r})"


class Need(NamedTuple):
    """The one piece of I/O the step needs: `kind` (one of the names below), its
    argument, and the `Known` to record the answer in before calling again."""

    kind: str
    arg: Any
    known: Known

    def __repr__(self) -> str:  # a slow check's argument holds what was presented
        shown = self.arg if self.kind == FETCH else "..."
        return f"Need({self.kind}, {shown!r})"


FETCH = "fetch"  # arg: key id -> known.entry = Entry | ABSENT
TARGET = "target"  # arg: the signed-request checker -> facts.raw_path, .query (.fields): no I/O
BODY = "body"  # arg: the signed-request checker -> facts.body (bounded in size and time)
SLOW = "slow"  # arg: (stored hash, presented) -> known.slow[stored] = matched?
ADMIT = "admit"  # arg: Entry -> known.admitted (step 8: spend the rate limit and quota)
REMEMBER = "remember"  # arg: Signed -> known.remembered (the replay cache)
FAILED = "failed"  # arg: client IP -> known.counted (a failed authentication)


@dataclass(slots=True)
class Known:
    """What the I/O brought, for the step's next call (one request's scratchpad)."""

    entry: Entry | _Absent | None = None
    slow: dict[str, bool] = field(default_factory=dict)
    admitted: bool = False
    remembered: bool = False
    counted: bool = False
    fetched: bool = False  # the key came from the store or Redis, not the in-process cache
    error: RequestRejected | None = None  # what the last I/O refused with
    key_id: str | None = None
    proven: bool = False


@dataclass(slots=True)
class Parts:
    """What the step reads, built once by `KeyGuard` (and never by a request)."""

    router: Router
    clients: ClientResolver
    tokens: TokenParser
    peek: Any  # the key cache's look-up without I/O: key id -> live Slot | None
    abuse: Abuse
    signing: SignedRequests
    clock: Any
    header: str  # the `header` setting, lower-case
    passphrase_header: str
    require_tls: bool
    setup: Any  # () -> Hasher: sets the store up (I/O, once; the first fetch has done it)
    hasher: Hasher | None = None  # set by `setup`
    # Headers that take a request off the remembered-route shortcut: forwarding
    # headers (the client is then not the peer) and the passphrase.
    cold: frozenset[str] = frozenset()
    signed: frozenset[str] = frozenset()  # the headers that make a request a signed one
    signing_on: bool = False  # can a signed request be checked (a master key)?
    token_len: int = 0  # `tokens`' token length and where its id stands
    id_start: int = 0
    id_end: int = 0

    is_public: Any = None  # router.is_public, one attribute away
    blocked: Any = None  # abuse.blocked, one attribute away

    def __post_init__(self) -> None:
        self.token_len, self.id_start, self.id_end = self.tokens.layout()
        self.is_public, self.blocked = self.router.is_public, self.abuse.blocked


def invalid_key() -> AuthenticationError:
    return AuthenticationError()  # the class defaults: invalid_key, "The API key is not valid."


def malformed(token: str) -> RequestRejected:
    """A credential of the wrong length: several, when it holds a comma (no token
    does: a WSGI server joins repeated headers so, `a, b`), else not a key."""
    if "," in token:
        return BadRequest("invalid_request", "Send one API key, not several.")
    return invalid_key()


SIGNED = "signed"  # what `credential` answers for a signed request


def credential(authorization: Sequence[str], api_key: Sequence[str], signed: bool) -> str:
    """Step 1: the one credential of a request: the bearer token, or SIGNED
    (raises 401 missing_credentials for none, 400 for two different ones)."""
    # Fast paths for the usual request (one bearer credential); the same answers as below.
    if not signed:
        if not api_key and len(authorization) == 1:
            value = authorization[0]
            if value[:7].lower() == "bearer ":  # (else: the general reading below)
                return value[7:].strip()
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
    if signed:
        if tokens:
            raise BadRequest("invalid_request", "Send either a signed request or an API key.")
        return SIGNED
    if not tokens:
        raise AuthenticationError("missing_credentials", "An API key is required.")
    if len(tokens) > 1:
        raise BadRequest("invalid_request", "Send one API key, not several.")
    return tokens.pop()


def step(p: Parts, f: Facts, k: Known | None = None) -> Verdict | Need:  # noqa: C901
    """SPEC section 4, in order. Called again by the driver with `k` after each Need."""
    key_id: str | None = None
    proven = False
    try:
        if k is not None:
            key_id, proven = k.key_id, k.proven
            if k.error is not None:
                raise k.error  # what the last I/O refused with

        # 1. A public path needs nothing.
        path = f.path
        if path is not None and (
            p.is_public(path) if len(path) <= MEMO_PATH_LEN else p.router.public(path)
        ):  # (a long path is judged afresh, never memoised: bounded memory)
            return PUBLIC
        # HTTPS only (`require_tls`): refused before any credential is read.
        if (
            p.require_tls
            and f.scheme is not None
            and not p.clients.is_tls(f.peer, f.headers, f.scheme)
        ):
            raise AuthorizationError("tls_required", "This API must be called over HTTPS.")
        # A client over `abuse.max_failures` is refused before anything is parsed.
        if p.blocked:  # (the abuse counters' own dict of throttled clients)
            p.abuse.check_client(p.clients.resolve(f.peer, f.headers))

        # 1. Exactly one credential: a bearer token (Authorization or `header`) or a
        #    signed request (only where signed requests can be checked).
        h = f.headers
        given = f.token  # `verify`'s; a door's request names its credential in headers
        if given is None:
            token = credential(
                h.get("authorization", ()),
                h.get(p.header, ()),
                p.signing_on and not p.signed.isdisjoint(h),
            )
        else:
            token = given
        if token is not SIGNED:
            # 2. Well-formed, with a valid checksum (no I/O for a mistyped or made-up token).
            # Where the id stands in a token of the right length (tokens.TokenParser's
            # fields, read here without a call); named in the verdict only once believed.
            if len(token) != p.token_len:
                raise malformed(token)
            claimed = token[p.id_start : p.id_end]
            slot = p.peek(claimed)
            if (  # steps 2-3 from memory: this very token proved this entry before
                slot is not None
                and slot.proof is not None
                and token.isascii()  # (compare_digest takes ASCII text only)
                and hmac.compare_digest(slot.proof, token)
            ):
                entry = slot.entry
                if (
                    given is None
                    and (f.peer, f.method, path) in slot.routes
                    and p.cold.isdisjoint(h)
                    and (entry.until == INF or p.clock() < entry.until)
                ):  # steps 4-7 passed for this peer and route before (see cache.Slot)
                    if entry.limited and not (k is not None and k.admitted):
                        return _admit(entry, k, claimed)
                    return entry.passed  # type: ignore[no-any-return]
                key_id, proven, fresh_proof = claimed, True, False
                now = p.clock()
            else:
                if not p.tokens.checksum_ok(token) or p.tokens.split(token) is None:
                    raise invalid_key()
                key_id = claimed
                now = p.clock()
                # 3. The key is found, and the secret matches.
                found = _found(p, k, slot, key_id)
                if isinstance(found, Need):
                    return found
                entry = found
                matched = _bearer_proven(p, f, k, entry, token, now)
                if isinstance(matched, Need):
                    return matched
                proven, fresh_proof = matched is not False, matched is CURRENT
            passphrase = _first(h, p.passphrase_header) if given is None else f.passphrase
            signed: Signed | None = None
        else:
            # 2. A signed request, as far as it can be checked without its body: the
            #    target as sent (gathered from the door, no I/O), headers present once
            #    and well-formed, timestamp fresh, the access key's form.
            if f.raw_path is None:
                return Need(TARGET, p.signing, k or Known())
            signed = p.signing.begin(f)  # pure: run again on each call, as cheap as keeping it
            key_id, now = signed.key_id, p.clock()
            # 3. The key is found and can sign, and only then is the body read (once,
            #    bounded); then the signature matches. Refused alike (`invalid_signature`)
            #    whatever the key is, until it is proven.
            slot = p.peek(key_id)
            found = _found(p, k, slot, key_id, invalid_signature)
            if isinstance(found, Need):
                return found
            entry = found
            if signed.message is None:  # no body yet
                p.signing.signer(entry)
                known = k or Known()
                known.key_id = key_id
                return Need(BODY, p.signing, known)
            proven = p.signing.prove(entry, signed, now)
            passphrase = signed.passphrase
        if not proven:
            raise invalid_key()

        # 4-7. Live, passphrase, client IP, scopes: only for a caller who proved the key.
        record = entry.record
        if record.revoked_at is not None and record.revoked_at <= now:
            raise AuthenticationError("revoked_key", "The API key has been revoked.")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationError("expired_key", "The API key has expired.")
        if record.suspended_at is not None and record.suspended_at <= now:
            raise AuthenticationError("suspended_key", "The API key is suspended.")
        # 5. Passphrase, where the key has one (argon2: run by the driver, off the loop).
        if record.passphrase_hash is not None:
            matched = _checked(p, f, k, record.passphrase_hash, passphrase, key_id, proven)
            if isinstance(matched, Need):
                return matched
            if not matched:
                raise AuthenticationError(
                    "invalid_passphrase", "The passphrase is missing or wrong."
                )
        # 6. The client IP, inside the allowlist when there is one.
        if entry.allowlist is not None:
            client = p.clients.resolve(f.peer, h) if h else _peer_ip(f.peer)
            if client not in entry.allowlist:
                raise AuthorizationError(
                    "ip_not_allowed", "This API key may not be used from this address."
                )
        # 7. The scopes the matching rules (and the caller) ask for.
        needed = p.router.required(f.method, f.path) if f.path is not None else ()
        if f.scopes:
            needed = (*needed, *f.scopes)
        if needed and not entry.scopes.issuperset(needed):  # held outright: nothing to walk
            missing = Scopes.missing(entry.scopes, needed)
            if missing:
                raise AuthorizationError(
                    "insufficient_scope",
                    "The API key lacks a scope this route needs.",
                    scopes=missing,
                )

        # A signed request's signature is used up only now, by a request that passed.
        if signed is not None and not (k is not None and k.remembered):
            known = k or Known()
            known.entry, known.key_id, known.proven = entry, key_id, True
            return Need(REMEMBER, signed, known)
        # 8. The per-key rate limit and use quota.
        if entry.limited and not (k is not None and k.admitted):
            return _admit(entry, k, key_id)
        # 9. The app runs. What the warm path may remember about this cached key:
        memo = None if signed is not None else _memo(p, f, slot, entry, token, fresh_proof)
        if memo is None and p.cold.isdisjoint(h):
            return entry.passed  # type: ignore[no-any-return]
        client = p.clients.resolve(f.peer, h)
        return Verdict(entry, None, key_id, True, client, False, memo)
    except RequestRejected as exc:
        # A failed authentication (every 401 but "no credentials", which is no guess)
        # counts against the client before the refusal is answered.
        client = p.clients.resolve(f.peer, f.headers)
        if (
            isinstance(exc, AuthenticationError)
            and exc.code != "missing_credentials"
            and p.abuse.throttling
            and client is not None  # a client with no address is never counted as one
            and not (k is not None and k.counted)
        ):
            known = k or Known()
            known.error, known.key_id, known.proven = exc, key_id, proven
            return Need(FAILED, client, known)
        return Verdict(None, exc, key_id, proven, client, False)


def _memo(
    p: Parts, f: Facts, slot: Slot | None, entry: Entry, token: str, fresh_proof: bool
) -> tuple[Slot, str | None, tuple[str | None, str, str] | None] | None:
    """What a pass teaches the warm path about the cached `slot` (see cache.Slot):
    the token, when this request proved the current secret with it (`fresh_proof`);
    the route, for a door's request whose client is the peer (no forwarding header)
    and that sent no passphrase."""
    if slot is None or slot.entry is not entry:
        return None
    route = None
    if (
        f.token is None
        and f.path is not None
        and len(f.path) <= MEMO_PATH_LEN  # what a key remembers is bounded in size too
        and len(f.method) <= 16
        and p.cold.isdisjoint(f.headers)
        and len(slot.routes) < WARM_ROUTES
    ):
        seen = (f.peer, f.method, f.path)
        route = None if seen in slot.routes else seen
    proof = token if fresh_proof else None
    return None if route is None and proof is None else (slot, proof, route)


def _first(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _peer_ip(peer: str | None) -> IPAddress | None:
    return parse_ip(peer) if peer else None


def _found(
    p: Parts,
    k: Known | None,
    slot: Slot | None,
    key_id: str,
    unknown: Callable[[], RequestRejected] = invalid_key,
) -> Entry | Need:
    """Step 3's look-up: the cached entry, or a Need to fetch it; no such key:
    the 401 `unknown` makes (the credential's "not proven")."""
    entry = k.entry if k is not None and k.entry is not None else slot.entry if slot else None
    if entry is None:
        known = k or Known()
        known.key_id = key_id
        return Need(FETCH, key_id, known)
    if not isinstance(entry, Entry):  # ABSENT: no such key
        raise unknown()
    return entry


def _checked(
    p: Parts,
    f: Facts,
    k: Known | None,
    stored: str | None,
    presented: str | None,
    key_id: str | None,
    proven: bool,
) -> bool | Need:
    """Does `presented` match `stored`? A check only argon2 can answer is a Need
    (the driver runs it, off the event loop); its answer comes back in `k.slow`."""
    if stored is None or presented is None:
        return False
    if k is not None and stored in k.slow:
        return k.slow[stored]
    matched = (p.hasher or p.setup()).quick(stored, presented)
    if matched is None:
        known = k or Known()
        known.key_id, known.proven = key_id, proven
        client = p.clients.resolve(f.peer, f.headers)  # whose budget of slow checks it is
        return Need(SLOW, (stored, presented, "" if client is None else bucket(client)), known)
    return matched


CURRENT, PREVIOUS = "current", "previous"  # which hash a bearer secret matched


def _bearer_proven(
    p: Parts, f: Facts, k: Known | None, entry: Entry, token: str, now: float
) -> str | bool | Need:
    """Step 3's proof: CURRENT when the secret matches the current hash, PREVIOUS
    when it matches the previous one during a rotate grace, else False."""
    secret = token[p.tokens.secret_start : p.tokens.secret_end]
    record = entry.record
    current = _checked(p, f, k, record.secret_hash, secret, record.id, False)
    if current is not False:
        return CURRENT if current is True else current
    until = record.previous_valid_until
    if until is None or now >= until:
        return False
    previous = _checked(p, f, k, record.previous_secret_hash, secret, record.id, False)
    return PREVIOUS if previous is True else previous


def _admit(entry: Entry, k: Known | None, key_id: str) -> Need:
    known = k or Known()
    known.entry, known.key_id, known.proven = entry, key_id, True
    return Need(ADMIT, entry, known)

"""Signed requests (SPEC section 6): header profiles, the string to sign, the
signature check and freshness. No I/O here.

`PROFILES` is the one table of signing schemes; each row (`Profile`) says all
that differs between them: header names, how the timestamp is written, how
the string to sign is built (`to_sign`) and how the MAC is written:

    profile  key header        timestamp  string to sign                              MAC
    kg       KG-ACCESS-KEY     Unix ms    timestamp + METHOD + path + ?query + body   base64
    bitget   ACCESS-KEY        Unix ms    the same, the query percent-decoded         base64
    okx      OK-ACCESS-KEY     ISO 8601   timestamp + METHOD + path + ?query + body   base64
    bybit    X-BAPI-API-KEY    Unix ms    timestamp + key + recv window +             hex
                                          (GET: decoded query; otherwise: body)
    rfc9421  Signature-Input   created    the RFC 9421 signature base                 base64

`path` and the query are the request target as the client sent it (not
percent-decoded), except where a row says decoded: Bitget's and Bybit's own
clients (ccxt, python-bitget, pybit) sign the query text they wrote and let
their HTTP library percent-encode it afterwards. Decoded means as the app's
query parser reads it (`decoded_query`: a `+` is a space, then percent-escapes
are decoded), so two queries the app parses differently never share one
string to sign; and a query holding an encoded `&` or `=` (`%26`, `%3D`, any
case) is refused (400), since decoding it would change its structure:
`?a=1%26b%3D2`, one parameter for the app, would verify as `?a=1&b=2`, two.
The pure functions (`message`, `decoded_message`, `bybit_message`,
`decoded_query`, `sign`, `format_timestamp`, `parse_timestamp`) are shared
with `keyguard.client`.

What the exchange strings cannot pin (the exchanges' designs, kept so that
their SDKs work unchanged; README "What the exchange formats cannot pin"):
`kg`, `okx` and `bitget` run path, query and body together without
separators, so a signed `POST /a` with the body `?admin=1` is the same string
as `POST /a?admin=1` with an empty body; `bybit` signs neither the method nor
the path. The replay cache lets each signature through once, so this needs
the request before the server sees it: TLS, and `rfc9421` (whose signature
base names each component) for sensitive routes.

`SignedRequests` (`guard.signing`) reads any profile into one `Signed` (key id,
timestamp, MAC, the bytes the MAC covers), so `prove` never looks at the
profile. In the step (decision.py) the order is the same for every profile,
and everything that needs no body comes before the body is read, so that a
caller who names no signing key cannot make a body be read: the request
target gathered (no I/O) -> headers present once and well-formed, the target's
shape (400) -> timestamp fresh (401 `stale_request`) -> the access key's form
-> the key found, and a signing key whose secret decrypts -> only then the
body, read once (bounded in size and time: body.py) -> signature matches, the
previous secret too during a rotate grace -> the rest of SPEC section 4 ->
signature not seen before (401 `replayed_request`, the replay cache:
replay.py, asked last so that a refused request does not use its signature
up). `begin` is that first half, run again on each call of the step (pure, as
cheap as keeping it): freshness is judged again once the body is in.

Every refusal of a signature that was not proven answers the same 401
`invalid_signature`, whatever the access key names (a malformed id, no such
key, a bearer key, a revoked or suspended one): codes beyond "not proven" are
told only to a caller that proved the secret (SPEC section 4). One thing
still differs: the body of a request whose access key names no signing key is
never read (see SECURITY.md, known limits).

Two identical requests signed in the same millisecond (the same second for
rfc9421's `created`) have the same signature: the second one is refused as a
replay. Clients must vary what they sign (a later timestamp, a nonce: rfc9421's
`nonce` parameter, which `SignedAuth` always sends) or not send identical
requests at once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

from .crypto import MasterKeyRing
from .exceptions import AuthenticationError, BadRequest, ConfigurationError, invalid_signature
from .hashing import HmacSha256
from .tokens import ID_LEN

if TYPE_CHECKING:
    from .rfc9421 import Facts as _Facts  # what is read of decision.Facts
    from .rfc9421 import Reading
    from .settings import Settings

    class _Entry(Protocol):  # what `prove` reads of decision.Entry
        record: Any


FUTURE_SKEW = 5.0  # seconds a timestamp may be ahead of our clock
BYBIT_FUTURE = 1.0  # Bybit's rule: server - recv_window <= timestamp < server + 1000 ms
BYBIT_RECV_WINDOW = 5000  # ms, Bybit's default when X-BAPI-RECV-WINDOW is not sent
MAC_SIZE = hashlib.sha256().digest_size  # 32 bytes
_ISO = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
).fullmatch
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*").fullmatch
_ENCODED_SEPARATOR = re.compile(r"%(?:26|3[Dd])").search  # an encoded "&" or "="


# -- the strings to sign (one function per layout; `Profile.to_sign`) ------------
# All take (timestamp, method, path, query, body, access key, recv window), so the
# server and `SignedAuth` call whichever the profile names the same way. Each spells
# out the parameters it ignores: `*args` would allocate a tuple per request.


def message(
    timestamp: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    key_id: str = "",
    recv_window: str = "",
) -> bytes:
    """timestamp + METHOD + path + ("?" + query if any) + body (`kg`, `okx`)."""
    target = path + "?" + query if query else path
    return (timestamp + method.upper() + target).encode("utf-8") + body


def decoded_query(query: str) -> bytes:
    """The query as the app's parser reads it, as one text: `+` is a space, then
    percent-escapes are decoded (`coin=USDT%2CBTC&n=a+b` -> `coin=USDT,BTC&n=a b`).
    Bitget's and Bybit's clients sign that text. An encoded `&` or `=` would be
    read as a separator here and not by the parser: `SignedRequests` refuses such
    a query before it gets here."""
    return unquote_to_bytes(query.replace("+", " "))


def decoded_message(
    timestamp: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    key_id: str = "",
    recv_window: str = "",
) -> bytes:
    """`message` with the query decoded (`bitget`, `decoded_query`): Bitget's
    clients sign the text they wrote (`coin=USDT,BTC`) and send it encoded
    (`coin=USDT%2CBTC`)."""
    if "%" not in query and "+" not in query:  # nothing to decode: `message`'s string
        target = path + "?" + query if query else path
        return (timestamp + method.upper() + target).encode("utf-8") + body
    return (timestamp + method.upper() + path + "?").encode("utf-8") + decoded_query(query) + body


def bybit_message(
    timestamp: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    key_id: str = "",
    recv_window: str = "",
) -> bytes:
    """timestamp + access key + recv window + (the decoded query for GET, the body
    otherwise) (`bybit`, as pybit and ccxt sign Bybit v5 requests; `decoded_query`).
    Neither the method nor the path is signed (Bybit's design; see the module
    docstring)."""
    head = (timestamp + key_id + recv_window).encode("utf-8")
    return head + (decoded_query(query) if method.upper() == "GET" else body)


class ToSign(Protocol):
    """The shape of `message`, `decoded_message` and `bybit_message`."""

    def __call__(
        self,
        timestamp: str,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        key_id: str = "",
        recv_window: str = "",
    ) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Profile:
    """One signing scheme, one row of `PROFILES`.

    `key`, `timestamp`, `signature`, `passphrase` (None: no passphrase header)
    and `recv_window` (Bybit's) are header names; `iso_time`: the timestamp is
    ISO 8601 UTC with milliseconds (else Unix ms); `to_sign` builds the string
    to sign; `hex_mac`: the MAC is lowercase hex (else base64). `structured`:
    RFC 9421, where the key id and timestamp are parameters of Signature-Input
    and the string to sign is the signature base (`keyguard.rfc9421`).
    `summary`: the string to sign in words (OpenAPI documents, messages)."""

    name: str
    key: str
    timestamp: str
    signature: str
    passphrase: str | None
    recv_window: str | None = None
    iso_time: bool = False
    to_sign: ToSign = message
    hex_mac: bool = False
    structured: bool = False
    summary: str = "timestamp + METHOD + path + ('?' + query, if any) + body"  # for documents

    @property
    def header_names(self) -> tuple[str, ...]:
        """Every header this profile reads, as named."""
        names = (self.key, self.timestamp, self.signature, self.passphrase, self.recv_window)
        return tuple(dict.fromkeys(n for n in names if n))


PROFILES: dict[str, Profile] = {
    "kg": Profile("kg", "KG-ACCESS-KEY", "KG-TIMESTAMP", "KG-SIGNATURE", "KG-PASSPHRASE"),
    "bitget": Profile(
        "bitget",
        "ACCESS-KEY",
        "ACCESS-TIMESTAMP",
        "ACCESS-SIGN",
        "ACCESS-PASSPHRASE",
        to_sign=decoded_message,
        summary="timestamp + METHOD + path + ('?' + percent-decoded query, if any) + body",
    ),
    "okx": Profile(
        "okx",
        "OK-ACCESS-KEY",
        "OK-ACCESS-TIMESTAMP",
        "OK-ACCESS-SIGN",
        "OK-ACCESS-PASSPHRASE",
        iso_time=True,
    ),
    # Bybit has no passphrase: a key with one needs `signing.headers.passphrase` to name a header.
    "bybit": Profile(
        "bybit",
        "X-BAPI-API-KEY",
        "X-BAPI-TIMESTAMP",
        "X-BAPI-SIGN",
        None,
        recv_window="X-BAPI-RECV-WINDOW",
        to_sign=bybit_message,
        hex_mac=True,
        summary="timestamp + access key + recv window + (GET: percent-decoded query; else body)",
    ),
    # The key id (`keyid`) and timestamp (`created`) are parameters of Signature-Input.
    "rfc9421": Profile(
        "rfc9421",
        "Signature-Input",
        "Signature-Input",
        "Signature",
        None,
        structured=True,
        summary="the RFC 9421 signature base of @method, @authority, @path, @query (with a "
        "query) and content-digest (with a body); alg hmac-sha256, keyid the access key",
    ),
}
_ROLES = ("key", "timestamp", "signature", "passphrase", "recv_window")


def profile(name: str, headers: Mapping[str, str] | None = None) -> Profile:
    """The named profile, with single header names replaced by `headers`
    (keys `key`, `timestamp`, `signature`, `passphrase`, and `recv_window` for
    bybit; only `passphrase` for rfc9421, whose field names the RFC fixes)."""
    if name not in PROFILES:
        raise ConfigurationError(f"signing.profile: must be one of {', '.join(PROFILES)}")
    base = PROFILES[name]
    if not headers:
        return base
    roles = (
        ("passphrase",)
        if base.structured
        else _ROLES[:4] + (("recv_window",) if base.recv_window else ())
    )
    for field, value in headers.items():
        if field not in roles:
            raise ConfigurationError(
                f"signing.headers.{field}: unknown for profile {name} (use {', '.join(roles)})"
            )
        if not isinstance(value, str) or not _HEADER_NAME(value):
            raise ConfigurationError(f"signing.headers.{field}: must be a header name")
    names: dict[str, Any] = {role: getattr(base, role) for role in _ROLES}
    names.update(headers)
    chosen = dataclasses.replace(base, **names)
    named = [names[role] for role in _ROLES if names[role]]
    if base.structured:
        named = named[1:]  # key and timestamp are both Signature-Input there
    if len({n.lower() for n in named}) != len(named):
        raise ConfigurationError("signing.headers: the header names must differ")
    return chosen


def sign(
    secret: str | bytes, timestamp: str, method: str, path: str, query: str = "", body: bytes = b""
) -> str:
    """base64(HMAC-SHA256(secret, message(...))), as a `kg` or `okx` client sends it."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.digest(key, message(timestamp, method, path, query, body), "sha256")
    return base64.b64encode(mac).decode("ascii")


def format_timestamp(now: float, iso: bool = False) -> str:
    """Unix milliseconds (`kg`, `bitget`, `bybit`) or ISO 8601 UTC with milliseconds (`okx`)."""
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


def _key_form(key_id: str) -> bool:
    """Could `key_id` be an access key (ID_LEN ASCII letters and digits)?"""
    return len(key_id) == ID_LEN and key_id.isascii() and key_id.isalnum()


def _one_part() -> BadRequest:
    """bybit signs a GET's query or another method's body: the other part is refused."""
    return _bad(
        "Under this signing profile a GET signs its query and other methods their "
        "body: send no body with a GET, and no query with other methods."
    )


def _stale() -> AuthenticationError:
    return AuthenticationError(
        "stale_request", "The request timestamp is outside the allowed window."
    )


@dataclass(slots=True)  # not frozen: made per request, and frozen __init__ is slower
class Signed:
    """A signed request whose headers parsed and whose timestamp is fresh, under
    any profile: `message` is what `mac` must be the HMAC of (None until the
    body is read). The signature, the signed text (it holds the body) and the
    passphrase stay out of `repr`."""

    key_id: str
    ts: float
    mac: bytes = dataclasses.field(repr=False)
    message: bytes | None = dataclasses.field(repr=False)
    passphrase: str | None = dataclasses.field(repr=False)


class SignedRequests:
    """`guard.signing`: recognises signed requests, parses them under the profile
    and proves them with the key's secret. Built from the settings, the clock and
    the bearer `header` (which no signing header may reuse); the replay cache is
    apart (replay.py), asked by the drivers after the step."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        s = settings.signing
        self._clock = clock
        self.ring = MasterKeyRing(s.master_keys)
        self.profile = p = profile(s.profile, {str(k): v for k, v in s.headers.items()})
        self._key, self._ts, self._sig = p.key.lower(), p.timestamp.lower(), p.signature.lower()
        self._pass = (p.passphrase or "").lower()  # "": no passphrase header (h.get finds none)
        self._window = (p.recv_window or "").lower()
        own = frozenset(n.lower() for n in p.header_names)
        if own & {"authorization", settings.header.lower()}:
            raise ConfigurationError(
                "signing.headers: may not reuse Authorization or the API key header"
            )
        # Without a master key no signed request can be checked: its headers are then
        # no credential, not gathered, and no body is ever read for them.
        self.enabled = self.ring.enabled
        self.names = own - {self._pass} if self.enabled else frozenset()  # any: a signed one
        self.header_names = own if self.enabled else frozenset()
        self._iso, self._hex, self._to_sign = p.iso_time, p.hex_mac, p.to_sign
        self._one_part = p.to_sign is bybit_message  # GET: the query alone; else the body
        self._decodes_query = p.to_sign in (decoded_message, bybit_message)
        self._plain = not (p.recv_window or p.hex_mac)  # `begin` needs no `_special`
        self.max_skew = float(s.max_skew_seconds)
        self._max_window = s.max_skew_seconds * 1000  # ms, the longest recv window (bybit)
        self.max_body_bytes = s.max_body_bytes
        # rfc9421: the body need also gathers every header line (`Facts.fields`)
        self.wants_fields = p.structured
        if p.structured:
            try:
                from . import rfc9421  # noqa: F401 - the library, checked at start-up
            except ImportError as exc:
                raise ConfigurationError(
                    "signing.profile: rfc9421 needs http-message-signatures: "
                    f"pip install 'keyguard[signing]' ({exc.name})"
                ) from None
        # ciphertext -> the secret's HMAC, keyed once (decrypt once, never per request)
        self._secrets: dict[str, HmacSha256 | None] = {}
        self._secrets_bound = 2 * settings.local_cache_size

    # -- recognise and parse (no I/O) ---------------------------------------

    def is_signed(self, headers: Mapping[str, Sequence[str]]) -> bool:
        """Does the request carry any signing header (so it is a signed credential)?"""
        return not self.names.isdisjoint(headers)

    def begin(self, facts: _Facts) -> Signed:
        """Everything a signed request can be checked for before its key is looked
        up and its body read (raises the refusal): its headers, present once and
        well-formed, the target's shape, the timestamp fresh, the access key's
        form; once the body is read (`facts.body`) also the string to sign
        (`Signed.message`, None before)."""
        h = facts.headers  # (a bearer credential beside it: refused by the step's rule 1)
        if self.wants_fields:
            return self._begin_rfc9421(facts)
        key_id, timestamp, signature = self._one(h)
        if self._decodes_query and "%" in facts.query and _ENCODED_SEPARATOR(facts.query):
            raise _bad(
                "Under this signing profile the query is signed decoded: an encoded & or = "
                "(%26, %3D) in it cannot be told from a separator. Send the values without them."
            )
        ts = parse_timestamp(timestamp, self._iso)
        if ts is None:
            raise _bad(f"{self.profile.timestamp} is not a valid timestamp.")
        now = self._clock()
        if self._plain:  # kg, bitget, okx: the usual window, a base64 MAC
            if ts < now - self.max_skew or ts > now + FUTURE_SKEW:
                raise _stale()
            try:  # strict base64 (no stray characters), decoded in C (ASCII text only)
                mac = binascii.a2b_base64(signature, strict_mode=True)
            except (binascii.Error, ValueError):
                mac = b""
            window = ""
        else:
            window, mac = self._special(facts, ts, now, signature)
        if len(mac) != MAC_SIZE or not _key_form(key_id):
            raise invalid_signature()
        if self._one_part and (facts.length or facts.chunked) and facts.method.upper() == "GET":
            raise _one_part()  # (a declared body; one that comes undeclared: once read)
        passphrases = h.get(self._pass)
        body, string = facts.body, None
        if body is not None:
            if body and self._one_part and facts.method.upper() == "GET":
                raise _one_part()
            path = facts.raw_path if facts.raw_path is not None else facts.path or ""
            # A function kept on the instance: fetched as an attribute, then called
            # (`self._to_sign(...)` would take CPython's unspecialised method path).
            to_sign = self._to_sign
            string = to_sign(timestamp, facts.method, path, facts.query, body, key_id, window)
        return Signed(key_id, ts, mac, string, passphrases[0] if passphrases else None)

    def _special(self, facts: _Facts, ts: float, now: float, signature: str) -> tuple[str, bytes]:
        """`begin`'s freshness and MAC for a profile with a recv window or a hex MAC
        (bybit): (the recv window as signed, the MAC)."""
        window, past = self._recv_window(facts) if self._window else ("", self.max_skew)
        future = BYBIT_FUTURE if self._window else FUTURE_SKEW
        if not now - past <= ts < now + future:  # Bybit's rule, inside max_skew
            raise _stale()
        try:  # strict hex or base64, decoded in C (ASCII text only)
            if self._hex:
                return window, binascii.a2b_hex(signature)
            return window, binascii.a2b_base64(signature, strict_mode=True)
        except (binascii.Error, ValueError):
            return window, b""

    def _recv_window(self, facts: _Facts) -> tuple[str, float]:
        """bybit: the recv window as sent ("" when not: it is then not signed either)
        and in seconds: 1 ms to `max_skew_seconds`, else 400. Bybit signs the query
        of a GET and the body of anything else: the other one must be empty (400),
        since nothing would vouch for it."""
        values = facts.headers.get(self._window, ())
        text = values[0].strip() if len(values) == 1 else ""
        if len(values) > 1 or (values and not text):
            raise _bad(f"Send one {self.profile.recv_window} header.")
        if not text:
            past = min(BYBIT_RECV_WINDOW, self._max_window) / 1000
        elif (
            len(text) <= 15
            and text.isascii()
            and text.isdigit()
            and 0 < int(text) <= self._max_window
        ):
            past = int(text) / 1000
        else:
            raise _bad(f"{self.profile.recv_window} must be 1 to {self._max_window} milliseconds.")
        if facts.query and facts.method.upper() != "GET":  # (a GET's body: once it is read)
            raise _one_part()
        return text, past

    def _begin_rfc9421(self, facts: _Facts) -> Signed:
        """`begin` for rfc9421: the RFC's reading, then SPEC section 6's policy (the
        Content-Digest once the body is read: until then `message` is None)."""
        from .rfc9421 import require

        signed, reading = self.read_rfc9421(facts)
        require(reading, facts)
        if len(signed.mac) != MAC_SIZE or not _key_form(signed.key_id):
            raise invalid_signature()
        if facts.body is None:
            signed.message = None
        return signed

    def read_rfc9421(self, facts: _Facts) -> tuple[Signed, Reading]:
        """RFC 9421 alone, before keyguard's policy (`rfc9421.require`, the key id's
        form): the signature read by the library, `created` (and `expires`)
        inside the window by this guard's clock. Needs the header lines and the
        target, not the body."""
        from .rfc9421 import read

        reading = read(facts)
        now = self._clock()
        created = reading.created
        if created < now - self.max_skew or created > now + FUTURE_SKEW:
            raise _stale()
        if reading.expires is not None and reading.expires <= now:
            raise _stale()
        passphrases = facts.headers.get(self._pass)
        signed = Signed(
            reading.key_id,
            float(created),
            reading.mac,
            reading.base,
            passphrases[0] if passphrases else None,
        )
        return signed, reading

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
        if len(cache) >= self._secrets_bound:
            cache.clear()
        cache[ciphertext] = value
        return value

    def signer(self, entry: _Entry) -> HmacSha256:
        """The key's secret, keyed for HMAC: asked before the body is read, so a
        key that cannot prove a signature (not a signing key, or a secret no
        master key decrypts) costs no body. `invalid_signature` otherwise, as for
        any signature that does not verify: the caller proved nothing, so it
        learns nothing about the key."""
        record = entry.record
        secret = None
        if record.kind == "signing":
            secret = self._secret(record.encrypted_secret, record.id)
        if secret is None:
            raise invalid_signature()
        return secret

    def prove(self, entry: _Entry, signed: Signed, now: float) -> bool:
        """True when the signature matches the key's secret (or the previous one
        within a rotate grace); otherwise `invalid_signature` (see `signer`)."""
        secret, message = self.signer(entry), signed.message
        if message is None:  # the body is not read: nothing can be proven yet
            raise invalid_signature()
        if hmac.compare_digest(secret.digest(message), signed.mac):
            return True
        record = entry.record
        until = record.previous_valid_until
        if until is not None and now < until:
            previous = self._secret(record.previous_encrypted_secret, record.id)
            if previous is not None and hmac.compare_digest(previous.digest(message), signed.mac):
                return True
        raise invalid_signature()

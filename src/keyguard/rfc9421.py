"""RFC 9421 HTTP Message Signatures for the `rfc9421` signing profile, on the
maintained `http-message-signatures` library (which parses structured fields
with `http-sf`). Imported only when that profile is used.

keyguard checks a signed request in two halves (see `keyguard.signing`):
`begin` reads it into a `Signed` with no I/O, and `prove` recomputes the HMAC
once the key is fetched. The library's verifier wants the key up front, so
`read` runs it with an algorithm that only *captures* what it was asked to
verify (the signature base and the signature bytes); `prove` then checks that
HMAC as for every other profile, with the key's secret (UTF-8) as HMAC key.

What the library does here: parse Signature-Input and Signature, check the
parameters' types, `alg` (when present: `hmac-sha256`) and `keyid` (present),
refuse unknown parameters and more than one signature, and build the signature
base from the covered components. What keyguard adds (`read` and `require`):
`created` is required and checked against keyguard's clock and
`max_skew_seconds` by the caller (the library's `max_age` defaults to a day
and reads the system clock), `expires`, the covered components SPEC section 6
requires, RFC 9530 Content-Digest (sha-256, sha-512) checked against the body,
and replays (the library checks no nonce; keyguard's replay cache refuses a
signature seen before).

The URL handed to the library is keyguard's own: the scheme, the one Host
header (more than one is a 400) once it matches RFC 3986's host[:port]
(narrowed to what a Host holds: a name of unreserved characters or a bracketed
IPv6 literal; no `/ ? # @`, whitespace, control characters or comma, which
would move the URL's parts: 400 otherwise), and the raw path and query the
app routes. After the library has read it, each covered component derived
from the target (`@path`, `@query`, `@request-target`, `@authority`) must be
what keyguard computes from the request itself (400 otherwise), so what a
signature covers is what the app routes. `@authority` is the Host header as
received (lowercased, the scheme's default port dropped, as RFC 9421 section
2.2.3 derives it): keyguard checks that it is well-formed and signed, not that
it names this server, which keyguard does not know. Where one key may call
several services, refuse other names in front of keyguard (Starlette's
`TrustedHostMiddleware`, Werkzeug's `trusted_hosts`) or give each service its
own keys.

`sign_request` is the client half (`SignedAuth(..., profile="rfc9421")`).
Nothing here does I/O or keeps state between requests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureAlgorithm,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)

from .exceptions import BadRequest, invalid_signature

if TYPE_CHECKING:
    from typing import Protocol

    class Facts(Protocol):
        """What is read of a request (decision.Facts; no import of it here)."""

        method: str
        path: str | None
        raw_path: str | None
        query: str
        scheme: str | None
        body: bytes | None
        length: int | None
        chunked: bool
        fields: Sequence[tuple[str, str]] | None
        headers: Mapping[str, Sequence[str]]


ALG = "hmac-sha256"
LABEL = "kg"  # the signature's label in SignedAuth's headers (the server accepts any one label)
COVERED = ("@method", "@authority", "@path")  # always; "@query" with a query, a digest with a body
# RFC 3986 host [":" port], narrowed to what a Host header holds: a reg-name of
# unreserved characters (DNS names, IPv4 addresses) or a bracketed IPv6 literal.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?").fullmatch
_DEFAULT_PORT = {"http": "80", "https": "443"}


class _Capture(HTTPSignatureAlgorithm):
    """`hmac-sha256` as the verifier sees it, recording (signature, base) for `prove`."""

    algorithm_id = ALG

    def __init__(self, public_key: Any = None, private_key: Any = None) -> None:
        self._seen: list[tuple[bytes, bytes]] = public_key

    def verify(self, signature: bytes, message: bytes) -> None:
        self._seen.append((signature, message))


class _Seen(HTTPSignatureKeyResolver):
    """Hands `_Capture` a list to record into (one per request)."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []

    def resolve_public_key(self, key_id: str) -> Any:
        return self.seen


class _Verifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        """Not here: the caller checks `created` and `expires` against keyguard's clock."""


class _Fields:
    """A request's header lines as the library reads them (it only calls `items()`)."""

    __slots__ = ("_lines",)

    def __init__(self, lines: Sequence[tuple[str, str]]) -> None:
        self._lines = lines

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._lines)


@dataclass(slots=True)
class _Request:
    method: str
    url: str
    headers: _Fields


@dataclass(frozen=True, slots=True)
class Reading:
    """The one signature of a request, as RFC 9421 reads it."""

    key_id: str
    created: int
    expires: int | None
    mac: bytes
    base: bytes  # the signature base: what the MAC covers
    covered: Mapping[str, str]  # serialized component id -> its value in the base


def _bad(detail: str) -> BadRequest:
    return BadRequest("invalid_request", detail)


def read(facts: Facts) -> Reading:
    """Parse the Signature-Input/Signature pair and build the signature base (400
    when the library cannot: malformed fields, several signatures, a covered
    field the request lacks, another `alg`, no `keyid` or `created`)."""
    fields = facts.fields  # set by the body need for this profile only
    if fields is None:
        raise _bad("This endpoint does not accept RFC 9421 signed requests.")
    hosts = [v for k, v in fields if k.lower() == "host"]
    if len(hosts) != 1 or not hosts[0].strip():
        raise _bad("An RFC 9421 signed request needs exactly one Host header.")
    host = hosts[0].strip()
    if not _AUTHORITY(host):  # a "/", "?", "#", "@" would move the URL's parts
        raise _bad("The Host header is not a host[:port].")
    scheme = facts.scheme or "http"
    path = facts.raw_path if facts.raw_path is not None else facts.path or ""
    url = f"{scheme}://{host}{path}" + (f"?{facts.query}" if facts.query else "")
    seen = _Seen()
    verifier = _Verifier(signature_algorithm=_Capture, key_resolver=seen)
    try:
        (result,) = verifier.verify(
            _Request(facts.method.upper(), url, _Fields(fields)), max_age=None
        )
    except Exception:  # the library's refusals of malformed input, whatever their type: a 400
        raise _bad(
            "The Signature-Input and Signature headers are not a valid RFC 9421 signature "
            "of this request."
        ) from None
    params = result.parameters
    created, expires = params.get("created"), params.get("expires")
    if not isinstance(created, int):
        raise _bad("An RFC 9421 signature needs a created parameter.")
    ((mac, base),) = seen.seen
    _same_target(result.covered_components, scheme, host, path, facts.query)
    return Reading(
        str(params["keyid"]),
        created,
        expires if isinstance(expires, int) else None,
        mac,
        base,
        result.covered_components,
    )


def _same_target(covered: Mapping[str, str], scheme: str, host: str, path: str, query: str) -> None:
    """Each covered component derived from the request target, as the library
    derived it, must be the request's own: the raw path and query the app routes
    and the Host header (400 otherwise; with the URL built from a checked Host,
    a second guard that the signed target is the routed one)."""
    name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not colon:
        name, port = host, ""
    if port.lstrip("0") == _DEFAULT_PORT.get(scheme.lower()):
        port = ""
    own = {
        '"@path"': path or "/",
        '"@query"': "?" + query,
        '"@request-target"': (path or "/") + ("?" + query if query else ""),
        '"@authority"': f"{name.lower()}:{port}" if port else name.lower(),
    }
    for component, value in own.items():
        derived = covered.get(component)
        if derived is not None and derived != value:
            raise _bad(f"The signature's {component[1:-1]} is not this request's.")


def require(reading: Reading, facts: Facts) -> None:
    """SPEC section 6 on top of RFC 9421: the signature covers @method, @authority,
    @path, @query when there is a query and, with a body, a Content-Digest that
    matches the body (400 when something is not covered, 401 `invalid_signature`
    when the digest does not match). The digest is checked once the body is read
    (`facts.body` not None); the rest before."""
    covered = reading.covered
    needed = (*COVERED, "@query") if facts.query else COVERED
    for name in needed:
        if f'"{name}"' not in covered:
            raise _bad(f"An RFC 9421 signature here must cover {name}.")
    if (facts.length or facts.chunked) and '"content-digest"' not in covered:
        raise _no_digest()  # (a declared body: told before any key is looked up)
    body = facts.body
    if body is None:
        return
    try:
        digested = ContentDigest.verify_components(covered, body)
    except InvalidSignature:  # told as any unproven signature is: nothing about the key
        raise invalid_signature() from None
    if body and not digested:
        raise _no_digest()


def _no_digest() -> BadRequest:
    return _bad("An RFC 9421 signature of a request with a body must cover content-digest.")


def sign_request(message: Any, key_id: str, secret: bytes, now: float, body: bytes) -> None:
    """Add Signature-Input and Signature (and Content-Digest for a body) to an
    httpx `Request` or a requests `PreparedRequest`, covering what `require`
    asks for, with a fresh `nonce` so that identical requests differ."""
    covered = [*COVERED, "@query"] if urlsplit(str(message.url)).query else list(COVERED)
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: secret}),
    )
    signer.sign(
        message,
        key_id=key_id,
        created=datetime.fromtimestamp(now, UTC),
        nonce=secrets.token_urlsafe(12),
        label=LABEL,
        covered_component_ids=covered,
        body=body or None,
    )

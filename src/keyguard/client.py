"""`SignedAuth`: sign requests to a keyguard API (SPEC section 6) in one line.

    httpx.get(url, auth=SignedAuth(access_key, secret))              # httpx, sync or async
    requests.get(url, auth=SignedAuth(access_key, secret))           # requests

It is an `httpx.Auth` (when httpx is installed; `requires_request_body`, so
the body is read before signing) and a `requests` auth (a callable taking
the `PreparedRequest`). Neither library is required: whichever is installed
works. The signature covers the raw path and query as sent on the wire (the
query percent-decoded under the profiles whose own clients sign it so) and the
exact body bytes; a streamed body (generator, file) cannot be signed with
requests and raises `ValueError`. Under `rfc9421` the headers are RFC 9421's
Signature-Input and Signature (`keyguard.rfc9421`), with a fresh nonce each
time; under the other profiles, two identical requests in one millisecond
carry one signature, and the server refuses the second as a replay.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .signing import BYBIT_RECV_WINDOW, PROFILES, Profile, format_timestamp, profile

if TYPE_CHECKING:
    import httpx

    _AuthBase = httpx.Auth
else:
    try:
        import httpx

        _AuthBase = httpx.Auth
    except ImportError:  # requests-only installs
        httpx = None
        _AuthBase = object


class SignedAuth(_AuthBase):
    """Signs each request with an access key and secret under a header profile
    (`kg`, `bitget`, `okx`, `bybit` or `rfc9421`; `headers` overrides single
    names like the server's `signing.headers`)."""

    requires_request_body = True

    def __init__(
        self,
        access_key: str,
        secret: str,
        passphrase: str | None = None,
        profile: str = "kg",
        *,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
        self.access_key = access_key
        self._secret = secret.encode("utf-8")
        self._passphrase = passphrase
        self.profile: Profile = _profile(profile, headers)
        if passphrase is not None and self.profile.passphrase is None:
            raise ValueError(
                f"profile {profile} has no passphrase header: name one with "
                "headers={'passphrase': ...}, as the server's signing.headers does"
            )
        if self.profile.structured:
            try:
                from . import rfc9421  # noqa: F401
            except ImportError as exc:
                raise ValueError(
                    "profile rfc9421 needs http-message-signatures: "
                    f"pip install 'keyguard[signing]' ({exc.name})"
                ) from None
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return f"SignedAuth(access_key={self.access_key!r}, profile={self.profile.name!r})"

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """The headers that sign `method target body` now (`target` = raw path?query;
        not rfc9421, whose signature covers the authority too: see `sign`)."""
        p = self.profile
        if p.structured:
            raise ValueError("rfc9421 signs a whole request: use SignedAuth as an auth")
        path, _, query = target.partition("?")
        timestamp = format_timestamp(self._clock(), p.iso_time)
        window = str(BYBIT_RECV_WINDOW) if p.recv_window else ""
        string = p.to_sign(timestamp, method, path or "/", query, body, self.access_key, window)
        mac = hmac.digest(self._secret, string, "sha256")
        out = {
            p.key: self.access_key,
            p.timestamp: timestamp,
            p.signature: mac.hex() if p.hex_mac else base64.b64encode(mac).decode("ascii"),
        }
        if p.recv_window:
            out[p.recv_window] = window
        if self._passphrase is not None and p.passphrase:
            out[p.passphrase] = self._passphrase
        return out

    def sign(self, request: Any, target: str, body: bytes) -> None:
        """Sign an httpx `Request` or a requests `PreparedRequest` in place."""
        if self.profile.structured:
            from .rfc9421 import sign_request

            sign_request(request, self.access_key, self._secret, self._clock(), body)
            if self._passphrase is not None and self.profile.passphrase:
                request.headers[self.profile.passphrase] = self._passphrase
            return
        request.headers.update(self.headers(request.method, target, body))

    # -- httpx --------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request, request.url.raw_path.decode("ascii"), request.content)
        yield request

    # -- requests -----------------------------------------------------------

    def __call__(self, r: Any) -> Any:
        """requests: sign a `PreparedRequest` (the `requests.auth.AuthBase` protocol)."""
        body = r.body
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode("utf-8")
            r.body = body  # send exactly the bytes that were signed
            r.headers["Content-Length"] = str(len(body))
        elif not isinstance(body, bytes | bytearray):
            raise ValueError("SignedAuth cannot sign a streamed body; pass bytes")
        self.sign(r, r.path_url or urlsplit(r.url).path or "/", bytes(body))
        return r


def _profile(name: str, headers: Mapping[str, str] | None) -> Profile:
    try:
        return profile(name, headers)
    except ValueError as exc:  # ConfigurationError names a server setting: say it plainly
        raise ValueError(str(exc).replace("signing.", "")) from None

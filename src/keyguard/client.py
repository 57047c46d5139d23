"""`SignedAuth`: sign requests to a keyguard API (SPEC section 6) in one line.

    httpx.get(url, auth=SignedAuth(access_key, secret))              # httpx, sync or async
    requests.get(url, auth=SignedAuth(access_key, secret))           # requests

It is an `httpx.Auth` (when httpx is installed; `requires_request_body`, so
the body is read before signing) and a `requests` auth (a callable taking
the `PreparedRequest`). Neither library is required: whichever is installed
works. The signature covers the raw path and query as sent on the wire and
the exact body bytes; a streamed body (generator, file) cannot be signed
with requests and raises `ValueError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .signing import PROFILES, Profile, format_timestamp, profile, sign

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
    (`kg`, `bitget` or `okx`; `headers` overrides single names like the
    server's `signing.headers`)."""

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
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return f"SignedAuth(access_key={self.access_key!r}, profile=<{self.profile.key}>)"

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """The headers that sign `method target body` now (`target` = raw path?query)."""
        path, _, query = target.partition("?")
        p = self.profile
        timestamp = format_timestamp(self._clock(), p.iso_time)
        out = {
            p.key: self.access_key,
            p.timestamp: timestamp,
            p.signature: sign(self._secret, timestamp, method, path or "/", query, body),
        }
        if self._passphrase is not None:
            out[p.passphrase] = self._passphrase
        return out

    # -- httpx --------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        request.headers.update(self.headers(request.method, target, request.content))
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
        target = r.path_url or urlsplit(r.url).path or "/"
        r.headers.update(self.headers(r.method, target, bytes(body)))
        return r


def _profile(name: str, headers: Mapping[str, str] | None) -> Profile:
    try:
        return profile(name, headers)
    except ValueError as exc:  # ConfigurationError names a server setting: say it plainly
        raise ValueError(str(exc).replace("signing.", "")) from None

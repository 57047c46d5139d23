"""`totp_confirm(secret_for)`: a ready step-up `confirm` for `admin_app`, on pyotp.

    admin_app(guard, authorize=..., confirm=totp_confirm(lambda request: user_secret))

Reads the one-time code from the `X-Keyguard-Confirm` header and checks it
against the signed-in user's TOTP secret (RFC 6238: 30-second steps, one step
of clock drift either way). Each time step is accepted at most once per
secret, and never one older than the last accepted (RFC 6238 section 5.2), so
a code seen on the wire cannot be replayed. After `max_failures` wrong codes
within `lockout` seconds, every code for that secret is refused until the
window has passed, so six digits cannot be guessed by trying. A right code
already used (a second change within its 30 seconds, or an older one) is
refused but is no guess: it does not count toward the lockout.

What it remembers (last accepted step and recent failures, per secret, keyed
by a hash of the secret, never the secret) lives in this process, bounded in
size: with several app instances, pin a user's admin requests to one, or give
each its own `confirm` that records the step in a shared store. It never logs
or returns a code or a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from ..exceptions import ConfigurationError
from .app import _call, _is_async

HEADER = "x-keyguard-confirm"
MAX_TRACKED = 100_000  # secrets whose last step / failures are remembered

SecretFor = Callable[[Request], "str | None | Awaitable[str | None]"]


class TotpConfirm:
    """The `confirm` callable `totp_confirm` returns (see the module docstring)."""

    def __init__(
        self,
        secret_for: SecretFor,
        *,
        max_failures: int = 5,
        lockout: float = 300.0,
        drift_steps: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import pyotp
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "totp_confirm needs pyotp: pip install 'keyguard[totp]'"
            ) from None
        if not callable(secret_for):
            raise TypeError("totp_confirm: secret_for must be a callable(request)")
        if max_failures < 1 or lockout <= 0 or drift_steps < 0:
            raise ValueError("totp_confirm: max_failures >= 1, lockout > 0, drift_steps >= 0")
        self._totp = pyotp.TOTP
        self._secret_for = secret_for
        self._secret_is_async = _is_async(secret_for)
        self.max_failures = max_failures
        self.lockout = lockout
        self.drift_steps = drift_steps
        self.clock = clock
        self._lock = threading.Lock()
        self._last: OrderedDict[bytes, int] = OrderedDict()  # hash -> last accepted step
        self._failures: OrderedDict[bytes, list[float]] = OrderedDict()

    async def __call__(self, request: Request, action: str) -> bool:
        code = request.headers.get(HEADER)
        if code is None:
            return False  # not an attempt: the page asks for a code and resends
        secret = await _call(self._secret_for, self._secret_is_async, request)
        if not isinstance(secret, str) or not secret:
            return False
        return self.check(secret, code)

    def check(self, secret: str, code: str) -> bool:
        """Whether `code` confirms for `secret` now (and use it up if so)."""
        key = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(key, ()) if t > now - self.lockout]
            if len(recent) >= self.max_failures:
                return False  # locked out: a right code is refused as well
            step = self._match(secret, code.strip(), now)
            if step is not None and step > self._last.get(key, -1):
                self._remember(self._last, key, step)
                self._failures.pop(key, None)
                return True
            if step is not None:  # a right code already used (or older): refused, but
                return False  # no guess either, so it does not count toward the lockout
            self._remember(self._failures, key, [*recent, now])
            return False

    def _match(self, secret: str, code: str, now: float) -> int | None:
        """The time step whose code `code` is, within the allowed drift; None if none."""
        try:
            totp = self._totp(secret)
            if len(code) != totp.digits or not (code.isascii() and code.isdigit()):
                return None
            current = int(now // totp.interval)
            for step in range(current - self.drift_steps, current + self.drift_steps + 1):
                if hmac.compare_digest(totp.generate_otp(step), code):
                    return step
        except (ValueError, TypeError):  # not a base32 secret (binascii.Error is a ValueError)
            return None
        return None

    @staticmethod
    def _remember(table: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_TRACKED:
            table.popitem(last=False)


def totp_confirm(secret_for: SecretFor, **options: Any) -> TotpConfirm:
    """A `confirm` for `admin_app` that wants a TOTP code in `X-Keyguard-Confirm`.

    `secret_for(request)` (sync or async) returns the signed-in user's base32
    TOTP secret, or None (then every change is refused with 401
    `step_up_required`). Options: `max_failures` (5) wrong codes per `lockout`
    (300 s), `drift_steps` (1), `clock`."""
    return TotpConfirm(secret_for, **options)


__all__ = ["HEADER", "TotpConfirm", "totp_confirm"]

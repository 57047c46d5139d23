"""Hashes at rest: a keyed HMAC-SHA256 for high-entropy bearer secrets, argon2id
for human-chosen passphrases (and for bearer secrets when `hashing: argon2id`).

A stored hash names its scheme (`hmac-sha256$...`, `$argon2id$...`, or
`kgf$<filter>$argon2id$...`), so a change of the `hashing` setting never locks
out existing keys. argon2 is slow by design; successful checks are remembered
(as a keyed digest of what passed, never the secret itself) so a warm request
never reruns it, and so are recent failures, so one wrong secret sent again
costs nothing.

A bearer secret hashed with argon2id carries a filter beside it: 16 bits of the
keyed HMAC of the secret (`FILTER_BITS`). A guess whose HMAC disagrees is refused
at once, without argon2: a flood of well-formed tokens with made-up secrets for a
key id it knows (the id is in every token) reaches argon2 once in 65,536 tries,
so it can neither take the CPU nor spend the key's argon2 budget and lock its
holder out. (16 bits of a keyed HMAC of a 128-bit secret tell nothing without
the pepper, and leave 112 bits to guess with it; passphrases, human-chosen, get
no filter.) What still reaches argon2 is bounded: one stored hash may cost at
most `SLOW_CHECKS` argon2 runs a second from one client and `SLOW_CHECKS_PER_KEY`
from all (beyond that, 429 `too_many_failures`), and the async driver runs it
off the event loop (`quick()` answers what needs no argon2). A malformed stored
hash means "not verified", never a crash. Comparisons use `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

from .exceptions import TooManyRequests

_HMAC_TAG = "hmac-sha256$"
_FILTER_TAG = "kgf$"  # kgf$<FILTER_BITS of HMAC, hex>$<argon2 hash>
FILTER_BITS = 16
SLOW_CHECKS = 4  # argon2 runs one client may cost one stored hash a second
SLOW_CHECKS_PER_KEY = 32  # argon2 runs one stored hash may cost a second, from all clients
_FAILED = 10_000  # remembered failures (keyed digests), oldest dropped first
# OWASP minimum for argon2id: 19 MiB, t=2, p=1.
_argon2 = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class HmacSha256:
    """HMAC-SHA256 under one key (RFC 2104), its keyed inner and outer SHA-256
    states computed once: copying them costs far less than `hmac.new()` or
    `hmac.digest()` setting them up on every call. OpenSSL's SHA-256 (hashlib's),
    which uses the CPU's SHA instructions: on a 1 KiB body it is about 4x faster
    than CPython's own. Known-answer tested against `hmac` (tests/test_hashing.py)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        key = hashlib.sha256(key).digest() if len(key) > 64 else key
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __repr__(self) -> str:  # never show key material
        return "HmacSha256(<key>)"

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Hasher:
    """Hashes and checks secrets and passphrases under one pepper."""

    def __init__(self, pepper: bytes, scheme: str = "hmac-sha256", remember: int = 10_000) -> None:
        self._mac = HmacSha256(pepper)
        self._scheme = scheme
        self._passed: OrderedDict[str, bytes] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._spent: dict[str, tuple[float, int]] = {}  # stored hash -> (second, argon2 runs)
        self._remember = remember
        self._lock = threading.Lock()

    def digest(self, secret: str) -> bytes:
        """HMAC-SHA256(pepper, secret)."""
        return self._mac.digest(secret.encode("utf-8", "surrogatepass"))

    def hash_secret(self, secret: str) -> str:
        if self._scheme == "argon2id":
            return f"{_FILTER_TAG}{self._filter(secret)}${_argon2.hash(secret)}"
        return _HMAC_TAG + self.digest(secret).hex()

    def _filter(self, secret: str) -> str:
        digest = self._mac.digest(b"kg-filter\0" + secret.encode("utf-8", "surrogatepass"))
        return digest[: FILTER_BITS // 8].hex()

    def _unfiltered(self, stored: str, presented: str) -> str | None:
        """The argon2 hash to run for `presented`; None when its filter refuses it."""
        if not stored.startswith(_FILTER_TAG):
            return stored
        expected, _, rest = stored[len(_FILTER_TAG) :].partition("$")
        return rest if hmac.compare_digest(self._filter(presented), expected) else None

    def hash_passphrase(self, passphrase: str) -> str:
        return _argon2.hash(passphrase)

    def check(self, stored: str | None, presented: str) -> bool:
        """Does `presented` match the stored hash? Never raises for bad input."""
        if not stored:
            return False
        if stored.startswith(_HMAC_TAG):
            expected = stored[len(_HMAC_TAG) :]
            return hmac.compare_digest(self.digest(presented).hex(), expected)
        if stored.startswith(("$argon2", _FILTER_TAG)):
            return self._check_argon2(stored, presented)
        return False

    def quick(self, stored: str | None, presented: str) -> bool | None:
        """`check(stored, presented)` when it can answer without argon2 (an HMAC, a
        filter that refuses, or an argon2 result remembered); None when only argon2
        can (run `slow` then, off the event loop)."""
        if not stored or not stored.startswith(("$argon2", _FILTER_TAG)):
            return self.check(stored, presented)
        if self._unfiltered(stored, presented) is None:
            return False
        digest = self.digest(presented)
        remembered = self._passed.get(stored)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        return False if self._failure(stored, digest) in self._failed else None

    def _failure(self, stored: str, digest: bytes) -> bytes:
        return self._mac.digest(stored.encode() + b"\0" + digest)

    def _check_argon2(self, stored: str, presented: str) -> bool:
        digest = self.digest(presented)
        remembered = self._passed.get(stored)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        return self._run_argon2(stored, presented, digest)

    def slow(self, stored: str, presented: str, who: str = "") -> bool:
        """`check` for what `quick` could not answer: argon2 (bounded per stored hash
        and per client `who`, remembered)."""
        return self._run_argon2(stored, presented, self.digest(presented), who)

    def _run_argon2(self, stored: str, presented: str, digest: bytes, who: str = "") -> bool:
        argon2_hash = self._unfiltered(stored, presented)
        if argon2_hash is None:
            return False
        failure = self._failure(stored, digest)
        if failure in self._failed:
            return False
        self._spend(stored, who)
        try:
            _argon2.verify(argon2_hash, presented)
        except (Argon2Error, InvalidHashError, ValueError, TypeError):
            with self._lock:
                self._failed[failure] = None
                if len(self._failed) > _FAILED:
                    self._failed.popitem(last=False)
            return False
        with self._lock:
            self._passed[stored] = digest
            if len(self._passed) > self._remember:
                self._passed.popitem(last=False)
        return True

    def _spend(self, stored: str, who: str) -> None:
        """Count one argon2 run against this stored hash from client `who`: 429 past
        `SLOW_CHECKS` a second from one client, or `SLOW_CHECKS_PER_KEY` from all.
        (Per client first, so one client flooding a key id it knows cannot lock the
        key's holder out: that takes as many clients as the total allows.)"""
        second = time.monotonic() // 1
        with self._lock:
            spent = self._spent
            if len(spent) >= self._remember:
                spent.clear()
            for name, limit in ((stored + "\0" + who, SLOW_CHECKS), (stored, SLOW_CHECKS_PER_KEY)):
                at, runs = spent.get(name, (second, 0))
                runs = runs + 1 if at == second else 1
                if runs > limit:
                    raise TooManyRequests(
                        "too_many_failures",
                        "Too many attempts for this API key; try again in a moment.",
                        retry_after=1,
                    )
                spent[name] = (second, runs)

"""Encryption of signing secrets at rest under a ring of master keys.

HMAC secrets cannot be hashed (the server must recompute the MAC), so they are
stored encrypted with AES-256-GCM (`cryptography`). The ring comes from
`signing.master_keys` (or env `KEYGUARD_MASTER_KEYS`): base64url-encoded 32-byte
keys, newest first. The newest encrypts; every key in the ring decrypts.

A ciphertext names the master key that made it, so rotation is: put a new key
first, run `guard.keys.reencrypt()` (CLI `keyguard keys reencrypt`), then drop
the old key. Format: `v1.<kid>.<base64url(nonce || ciphertext+tag)>`, where
`kid` is the first 8 characters of base64url(SHA-256(master key)): public, not
enough to learn anything about the key. The key record's id is bound in as
associated data, so a ciphertext copied onto another record does not decrypt.

This module never logs and never puts a key or secret in an exception message.
A ciphertext that does not decrypt is `None` ("not verified"), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"
_NONCE = 12


def _b64decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kid(key: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(key).digest()).decode()[:8]


def generate_master_key() -> str:
    """A new random master key in the format `signing.master_keys` expects."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


class MasterKeyRing:
    """The master keys, newest first. Empty is allowed: then nothing can be
    encrypted (`enabled` is False) and creating a signing key is refused."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        self._newest: str | None = None
        if not keys:
            return
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F811
        except ImportError:
            raise ConfigurationError(
                "signing.master_keys: encrypting signing secrets needs 'cryptography': "
                "pip install 'keyguard[signing]'"
            ) from None
        for position, text in enumerate(keys):
            try:
                raw = _b64decode(text) if isinstance(text, str) else b""
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ConfigurationError(
                    f"signing.master_keys: entry {position} is not a base64url-encoded 32-byte "
                    "key (make one with: keyguard master-key new)"
                )
            kid = _kid(raw)
            if kid in self._ciphers:
                raise ConfigurationError(
                    f"signing.master_keys: entry {position} repeats an earlier key"
                )
            self._ciphers[kid] = AESGCM(raw)
            if self._newest is None:
                self._newest = kid

    @property
    def enabled(self) -> bool:
        return self._newest is not None

    @property
    def newest(self) -> str | None:
        """The id of the key that encrypts (None when the ring is empty)."""
        return self._newest

    def encrypt(self, secret: str, context: str) -> str:
        """Encrypt `secret` under the newest key, bound to `context` (the key id)."""
        if self._newest is None:
            raise ConfigurationError("signing.master_keys: no master key is configured")
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self._newest].encrypt(nonce, secret.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}.{self._newest}.{body}"

    def decrypt(self, ciphertext: str | None, context: str) -> str | None:
        """The secret, or None when it cannot be decrypted by any key in the ring."""
        kid = self.key_of(ciphertext)
        cipher = self._ciphers.get(kid) if kid is not None else None
        if cipher is None or ciphertext is None:
            return None
        try:
            raw = _b64decode(ciphertext.split(".", 2)[2])
            plain = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode())
            return plain.decode()
        except Exception:  # InvalidTag, bad base64, short input, bad UTF-8: not verified
            return None

    @staticmethod
    def key_of(ciphertext: str | None) -> str | None:
        """The master key id a ciphertext names (None if it is not one of ours)."""
        if not isinstance(ciphertext, str):
            return None
        parts = ciphertext.split(".", 2)
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        return parts[1]

    def is_current(self, ciphertext: str | None) -> bool:
        """Already encrypted under the newest key (or nothing to encrypt)?"""
        return ciphertext is None or self.key_of(ciphertext) == self._newest

"""Token format: `<prefix>_<id>_<secret><checksum>`.

- `id`: 16 base62 characters, public (the "access key"), names the record.
- `secret`: 24 base62 characters (~143 bits from `secrets`).
- `checksum`: CRC32 of everything before it, as 6 base62 characters, so a
  mistyped or made-up token is refused offline (as GitHub's tokens are).

Only letters, digits and `_`: URL-safe, and a double-click selects it whole.
This module does no I/O and never logs.
"""

from __future__ import annotations

import re
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN = 16
SECRET_LEN = 24
CHECKSUM_LEN = 6
MAX_TOKEN_LEN = 16 + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN


def random_string(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(ALPHABET[digit])
    return "".join(reversed(out))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LEN)


def new_key_id() -> str:
    return random_string(ID_LEN)


def make_token(prefix: str, key_id: str) -> tuple[str, str]:
    """Return (token, secret_part) for a new secret under `key_id`."""
    secret = random_string(SECRET_LEN)
    body = f"{prefix}_{key_id}_{secret}"
    return body + checksum(body), secret


def hint(token: str) -> str:
    """The partial view for listings: the prefix and the last four characters."""
    return f"{token.split('_', 1)[0]}_…{token[-4:]}"


class TokenParser:
    """Parses tokens of one prefix. `parse` returns (id, secret) or None."""

    __slots__ = ("_match",)

    def __init__(self, prefix: str) -> None:
        pattern = (
            rf"({re.escape(prefix)}_([0-9A-Za-z]{{{ID_LEN}}})_([0-9A-Za-z]{{{SECRET_LEN}}}))"
            rf"([0-9A-Za-z]{{{CHECKSUM_LEN}}})"
        )
        self._match = re.compile(pattern).fullmatch

    def parse(self, token: str) -> tuple[str, str] | None:
        if len(token) > MAX_TOKEN_LEN:
            return None
        m = self._match(token)
        if m is None or checksum(m[1]) != m[4]:
            return None
        return m[2], m[3]

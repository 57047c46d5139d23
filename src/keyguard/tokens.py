"""Token format: `<prefix>_<id>_<secret><checksum>`.

- `id`: 16 base62 characters, public (the "access key"), names the record.
- `secret`: 24 base62 characters (~143 bits from `secrets`).
- `checksum`: CRC32 of everything before it, as 6 base62 characters, so a
  mistyped or made-up token is refused offline (as GitHub's tokens are).

Only letters, digits and `_`: URL-safe, and a double-click selects it whole.
This module does no I/O and never logs.
"""

from __future__ import annotations

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


# Every two-digit base62 string, in order: a CRC32 (< 62**6) is three of them.
_PAIRS = tuple(a + b for a in ALPHABET for b in ALPHABET)


def checksum(body: str) -> str:
    high, low = divmod(zlib.crc32(body.encode()), 3844)
    high, mid = divmod(high, 3844)
    return _PAIRS[high] + _PAIRS[mid] + _PAIRS[low]  # == _base62(crc, CHECKSUM_LEN)


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
    """Parses tokens of one prefix. `parse` returns (id, secret) or None.

    Fixed-width fields, so plain slicing: `isascii() and isalnum()` is exactly
    `[0-9A-Za-z]+` (an ASCII letter or digit), without a regex on the hot path.
    """

    __slots__ = ("_head", "_id_end", "_secret_end", "_length", "secret_start", "secret_end")

    def __init__(self, prefix: str) -> None:
        self._head = prefix + "_"
        self._id_end = len(self._head) + ID_LEN
        self._secret_end = self._id_end + 1 + SECRET_LEN
        self._length = self._secret_end + CHECKSUM_LEN
        # where the secret stands in a token of the right shape: token[secret_start:secret_end]
        self.secret_start, self.secret_end = self._id_end + 1, self._secret_end

    def layout(self) -> tuple[int, int, int]:
        """(token length, start, end of the id in it): what `quick_id` reads."""
        return self._length, len(self._head), self._id_end

    def quick_id(self, token: object) -> str | None:
        """Where the id would be, for a token of the right length (nothing else checked)."""
        if isinstance(token, str) and len(token) == self._length:
            return token[len(self._head) : self._id_end]
        return None

    def split(self, token: str) -> tuple[str, str] | None:
        """(id, secret) when the token has the right shape; the checksum is not checked."""
        id_end = self._id_end
        if (
            len(token) != self._length
            or not token.startswith(self._head)
            or token[id_end] != "_"
            or not token.isascii()
        ):
            return None
        key_id = token[len(self._head) : id_end]
        rest = token[id_end + 1 :]  # secret + checksum, alphanumeric as one run
        if not (key_id.isalnum() and rest.isalnum()):
            return None
        return key_id, token[id_end + 1 : self._secret_end]

    def checksum_ok(self, token: str) -> bool:
        """For a token of the right length: is it ASCII with a matching checksum?"""
        end = self._secret_end
        return token.isascii() and checksum(token[:end]) == token[end:]

    def parse(self, token: str) -> tuple[str, str] | None:
        """(id, secret) of a well-formed token with a valid checksum, else None."""
        parts = self.split(token)
        return parts if parts is not None and self.checksum_ok(token) else None

    def found_in(self, text: str) -> bool:
        """Whether `text` holds, anywhere in it, a token of this prefix's shape (`split`:
        the prefix, the id, the secret and checksum fields). The checksum is not
        required: it is a CRC anyone can recompute, so a token with a mistyped one
        still carries a working secret. For validating what is shown or logged
        (names, owners), not the hot path."""
        head, length = self._head, self._length
        start = text.find(head)
        while start != -1 and start + length <= len(text):
            if self.split(text[start : start + length]) is not None:
                return True
            start = text.find(head, start + 1)
        return False

"""Hashes at rest: HMAC for bearer secrets, argon2id for passphrases, never a crash on bad input."""

from __future__ import annotations

import pytest

from keyguard.hashing import Hasher

H = Hasher(b"pepper-0123456789abcdef")


def test_hmac_roundtrip_and_keyed() -> None:
    stored = H.hash_secret("s3cret")
    assert stored.startswith("hmac-sha256$") and "s3cret" not in stored
    assert H.check(stored, "s3cret")
    assert not H.check(stored, "s3creT")
    assert not Hasher(b"another-pepper-0000").check(stored, "s3cret")


def test_argon2id_for_passphrases_and_remembered() -> None:
    stored = H.hash_passphrase("correct horse")
    assert stored.startswith("$argon2id$")
    assert H.check(stored, "correct horse")
    assert H.check(stored, "correct horse")  # second time from the memory of successes
    assert not H.check(stored, "wrong horse")


def test_argon2id_bearer_scheme() -> None:
    h = Hasher(b"pepper-0123456789abcdef", "argon2id")
    stored = h.hash_secret("abc")
    assert stored.startswith("kgf$") and "$argon2id$" in stored
    assert h.check(stored, "abc") and not h.check(stored, "abd")
    # a scheme change never locks existing hashes out
    assert H.check(stored, "abc")
    assert h.check(H.hash_secret("abc"), "abc")


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("hmac-sha256$", id="hmac-empty"),
        pytest.param("hmac-sha256$zz", id="hmac-garbage"),
        pytest.param("$argon2id$v=19$garbage", id="argon2-garbage"),
        pytest.param("kgf$", id="filter-empty"),
        pytest.param("kgf$zz$$argon2id$v=19$garbage", id="filter-garbage"),
        pytest.param("plain-text-secret", id="unknown-scheme"),
    ],
)
def test_malformed_stored_hash_is_not_verified(stored: str | None) -> None:
    assert H.check(stored, "anything") is False


@pytest.mark.parametrize("presented", ["", "\udcff", "é" * 300])
def test_odd_presented_values(presented: str) -> None:
    assert H.check(H.hash_secret("x"), presented) is False


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 56, 64, 1000])
def test_hmac_sha256_matches_the_standard_library(key_len: int, msg_len: int) -> None:
    import hmac
    import os

    from keyguard.hashing import HmacSha256

    key, msg = os.urandom(key_len), os.urandom(msg_len)
    mac = HmacSha256(key)
    assert mac.digest(msg) == hmac.digest(key, msg, "sha256")
    assert mac.digest(msg) == mac.digest(msg)  # the keyed states are copied, never consumed


def test_the_argon2_filter_answers_most_wrong_secrets_without_argon2() -> None:
    h = Hasher(b"pepper-0123456789abcdef", "argon2id")
    stored = h.hash_secret("the secret")
    wrong = [f"guess {i}" for i in range(2000)]
    answers = [h.quick(stored, w) for w in wrong]
    assert answers.count(False) >= 1990 and set(answers) <= {False, None}
    assert h.quick(stored, "the secret") is None  # only argon2 can say yes
    assert h.slow(stored, "the secret") and h.quick(stored, "the secret") is True
    # An argon2 hash from before the filter still verifies (through argon2 alone).
    legacy = stored.split("$", 2)[2]
    assert legacy.startswith("$argon2id$") and h.check(legacy, "the secret")

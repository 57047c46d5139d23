"""Token format (SPEC section 3): shape, entropy, checksum, parsing that never passes garbage."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard import tokens
from keyguard.tokens import TokenParser

from .kgutil import bad_checksum

PARSER = TokenParser("kg")


def test_shape_and_roundtrip() -> None:
    key_id = tokens.new_key_id()
    token, secret = tokens.make_token("kg", key_id)
    assert re.fullmatch(r"kg_[0-9A-Za-z]{16}_[0-9A-Za-z]{30}", token)
    assert PARSER.parse(token) == (key_id, secret)
    # 24 base62 characters: > 128 bits of secret entropy
    assert len(secret) * 5.95 > 128


def test_tokens_differ() -> None:
    made = {tokens.make_token("kg", "A" * 16)[0] for _ in range(50)}
    assert len(made) == 50


def test_hint_is_not_the_token() -> None:
    token, secret = tokens.make_token("kg", tokens.new_key_id())
    h = tokens.hint(token)
    assert h.startswith("kg_") and h.endswith(token[-4:])
    assert secret not in h and PARSER.parse(h) is None


def _valid() -> str:
    return tokens.make_token("kg", tokens.new_key_id())[0]


TOKEN = _valid()

REFUSED = [
    pytest.param("", id="empty"),
    pytest.param(bad_checksum(TOKEN), id="bad-checksum"),
    pytest.param(TOKEN[:-1], id="truncated"),
    pytest.param(TOKEN + "A", id="extended"),
    pytest.param(" " + TOKEN, id="leading-space"),
    pytest.param(TOKEN + "\n", id="trailing-newline"),
    pytest.param("xx" + TOKEN[2:], id="other-prefix"),
    pytest.param(TOKEN.replace("_", "-"), id="dashes"),
    pytest.param(TOKEN[:5] + "é" + TOKEN[6:], id="non-ascii"),
    pytest.param(TOKEN[:5] + "٣" + TOKEN[6:], id="unicode-digit"),
    pytest.param(TOKEN * 50, id="oversized"),
    pytest.param("kg_" + "A" * 16 + "_" + "A" * 30, id="made-up"),
]


@pytest.mark.parametrize("token", REFUSED)
def test_refused(token: str) -> None:
    assert PARSER.parse(token) is None


def test_other_prefix_parser() -> None:
    token, secret = tokens.make_token("acme", "B" * 16)
    assert TokenParser("acme").parse(token) == ("B" * 16, secret)
    assert PARSER.parse(token) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_random_text_never_parses(text: str) -> None:
    assert PARSER.parse(text) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(TOKEN) - 1),
    st.sampled_from(string.ascii_letters + string.digits),
)
def test_single_character_change_refused(pos: int, char: str) -> None:
    if TOKEN[pos] == char or TOKEN[pos] == "_":
        return
    changed = TOKEN[:pos] + char + TOKEN[pos + 1 :]
    # CRC32 detects every single-character change.
    assert PARSER.parse(changed) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=30, max_size=30))
def test_well_shaped_random_rest_refused(rest: str) -> None:
    # A random secret+checksum is accepted only if the checksum happens to match (~1 in 5e10).
    candidate = f"kg_{'C' * 16}_{rest}"
    parsed = PARSER.parse(candidate)
    assert parsed is None or tokens.checksum(candidate[:-6]) == candidate[-6:]

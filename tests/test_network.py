"""Client IP behind trusted proxies (walked from the right) and allowlist policy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard import InvalidKeySettings
from keyguard.network import ClientResolver, ip_allowed, parse_allowlist, parse_ip

TRUSTED = ClientResolver([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")])
NOBODY = ClientResolver([])


def ip(text: str | None) -> object:
    return None if text is None else ipaddress.ip_address(text)


RESOLVE = [
    # untrusted peer: headers ignored
    pytest.param(
        NOBODY, "203.0.113.5", ["198.51.100.1"], [], "203.0.113.5", id="no-trust-xff-ignored"
    ),
    pytest.param(
        TRUSTED, "203.0.113.5", ["198.51.100.1"], [], "203.0.113.5", id="untrusted-peer-spoof"
    ),
    pytest.param(
        TRUSTED, "203.0.113.5", [], ["for=198.51.100.1"], "203.0.113.5", id="untrusted-peer-fwd"
    ),
    # trusted peer: rightmost untrusted hop
    pytest.param(TRUSTED, "10.0.0.1", ["198.51.100.1"], [], "198.51.100.1", id="one-hop"),
    pytest.param(
        TRUSTED,
        "10.0.0.1",
        ["6.6.6.6, 198.51.100.1, 10.0.0.2"],
        [],
        "198.51.100.1",
        id="walk-right",
    ),
    pytest.param(
        TRUSTED, "10.0.0.1", ["6.6.6.6", "198.51.100.1"], [], "198.51.100.1", id="two-lines"
    ),
    pytest.param(TRUSTED, "10.0.0.1", ["10.0.0.3, 10.0.0.2"], [], "10.0.0.3", id="all-trusted"),
    pytest.param(TRUSTED, "10.0.0.1", [], [], "10.0.0.1", id="trusted-no-headers"),
    pytest.param(TRUSTED, "10.0.0.1", ["198.51.100.1:4711"], [], "198.51.100.1", id="xff-port"),
    pytest.param(TRUSTED, "10.0.0.1", ["2001:db8::1"], [], "2001:db8::1", id="xff-ipv6"),
    pytest.param(TRUSTED, "10.0.0.1", ["[2001:db8::1]:443"], [], "2001:db8::1", id="xff-ipv6-port"),
    pytest.param(TRUSTED, "10.0.0.1", ["6.6.6.6, garbage"], [], None, id="xff-garbage-rightmost"),
    pytest.param(TRUSTED, "10.0.0.1", ["6.6.6.6, "], [], None, id="xff-empty-hop"),
    pytest.param(
        TRUSTED, "10.0.0.1", ["198.51.100.1, unknown, 10.0.0.2"], [], None, id="xff-unknown"
    ),
    pytest.param(TRUSTED, "10.0.0.1", [], ["for=198.51.100.1"], "198.51.100.1", id="fwd"),
    pytest.param(
        TRUSTED, "10.0.0.1", [], ['for="[2001:db8::17]:4711"'], "2001:db8::17", id="fwd-ipv6"
    ),
    pytest.param(
        TRUSTED,
        "10.0.0.1",
        [],
        ["for=6.6.6.6, for=198.51.100.1;proto=https"],
        "198.51.100.1",
        id="fwd-chain",
    ),
    pytest.param(
        TRUSTED, "10.0.0.1", [], ["For=198.51.100.1;by=10.0.0.1"], "198.51.100.1", id="fwd-case"
    ),
    pytest.param(TRUSTED, "10.0.0.1", [], ["for=_hidden"], None, id="fwd-obfuscated"),
    pytest.param(TRUSTED, "10.0.0.1", [], ["for=unknown"], None, id="fwd-unknown"),
    pytest.param(TRUSTED, "10.0.0.1", [], ["proto=https"], None, id="fwd-no-for"),
    pytest.param(TRUSTED, "10.0.0.1", [], ["for="], None, id="fwd-empty"),
    pytest.param(TRUSTED, "10.0.0.1", [], ['for="[2001:db8::17'], None, id="fwd-unclosed-bracket"),
    pytest.param(
        TRUSTED, "10.0.0.1", ["198.51.100.1"], ["for=6.6.6.6"], "198.51.100.1", id="xff-wins"
    ),
    # peers
    pytest.param(NOBODY, "2001:db8::5", [], [], "2001:db8::5", id="ipv6-peer"),
    pytest.param(NOBODY, "::ffff:198.51.100.9", [], [], "198.51.100.9", id="ipv4-mapped-peer"),
    pytest.param(TRUSTED, "fd00::1", ["198.51.100.1"], [], "198.51.100.1", id="ipv6-trusted-peer"),
    pytest.param(NOBODY, None, [], [], None, id="no-peer"),
    pytest.param(NOBODY, "testclient", [], [], None, id="named-peer"),
]


@pytest.mark.parametrize(("resolver", "peer", "xff", "fwd", "expected"), RESOLVE)
def test_resolve(
    resolver: ClientResolver, peer: str | None, xff: list[str], fwd: list[str], expected: str | None
) -> None:
    assert resolver.resolve(peer, xff, fwd) == ip(expected)


header_text = st.text(alphabet=st.characters(codec="latin-1"), max_size=80)
hop = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f'"[{a}]:80"'),
    st.sampled_from(["unknown", "_x", "", " ", "for=", ";", ",", '"', "[", "]"]),
    header_text,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(hop, max_size=6), st.lists(header_text, max_size=3))
def test_forwarding_headers_never_crash_never_pick_a_trusted_hop(
    xff: list[str], fwd: list[str]
) -> None:
    lines = [", ".join(xff)] if xff else []
    got = TRUSTED.resolve("10.9.9.9", lines, fwd)
    assert got is None or isinstance(got, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if got is not None and (lines or fwd):
        # only a trusted result when every hop was trusted (the leftmost proxy called)
        assert (
            not TRUSTED.is_trusted(got)
            or all(
                (p := parse_ip(h)) is not None and TRUSTED.is_trusted(p)
                for line in lines
                for h in line.split(",")
            )
            or not lines
        )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.lists(header_text, max_size=3), st.lists(header_text, max_size=3))
def test_untrusted_peer_headers_never_matter(peer: str, xff: list[str], fwd: list[str]) -> None:
    assert TRUSTED.resolve(peer, xff, fwd) == TRUSTED.resolve(peer) or TRUSTED.is_trusted(
        TRUSTED.resolve(peer)  # type: ignore[arg-type]
    )


ALLOW_BAD = [
    pytest.param(["0.0.0.0/0"], False, id="everything-v4"),
    pytest.param(["::/0"], True, id="everything-v6"),
    pytest.param(["10.0.0.0/8"], False, id="private"),
    pytest.param(["127.0.0.1"], False, id="loopback"),
    pytest.param(["::1"], False, id="loopback-v6"),
    pytest.param(["169.254.0.0/16"], False, id="link-local"),
    pytest.param(["fe80::/10"], False, id="link-local-v6"),
    pytest.param(["192.168.1.0/24"], False, id="private-192"),
    pytest.param(["10.0.0.0/7"], False, id="overlaps-private"),
    pytest.param(["fd12:3456::/48"], False, id="unique-local-v6"),
    pytest.param(["::ffff:192.168.0.1"], False, id="v4-mapped-private"),
    pytest.param(["100.64.0.0/10"], False, id="shared-cgnat"),
    pytest.param(["not-an-ip"], True, id="garbage"),
    pytest.param(["1.2.3.4/40"], True, id="bad-prefix"),
    pytest.param("8.8.8.0/24", True, id="string-not-list"),
    pytest.param([42], True, id="not-a-string"),
]


@pytest.mark.parametrize(("entries", "allow_private"), ALLOW_BAD)
def test_allowlist_refused(entries: object, allow_private: bool) -> None:
    with pytest.raises(InvalidKeySettings) as info:
        parse_allowlist(entries, allow_private)  # type: ignore[arg-type]
    assert info.value.field == "allowed_ips"


@pytest.mark.parametrize(
    ("entries", "allow_private"),
    [
        pytest.param(["8.8.8.0/24", "2606:4700::/32"], False, id="public"),
        pytest.param(["10.0.0.0/8", "127.0.0.1"], True, id="private-allowed"),
        pytest.param(["1.1.1.1"], False, id="single"),
        pytest.param(["203.0.113.0/24", "2001:db8::/32"], False, id="documentation-ranges"),
    ],
)
def test_allowlist_accepted(entries: list[str], allow_private: bool) -> None:
    assert len(parse_allowlist(entries, allow_private)) == len(entries)


def test_ip_allowed() -> None:
    nets = parse_allowlist(["8.8.8.0/24"], False)
    assert ip_allowed(ipaddress.ip_address("8.8.8.9"), nets)
    assert not ip_allowed(ipaddress.ip_address("8.8.9.9"), nets)
    assert not ip_allowed(None, nets)

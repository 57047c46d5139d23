"""Client IP behind trusted proxies (walked from the right) and allowlist policy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard import InvalidKeySettings
from keyguard.network import ClientResolver, ip_allowed, parse_allowlist, parse_ip

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
TRUSTED = ClientResolver(PROXIES)
NOBODY = ClientResolver([])
# The same trust, for proxies that write RFC 7239 `Forwarded` (proxy_header: forwarded).
FORWARDED = {id(TRUSTED): ClientResolver(PROXIES, "forwarded"), id(NOBODY): NOBODY}
UNIX = ClientResolver(["unix", *PROXIES])


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
        TRUSTED, "10.0.0.1", ["198.51.100.1"], ["for=6.6.6.6"], "198.51.100.1", id="xff-family"
    ),
    # unix-socket peers (no address): trusted only when "unix" is listed
    pytest.param(NOBODY, None, ["198.51.100.1"], [], None, id="unix-untrusted"),
    pytest.param(NOBODY, "", ["198.51.100.1"], [], None, id="unix-empty-untrusted"),
    pytest.param(UNIX, None, ["198.51.100.1"], [], "198.51.100.1", id="unix-trusted"),
    pytest.param(UNIX, "", ["198.51.100.1, 10.0.0.2"], [], "198.51.100.1", id="unix-trusted-wsgi"),
    pytest.param(UNIX, None, [], [], None, id="unix-trusted-no-header"),
    pytest.param(UNIX, "203.0.113.5", ["198.51.100.1"], [], "203.0.113.5", id="unix-not-ip-trust"),
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
    if fwd and not xff:  # a row about `Forwarded`: the resolver of proxies that write it
        resolver = FORWARDED[id(resolver)]
    assert resolver.resolve(peer, {"x-forwarded-for": xff, "forwarded": fwd}) == ip(expected)


@pytest.mark.parametrize(
    ("resolver", "headers", "expected"),
    [
        pytest.param(
            TRUSTED, {"forwarded": ["for=198.51.100.1"]}, "10.0.0.1", id="xff-ignores-fwd"
        ),
        pytest.param(
            FORWARDED[id(TRUSTED)],
            {"x-forwarded-for": ["198.51.100.1"]},
            "10.0.0.1",
            id="fwd-ignores-xff",
        ),
        pytest.param(
            FORWARDED[id(TRUSTED)],
            {"x-forwarded-for": ["6.6.6.6"], "forwarded": ["for=198.51.100.1"]},
            "198.51.100.1",
            id="fwd-family",
        ),
    ],
)
def test_only_the_configured_family(
    resolver: ClientResolver, headers: dict[str, list[str]], expected: str
) -> None:
    assert resolver.resolve("10.0.0.1", headers) == ip(expected)


TLS = [
    # (resolver, peer, headers, socket scheme, TLS?)
    pytest.param(TRUSTED, "203.0.113.5", {}, "https", True, id="socket-https"),
    pytest.param(TRUSTED, "203.0.113.5", {}, "http", False, id="socket-http"),
    pytest.param(TRUSTED, "203.0.113.5", {}, "wss", True, id="socket-wss"),
    pytest.param(
        TRUSTED, "203.0.113.5", {"x-forwarded-proto": ["https"]}, "http", False, id="spoofed"
    ),
    pytest.param(TRUSTED, "10.0.0.1", {"x-forwarded-proto": ["https"]}, "http", True, id="xfp"),
    pytest.param(TRUSTED, "10.0.0.1", {"x-forwarded-proto": ["HTTPS "]}, "http", True, id="case"),
    pytest.param(TRUSTED, "10.0.0.1", {"x-forwarded-proto": ["http"]}, "https", False, id="plain"),
    pytest.param(
        TRUSTED, "10.0.0.1", {"x-forwarded-proto": ["https, http"]}, "http", False, id="mixed"
    ),
    pytest.param(TRUSTED, "10.0.0.1", {}, "http", False, id="trusted-no-proto"),
    pytest.param(
        TRUSTED, "10.0.0.1", {"forwarded": ["for=1.2.3.4;proto=https"]}, "http", False, id="other"
    ),
    pytest.param(
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"forwarded": ["for=1.2.3.4;proto=https"]},
        "http",
        True,
        id="fwd-proto",
    ),
    pytest.param(  # the client's own connection was TLS; a hop between proxies was not
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"forwarded": ["for=1.2.3.4;proto=https, for=10.0.0.2;proto=http"]},
        "http",
        True,
        id="fwd-inner-plain-hop",
    ),
    pytest.param(  # the client wrote proto=https itself; the proxy's element has no proto
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"forwarded": ["for=9.9.9.9;proto=https", "for=1.2.3.4"]},
        "https",
        False,
        id="fwd-client-spoofed-proto",
    ),
    pytest.param(  # the client's element said http
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"forwarded": ["for=1.2.3.4;proto=http, for=10.0.0.2;proto=https"]},
        "https",
        False,
        id="fwd-client-plain",
    ),
    pytest.param(  # no proxy sends proto: the socket's scheme
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"forwarded": ["for=1.2.3.4"]},
        "https",
        True,
        id="fwd-no-proto-at-all",
    ),
    pytest.param(
        FORWARDED[id(TRUSTED)],
        "10.0.0.1",
        {"x-forwarded-proto": ["https"]},
        "http",
        False,
        id="fwd-ignores-xfp",
    ),
    pytest.param(UNIX, None, {"x-forwarded-proto": ["https"]}, "http", True, id="unix-trusted"),
    pytest.param(
        NOBODY, None, {"x-forwarded-proto": ["https"]}, "http", False, id="unix-untrusted"
    ),
]


@pytest.mark.parametrize(("resolver", "peer", "headers", "scheme", "tls"), TLS)
def test_is_tls(
    resolver: ClientResolver,
    peer: str | None,
    headers: dict[str, list[str]],
    scheme: str,
    tls: bool,
) -> None:
    assert resolver.is_tls(peer, headers, scheme) is tls


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
    got = TRUSTED.resolve("10.9.9.9", {"x-forwarded-for": lines})
    fgot = FORWARDED[id(TRUSTED)].resolve("10.9.9.9", {"forwarded": fwd})
    assert fgot is None or isinstance(fgot, ipaddress.IPv4Address | ipaddress.IPv6Address)
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
    headers = {"x-forwarded-for": xff, "forwarded": fwd}
    assert TRUSTED.resolve(peer, headers) == TRUSTED.resolve(peer) or TRUSTED.is_trusted(
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
    pytest.param(["64:ff9b::10.0.0.0/104"], False, id="nat64-private"),
    pytest.param(["64:ff9b::/64"], False, id="nat64-all-of-v4"),
    pytest.param(["64:ff9b:1::a00:0/104"], False, id="nat64-local-use-private"),
    pytest.param(["2002:a00::/24"], False, id="6to4-of-10-8"),
    pytest.param(["2002:c0a8::/32"], False, id="6to4-of-192-168"),
    pytest.param(["2002::/16"], False, id="6to4-all-of-v4"),
    pytest.param(["::10.0.0.0/104"], False, id="v4-compatible-private"),
    pytest.param(["::127.0.0.1"], False, id="v4-compatible-loopback"),
    pytest.param(["::ffff:0:10.0.0.0/104"], False, id="v4-translated-private"),
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
        pytest.param(["64:ff9b::8.8.8.0/120"], False, id="nat64-public"),
        pytest.param(["2002:808:800::/40"], False, id="6to4-public"),
    ],
)
def test_allowlist_accepted(entries: list[str], allow_private: bool) -> None:
    assert len(parse_allowlist(entries, allow_private)) == len(entries)


def test_ip_allowed() -> None:
    nets = parse_allowlist(["8.8.8.0/24"], False)
    assert ip_allowed(ipaddress.ip_address("8.8.8.9"), nets)
    assert not ip_allowed(ipaddress.ip_address("8.8.9.9"), nets)
    assert not ip_allowed(None, nets)


def test_failure_buckets() -> None:
    """An IPv6 client counts per /64; an IPv4 client behind NAT64 as that IPv4 (its
    /64 holds every NAT64 client), and as the same client it is over IPv4."""
    from keyguard.network import bucket

    def b(text: str) -> str:
        ip = parse_ip(text)
        assert ip is not None
        return bucket(ip)

    assert b("2001:db8:1:2::1") == b("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert b("64:ff9b::198.51.100.7") == b("198.51.100.7") == "198.51.100.7"
    assert b("64:ff9b::198.51.100.8") != b("64:ff9b::198.51.100.7")
    assert b("::ffff:198.51.100.7") == "198.51.100.7"
    assert b("64:ff9b:1:2::198.51.100.7") == "198.51.100.7"  # a local-use /96 (RFC 8215)

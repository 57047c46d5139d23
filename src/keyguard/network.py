"""Who is calling: the client IP (and scheme) behind trusted proxies, and
allowlist matching.

Forwarding headers are believed only when the socket peer is a trusted proxy
(`trusted_proxies`: CIDRs, and `"unix"` for a unix-socket peer, which ASGI
servers report as no client and WSGI servers as an empty `REMOTE_ADDR`); then
the chain is walked from the right and the first address that is not a
trusted proxy is the client (uvicorn's and werkzeug's approach, without hop
counting). Only the one header family the proxies write is read
(`proxy_header`): `X-Forwarded-For` with `X-Forwarded-Proto`, or RFC 7239
`Forwarded` with its `for=` and `proto=`; the other family is ignored, so a
client cannot add a header the proxy does not overwrite. An entry that cannot
be parsed (`unknown`, an obfuscated name, garbage) ends the walk with an
unknown client: such a request never matches an allowlist.

The scheme (`require_tls`) is the socket's unless a trusted proxy reported a
proto; then the request is TLS only when every proto listed is https (a
chain that names one plain hop is not, whichever hop it was).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from .exceptions import InvalidKeySettings, shown_value

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNIX = "unix"  # the `trusted_proxies` entry naming a unix-socket peer
TLS_SCHEMES = frozenset({"https", "wss"})


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer or header entry; None when it is not one."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def bucket(ip: IPAddress) -> str:
    """Whose attempts these are (failed authentications, slow hashes): the address,
    or an IPv6 /64. A client with no address (a unix-socket peer that is not a
    trusted proxy, an `unknown` hop) has no bucket: such clients are never counted
    as one, or a few bad tokens from anyone would lock out everyone behind that
    socket."""
    if ip.version == 6:
        if ip in _NAT64 or ip in _NAT64_LOCAL:  # an IPv4 client behind NAT64: that IPv4's
            # own bucket, not one /64 shared by every NAT64 client (a /96 prefix assumed)
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def is_unix_peer(peer: str | None) -> bool:
    """A peer with no address: a unix socket (ASGI `client` None, WSGI `REMOTE_ADDR`
    empty; some servers name the socket path)."""
    return not peer or peer.startswith("/") or peer.startswith("unix")


def _param(element: str, param: str) -> str | None:
    """The value of `param` in one RFC 7239 element, or None."""
    for pair in element.split(";"):
        name, eq, value = pair.strip().partition("=")
        if eq and name.strip().lower() == param:
            return value.strip().strip('"')
    return None


def _forwarded(values: Iterable[str], param: str) -> list[str]:
    """The `param=` values (`for`, `proto`) of RFC 7239 `Forwarded` headers, in order;
    an element without it reads as "unknown"."""
    out = []
    for value in values:
        for element in value.split(","):
            found = "unknown"
            for pair in element.split(";"):
                name, eq, val = pair.strip().partition("=")
                if eq and name.strip().lower() == param:
                    found = val.strip().strip('"')
            out.append(found)
    return out


class ClientResolver:
    """Finds the client IP and scheme of a request from its peer and the one
    forwarding header family the trusted proxies write."""

    __slots__ = ("_trusted", "_unix", "_forwarded", "header_names")

    def __init__(
        self, trusted_proxies: Sequence[IPNetwork | str], proxy_header: str = "x-forwarded-for"
    ) -> None:
        self._trusted = tuple(n for n in trusted_proxies if not isinstance(n, str))
        self._unix = UNIX in trusted_proxies
        self._forwarded = proxy_header == "forwarded"
        self.header_names = (
            frozenset({"forwarded"})
            if self._forwarded
            else frozenset({"x-forwarded-for", "x-forwarded-proto"})
        )

    def is_trusted(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._trusted)

    def _peer(self, peer: str | None) -> tuple[IPAddress | None, bool]:
        """(the peer's address, is it a trusted proxy)."""
        if is_unix_peer(peer):
            return None, self._unix
        ip = parse_ip(peer or "")
        return ip, ip is not None and bool(self._trusted) and self.is_trusted(ip)

    def resolve(
        self, peer: str | None, headers: Mapping[str, Sequence[str]] | None = None
    ) -> IPAddress | None:
        ip, trusted = self._peer(peer)
        if not trusted or not headers:
            return ip
        if self._forwarded:
            hops = _forwarded(headers.get("forwarded", ()), "for")
        else:
            hops = [h for v in headers.get("x-forwarded-for", ()) for h in v.split(",")]
        if not hops:
            return ip
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:
                return None
            if not self.is_trusted(ip):
                return ip
        return ip  # every hop is a trusted proxy: the leftmost one called

    def is_tls(
        self, peer: str | None, headers: Mapping[str, Sequence[str]] | None, scheme: str
    ) -> bool:
        """Did the client's request arrive over TLS?"""
        if headers and self._peer(peer)[1]:
            if self._forwarded:
                proto = self._client_proto(headers.get("forwarded", ()))
                if proto is not None:
                    return proto in TLS_SCHEMES
            else:
                protos = [p for v in headers.get("x-forwarded-proto", ()) for p in v.split(",")]
                if protos:  # a plain hop anywhere in the list: not TLS (whose it was is unknown)
                    return all(p.strip().lower() in TLS_SCHEMES for p in protos)
        return scheme in TLS_SCHEMES

    def _client_proto(self, values: Sequence[str]) -> str | None:
        """RFC 7239: each proxy appends one element for the connection it received,
        so the scheme the client used is the `proto` of the element that names the
        client (walked from the right, as `resolve` does); "" when that element has
        none while others do (unknown: not TLS), None when no element has one (the
        proxies do not send it: the socket's scheme decides)."""
        elements = [
            (
                _param(element, "for"),
                _param(element, "proto"),
            )
            for value in values
            for element in value.split(",")
        ]
        if not any(proto for _, proto in elements):
            return None
        for hop, proto in reversed(elements):
            ip = parse_ip(hop or "")
            if ip is None or not self.is_trusted(ip):
                return (proto or "").lower()
        return (elements[0][1] or "").lower()  # every hop a trusted proxy: the leftmost


# What `policy.allow_private_ips` is about: RFC 1918 and unique-local ranges, loopback,
# link-local, "this network". (Python's `is_private` also counts documentation and other
# special ranges, which are no deployment risk.)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215's, for local /96 prefixes
# IPv6 blocks whose last 32 bits are an IPv4 address: IPv4-mapped, and NAT64.
# IPv6 blocks that carry an IPv4 address, and where: (block, the bit after the IPv4
# address). IPv4-mapped, IPv4-translated, IPv4-compatible and NAT64 (the well-known /96,
# and RFC 8215's local-use block with a /96 prefix): the last 32 bits; 6to4
# (2002::/16): the 32 bits after the first 16. Not judged: Teredo (its client address
# is obfuscated), ISATAP (an interface id in any /64), NAT64 prefixes other than /96.
_CARRIES_V4 = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 0),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), 0),  # SIIT's IPv4-translated (RFC 7915)
    (ipaddress.IPv6Network("::/96"), 0),  # IPv4-compatible (deprecated; holds :: and ::1)
    (_NAT64, 0),
    (_NAT64_LOCAL, 0),
    (ipaddress.IPv6Network("2002::/16"), 80),
)


def carried_v4(net: IPNetwork) -> IPNetwork | None:
    """The IPv4 network an IPv6 network reaches through a block that carries IPv4
    (see _CARRIES_V4); 0.0.0.0/0 when it holds a whole such block; else None."""
    if not isinstance(net, ipaddress.IPv6Network):
        return None
    for block, shift in _CARRIES_V4:
        if net.supernet_of(block):
            return ipaddress.IPv4Network("0.0.0.0/0")
        if net.subnet_of(block):
            bits = net.prefixlen - (128 - shift - 32)  # how many bits of the IPv4 it fixes
            address = (int(net.network_address) >> shift) & 0xFFFFFFFF
            return ipaddress.IPv4Network((address, min(32, max(0, bits))), strict=False)
    return None


PRIVATE_RANGES = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
        "::/128",
    )
)


def is_private(net: IPNetwork) -> bool:
    """Does `net` hold private, loopback or link-local addresses, also as IPv6 forms
    that carry an IPv4 address (::ffff:a.b.c.d, NAT64, 6to4: see carried_v4)?"""
    net = carried_v4(net) or net
    return any(net.version == r.version and net.overlaps(r) for r in PRIVATE_RANGES)


# What an allowlist entry looks like (hex digits, dots and colons, a prefix length):
# echoed in a refusal as written; anything else only as a hint (see shown_value).
_IP_TEXT = re.compile(r"(?=.*[.:])[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?")


def parse_allowlist(entries: Iterable[str], allow_private: bool) -> tuple[IPNetwork, ...]:
    """Validate an allowlist; raises InvalidKeySettings('allowed_ips', ...)."""
    if isinstance(entries, str):
        raise InvalidKeySettings("allowed_ips", "must be a list of IP addresses or CIDRs")
    nets = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidKeySettings("allowed_ips", "every entry must be a string")
        shown = shown_value(entry, _IP_TEXT)
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise InvalidKeySettings(
                "allowed_ips", f"{shown} is not an IP address or CIDR"
            ) from None
        if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
            # ::ffff:a.b.c.d is how an IPv4 client looks on a dual-stack socket; the
            # gate compares IPv4 clients as IPv4 (parse_ip), so store it as such.
            net = ipaddress.IPv4Network(
                (net.network_address.ipv4_mapped, net.prefixlen - 96), strict=False
            )
        if net.prefixlen == 0:
            raise InvalidKeySettings(
                "allowed_ips", f"{shown} allows every address; leave the list empty instead"
            )
        if not allow_private and is_private(net):
            what = (
                "reaches private, loopback or link-local IPv4 addresses (through IPv4-mapped,"
                " NAT64 or 6to4 addresses)"
                if carried_v4(net) is not None
                else "is a private, loopback or link-local range"
            )
            raise InvalidKeySettings(
                "allowed_ips",
                f"{shown} {what}, which the policy refuses; to allow such ranges (local"
                " development, a private network), set policy.allow_private_ips to True (or"
                " KEYGUARD_POLICY__ALLOW_PRIVATE_IPS=1)",
            )
        nets.append(net)
    return tuple(nets)


class Allowlist:
    """Networks as integer ranges per IP version, built once per cached key: a
    check is a few integer comparisons instead of `ipaddress` containment tests."""

    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.networks = tuple(networks)
        ranges = [(n.version, int(n.network_address), int(n.broadcast_address)) for n in networks]
        self._v4 = tuple((first, last) for version, first, last in ranges if version == 4)
        self._v6 = tuple((first, last) for version, first, last in ranges if version == 6)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: IPAddress | None) -> bool:
        if ip is None:
            return False
        ranges = self._v4 if isinstance(ip, ipaddress.IPv4Address) else self._v6
        value = ip._ip  # type: ignore[union-attr]  # int(ip), without its Python-level call
        for first, last in ranges:  # noqa: SIM110 - no generator per request
            if first <= value <= last:
                return True
        return False


def ip_allowed(ip: IPAddress | None, networks: Sequence[IPNetwork] | Allowlist) -> bool:
    allowlist = networks if isinstance(networks, Allowlist) else Allowlist(networks)
    return ip in allowlist

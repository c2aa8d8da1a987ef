"""Who may talk to a server: ``--allow CIDR`` and ``--deny CIDR`` (pure).

The rule, the same for every server (TCP, TFTP, SCTP):

1. an address that matches a ``--deny`` network is refused, whatever ``--allow`` says
   (deny wins: a network carved out of an allowed range stays out, however the flags
   are ordered, so a list can be extended without re-reading it);
2. otherwise, if any ``--allow`` is given, only addresses matching one are admitted;
3. with neither, everyone is admitted.

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack socket reports for
an IPv4 peer) are judged as the IPv4 address they carry, so ``--allow 192.0.2.0/24``
works on ``:PORT``.  A scope id (``fe80::1%eth0``) is ignored.  AF_UNIX peers have no
address: the rules do not apply to them (file permissions guard a socket path).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sockferry.admission import RateLimitedLog
from sockferry.errors import UsageError

__all__ = ["AccessRules", "RateLimitedLog", "host_of", "parse_network", "peer_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> Network:
    """``192.0.2.0/24``, ``2001:db8::/32`` or a single address; host bits must be zero."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise UsageError(f"'{text}' is not a network: write an address or ADDRESS/PREFIX "
                         f"like 192.0.2.0/24 or 2001:db8::/32 ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        if network.prefixlen >= 96:  # ::ffff:a.b.c.d/N is the IPv4 network a.b.c.d/(N-96)
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def peer_address(host: str) -> Address | None:
    """The address a socket reported for a peer; None when it is not an IP address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class AccessRules:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str] | None, deny: Iterable[str] | None) -> AccessRules:
        return cls(tuple(parse_network(t) for t in allow or ()),
                   tuple(parse_network(t) for t in deny or ()))

    @property
    def restricts(self) -> bool:
        return bool(self.allow or self.deny)

    def admits(self, host: str) -> bool:
        """May a peer at ``host`` (as a socket reports it) be served?"""
        if not self.restricts:
            return True
        address = peer_address(host)
        if address is None:  # AF_UNIX, or no address at all: not ours to judge
            return True
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)

    def describe(self) -> str:
        """For the server's start-up line."""
        parts = []
        if self.allow:
            parts.append("allow " + ", ".join(map(str, self.allow)))
        if self.deny:
            parts.append("deny " + ", ".join(map(str, self.deny)))
        return "; ".join(parts) or "everyone"


    def admits_peer(self, peer: tuple[object, ...] | str | bytes | None) -> bool:
        """The same for a socket address: ``(host, port, ...)`` is judged by its host; an
        AF_UNIX peer (a path, often empty) is admitted; an unknown peer (None) only
        where nothing is restricted (fail closed)."""
        if isinstance(peer, tuple) and peer:
            return self.admits(str(peer[0]))
        return peer is not None or not self.restricts


def host_of(peer: tuple[object, ...] | str | bytes | None) -> str:
    """The host of a socket address, for messages: ``(host, port, ...)`` -> host."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "an unknown address"

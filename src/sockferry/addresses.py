"""Addresses as users write them and as the socket module gives them (pure: no socket is
opened here): ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT``, ``HOST``, ``unix:PATH``, and
the one way they are shown in logs and messages.  sockets.py resolves and binds them.
"""

from __future__ import annotations

import ipaddress

from sockferry.errors import UsageError
from sockferry.records import record

# A socket address as the socket module returns it: (host, port) for IPv4,
# (host, port, flowinfo, scope_id) for IPv6, a path for AF_UNIX.
SockAddr = tuple[str, int] | tuple[str, int, int, int] | str

MAX_PORT = 65535


@record
class HostPort:
    """An internet address before resolution; ``host == ""`` means all interfaces."""

    host: str
    port: int
    family: int = 0  # AF_UNSPEC; AF_INET or AF_INET6 to use only that family (-4, -6)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@record
class UnixPath:
    """An AF_UNIX socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address = HostPort | UnixPath


def is_ipv6_literal(text: str) -> bool:
    """An IPv6 address, perhaps with a ``%scope`` (a link-local address's interface)."""
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_PORT:
        raise UsageError(f"'{text}' is not a port number — use 0 to {MAX_PORT}")
    return int(text)


def parse_address(text: str, default_port: int) -> Address:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``HOST``, ``V6`` or ``unix:PATH``."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise UsageError("'unix:' needs a socket path, as in unix:/run/sockferry.sock")
        return UnixPath(path)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UsageError(f"'{text}' has '[' without ']' — write IPv6 as [::1]:2345")
        host, rest = text[1:close], text[close + 1 :]
        if not is_ipv6_literal(host):
            raise UsageError(f"'{host}' inside [] is not an IPv6 address")
        if rest == "":
            return HostPort(host, default_port)
        if not rest.startswith(":"):
            raise UsageError(f"'{text}' has text after ']' — write [::1]:2345")
        return HostPort(host, parse_port(rest[1:]))
    if is_ipv6_literal(text):
        return HostPort(text, default_port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return HostPort(text, default_port)
    if ":" in host:
        raise UsageError(f"'{text}' is ambiguous — put an IPv6 address in brackets: [::1]:2345")
    return HostPort(host, parse_port(port))


def format_sockaddr(sockaddr: SockAddr | bytes | None) -> str:
    """``127.0.0.1:2345``, ``[::1]:2345`` or ``unix:PATH`` for logs and messages."""
    if sockaddr is None:
        return "?"
    if isinstance(sockaddr, bytes):
        sockaddr = sockaddr.decode(errors="replace")
    if isinstance(sockaddr, str):
        return f"unix:{sockaddr or '(unnamed)'}"
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

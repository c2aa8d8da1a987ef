"""Opening a Linux SCTP one-to-many socket: probing, options, binding.

Everything done before the first association exists, so that it applies to all of them
(RFC 6458 §8: options set on the socket are inherited by its future associations).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from pathlib import Path

from sockferry.addresses import Address, SockAddr, UnixPath, format_sockaddr
from sockferry.errors import NetworkError, NotAvailable, UsageError
from sockferry.sctp import linux_abi as abi
from sockferry.sctp.config import Config
from sockferry.sctp.kernel_events import address_key, plain_address
from sockferry.sockets import grow_buffers, network_error, resolve

# Kernel socket buffers asked for (capped by net.core.[rw]mem_max unless root).
SOCKET_BUFFER = 4 << 20
_UDP_PORT_SYSCTL = Path("/proc/sys/net/sctp/udp_port")
_SUBSCRIBED = (abi.NotificationType.ASSOC_CHANGE, abi.NotificationType.SHUTDOWN_EVENT,
               abi.NotificationType.SEND_FAILED_EVENT, abi.NotificationType.REMOTE_ERROR,
               abi.NotificationType.PARTIAL_DELIVERY_EVENT)
# errno of socket(IPPROTO_SCTP) on a kernel built or configured without SCTP.
_NO_SCTP = {errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT}


def kernel_sctp_missing() -> str | None:
    """None when this kernel opens SCTP sockets; otherwise why it does not."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, abi.IPPROTO_SCTP)
    except OSError as exc:
        return exc.strerror or str(exc)
    probe.close()
    return None


def kernel_udp_port() -> int:
    """The kernel's local SCTP-over-UDP port (sysctl net.sctp.udp_port); 0 when off."""
    try:
        return int(_UDP_PORT_SYSCTL.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def check_udp(udp_port: int | None, peer_udp_port: int | None) -> None:
    """The kernel speaks SCTP over UDP only from its one sysctl port (RFC 6951 §5)."""
    if udp_port is None and peer_udp_port is None:
        return
    local = kernel_udp_port()
    if udp_port is not None and udp_port != local:
        raise NotAvailable(f"the kernel's SCTP-over-UDP port is {local or 'off'}, not "
                           f"{udp_port} — run 'sysctl -w net.sctp.udp_port={udp_port}' as "
                           "root, or use --transport udp")
    if local == 0:
        raise NotAvailable("the kernel's SCTP over UDP is off — run 'sysctl -w "
                           "net.sctp.udp_port=9899' as root, or use --transport udp")


async def open_endpoint_socket(listen: Sequence[Address], config: Config, *,
                               udp_port: int | None, peer_udp_port: int | None
                               ) -> socket.socket:
    """A configured, bound and (with ``listen``) listening one-to-many socket.

    IPv6 with IPv4-mapped addresses where the machine has IPv6, so that one socket
    reaches peers of both families; plain IPv4 where it has not.
    """
    check_udp(udp_port, peer_udp_port)
    targets = await _resolve_all(listen)
    sock = _new_socket(needs_ipv6=any(len(t) == 4 and address_key(t)[0] != "::"
                                      for t in targets))
    try:
        if sock.family == socket.AF_INET:
            targets = [("0.0.0.0", address_key(t)[1]) if address_key(t)[0] == "::" else t
                       for t in targets]
        configure(sock, config, peer_udp_port)
        if targets:
            _bind_all(sock, targets)
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


async def _resolve_all(listen: Sequence[Address]) -> list[SockAddr]:
    """Every address to bind; "" (all interfaces) is "::" until the socket is chosen."""
    targets: list[SockAddr] = []
    for address in listen:
        if isinstance(address, UnixPath):
            raise NetworkError(f"{address}: SCTP runs over IP, not over a unix socket")
        if address.host == "":
            targets.append(("::", address.port, 0, 0))
            continue
        targets.extend(plain_address(t.sockaddr) for t in await resolve(address, passive=True))
    ports = {address_key(t)[1] for t in targets} - {0}
    if len(ports) > 1:
        raise UsageError("an SCTP endpoint has one port; the addresses to listen on name "
                         f"ports {', '.join(map(str, sorted(ports)))}")
    return targets


def _new_socket(*, needs_ipv6: bool) -> socket.socket:
    families = [socket.AF_INET6] if needs_ipv6 else [socket.AF_INET6, socket.AF_INET]
    for family in families:
        try:
            sock = socket.socket(family, socket.SOCK_SEQPACKET, abi.IPPROTO_SCTP)
        except OSError as exc:
            if exc.errno in _NO_SCTP:
                raise NotAvailable("this kernel has no SCTP (socket() said: "
                                   f"{exc.strerror}) — load it with 'modprobe sctp', or use "
                                   "--transport udp") from exc
            if exc.errno == errno.EAFNOSUPPORT and family != families[-1]:
                continue  # no IPv6 on this machine: IPv4 only
            raise network_error(exc, "an SCTP socket", "open") from exc
        sock.setblocking(False)
        return sock
    raise AssertionError("unreachable")


def configure(sock: socket.socket, config: Config, peer_udp_port: int | None) -> None:
    """Options before any association exists: they apply to all future ones."""
    level = abi.IPPROTO_SCTP
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # The send buffer also caps the size of one message (EMSGSIZE above it).
    grow_buffers(sock, SOCKET_BUFFER)
    streams = config.streams
    rto_ms = (round(config.rto_initial_s * 1000), round(config.rto_max_s * 1000),
              round(config.rto_min_s * 1000))
    options: list[tuple[int, bytes | int]] = [
        (abi.SockOpt.INITMSG, abi.encode_initmsg(streams.outbound, streams.max_inbound,
                                                 config.max_init_retransmits, rto_ms[1])),
        (abi.SockOpt.RECVRCVINFO, 1),
        (abi.SockOpt.FRAGMENT_INTERLEAVE, 0),  # a message in pieces blocks the others
        (abi.SockOpt.NODELAY, 1),  # messages go out at once, as the userspace stack's do
        (abi.SockOpt.RTOINFO, abi.encode_rtoinfo(*rto_ms)),
        (abi.SockOpt.ASSOCINFO, abi.encode_assocparams(
            config.association_max_retrans, round(config.valid_cookie_life_s * 1000))),
        (abi.SockOpt.PEER_ADDR_PARAMS, abi.encode_paddrparams(
            round(config.hb_interval_s * 1000), 0)),
    ]
    options += [(abi.SockOpt.EVENT, abi.encode_event(kind, True)) for kind in _SUBSCRIBED]
    if peer_udp_port is not None:
        options.append((abi.SockOpt.REMOTE_UDP_ENCAPS_PORT,
                        abi.encode_udpencaps(peer_udp_port)))
    for option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            name = abi.SockOpt(option).name
            raise NotAvailable(f"this kernel's SCTP refused option SCTP_{name} "
                               f"({exc.strerror}) — it may be too old (Linux 5.11 or later "
                               "is needed), use --transport udp") from exc


def _bind_all(sock: socket.socket, targets: list[SockAddr]) -> None:
    """sctp_bindx(SCTP_BINDX_ADD_ADDR) of every address on one port (RFC 6458 §9.1)."""
    port = 0
    for target in targets:
        host, wanted = address_key(target)
        address = (host, wanted or port) if len(target) == 2 else (host, wanted or port, 0, 0)
        try:
            sock.setsockopt(abi.IPPROTO_SCTP, abi.SockOpt.SOCKOPT_BINDX_ADD,
                            abi.encode_sockaddr(address))
        except OSError as exc:
            raise network_error(exc, format_sockaddr(address), "bind") from exc
        port = port or int(sock.getsockname()[1])

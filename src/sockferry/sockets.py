"""The socket layer shared by every transport (the addresses it takes are addresses.py's):

- resolution with getaddrinfo (every result) and reverse names with getnameinfo;
- listeners: one socket per resolved address, IPV6_V6ONLY set explicitly;
- connect: each resolved address in turn, bounded by a timeout;
- the choice of stream protocol over IP: TCP, or Multipath TCP (RFC 8684) with a
  fallback to TCP where this kernel lacks it (``stream_socket``, ``multipath``);
- the one place where ``OSError`` becomes a sentence (``network_error``,
  ``storage_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Sequence

from sockferry.addresses import Address, HostPort, SockAddr, UnixPath, format_sockaddr
from sockferry.errors import NetworkError, StorageError
from sockferry.records import record

log = logging.getLogger("sockferry.sockets")

DEFAULT_BACKLOG = 128


@record
class Resolved:
    """One getaddrinfo result."""

    family: socket.AddressFamily
    type: socket.SocketKind
    proto: int
    sockaddr: SockAddr

    def __str__(self) -> str:
        return format_sockaddr(self.sockaddr)


# ---------------------------------------------------------------------------------------
# errno -> one sentence.  Every socket and file error a user can see passes through here.

_NETWORK_MESSAGES: dict[int, str] = {
    errno.ECONNREFUSED: "connection refused by {addr} — is the server running?",
    errno.ETIMEDOUT: "{addr} did not answer in time — check the address, the network "
    "or a firewall",
    errno.EHOSTUNREACH: "no route to host {addr} — check the address and the network",
    errno.ENETUNREACH: "network unreachable for {addr} — check your network connection",
    errno.EADDRINUSE: "{addr} is already in use — stop the other server or pick another port",
    errno.EADDRNOTAVAIL: "{addr} is not an address of this machine — pick one of its own "
    "addresses",
    errno.ECONNRESET: "connection to {addr} was reset by the peer — the other side "
    "failed or was stopped",
    errno.EPIPE: "connection to {addr} was closed by the peer — the other side failed "
    "or was stopped",
    errno.ECONNABORTED: "connection to {addr} was aborted",
    errno.EAFNOSUPPORT: "this machine does not support the address family of {addr}",
    errno.ENOENT: "no socket at {addr} — is the server running?",
    errno.EPROTONOSUPPORT: "this kernel does not support the protocol needed for {addr}",
}


def network_error(exc: BaseException, address: object, action: str = "") -> NetworkError:
    """Turn a socket-level exception into the one sentence a user reads."""
    addr = str(address)
    if isinstance(exc, socket.gaierror):
        return NetworkError(
            f"cannot resolve '{addr}': {exc.strerror} — check the host name",
            errno=exc.errno,
            address=addr,
        )
    if isinstance(exc, TimeoutError) and not getattr(exc, "errno", None):
        return NetworkError(_NETWORK_MESSAGES[errno.ETIMEDOUT].format(addr=addr),
                            errno=errno.ETIMEDOUT, address=addr)
    code = getattr(exc, "errno", None)
    if code == errno.EACCES and action == "bind":
        port = addr.rsplit(":", 1)[-1]
        text = (f"binding {addr} needs privileges — run as root or use a port above 1023"
                if port.isdigit() and int(port) < 1024
                else f"permission denied binding {addr}")
        return NetworkError(text, errno=code, address=addr)
    template = _NETWORK_MESSAGES.get(code or -1)
    if template is not None:
        text = template.format(addr=addr)
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        text = f"{action or 'network operation'} failed for {addr}: {reason}"
    return NetworkError(text, errno=code, address=addr)


_STORAGE_MESSAGES: dict[int, str] = {
    errno.ENOSPC: "disk full while writing '{path}'",
    errno.EDQUOT: "disk quota exceeded while writing '{path}'",
    errno.EROFS: "'{path}' is on a read-only file system",
    errno.EACCES: "permission denied for '{path}'",
    errno.EPERM: "operation not permitted on '{path}'",
    errno.ENOENT: "'{path}' does not exist",
    errno.EEXIST: "'{path}' already exists",
    errno.EISDIR: "'{path}' is a directory",
    errno.ENOTDIR: "a parent of '{path}' is not a directory",
    errno.ENAMETOOLONG: "the name '{path}' is too long",
    errno.EFBIG: "'{path}' would be larger than the file system allows",
    errno.ELOOP: "too many symbolic links in '{path}'",
    errno.EIO: "input/output error on '{path}' — the disk may be failing",
    errno.EMFILE: "too many files open to work on '{path}' now; try again later",
    errno.ENFILE: "the system has too many files open to work on '{path}' now; try "
                  "again later",
}


def storage_error(exc: OSError, path: str, suffix: str = "") -> StorageError:
    """Turn a file-system ``OSError`` into one sentence; ``suffix`` adds what happened next."""
    template = _STORAGE_MESSAGES.get(exc.errno or -1)
    text = (template.format(path=path) if template
            else f"{exc.strerror or exc} on '{path}'")
    if suffix:
        text = f"{text}; {suffix}"
    return StorageError(text, errno=exc.errno, path=path)


# ---------------------------------------------------------------------------------------
# Resolution


_PROTOCOLS = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}


def _numeric(address: HostPort, kind: socket.SocketKind) -> Resolved | None:
    """``address`` as getaddrinfo would give it when its host is an IP literal (a scoped
    IPv6 one aside), without asking it: its answer goes through a worker thread, and
    its host name through the IDNA codec, both only for names."""
    for family in (socket.AF_INET, socket.AF_INET6):
        if address.family not in (0, family):
            continue
        try:
            socket.inet_pton(family, address.host)
        except (OSError, ValueError):
            continue
        sockaddr: SockAddr = ((address.host, address.port) if family == socket.AF_INET
                              else (address.host, address.port, 0, 0))
        return Resolved(family, kind, _PROTOCOLS.get(kind, 0), sockaddr)
    return None


async def resolve(address: HostPort, kind: socket.SocketKind = socket.SOCK_STREAM,
                  *, passive: bool = False) -> list[Resolved]:
    """Every getaddrinfo result for ``address``, de-duplicated, in the resolver's order."""
    if address.host.lower().rstrip(".") == "localhost":
        found = [r for r in _localhost(address.port, kind)
                 if address.family in (0, r.family)]
        if not found:
            raise NetworkError("localhost has no IPv6 address on this machine (-6)",
                               address=address.host)
        return found
    literal = _numeric(address, kind)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    # No AI_ADDRCONFIG: it hides ::1 on hosts whose only IPv6 address is loopback.
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = await loop.getaddrinfo(address.host or None, address.port, type=kind,
                                       flags=flags, family=address.family)
    except (socket.gaierror, UnicodeError) as exc:
        if isinstance(exc, UnicodeError):
            exc = socket.gaierror(socket.EAI_NONAME, "not a valid host name")
        raise network_error(exc, address.host or "*") from exc
    seen: set[object] = set()
    results: list[Resolved] = []
    for family, type_, proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr in seen:
            continue
        seen.add(sockaddr)
        results.append(Resolved(family, type_, proto, sockaddr))  # type: ignore[arg-type]
    if not results:
        names: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
        which = names.get(address.family, "IPv4 or IPv6")
        raise NetworkError(f"'{address.host}' has no {which} address",
                           address=address.host)
    return results


def _localhost(port: int, kind: socket.SocketKind) -> list[Resolved]:
    """RFC 6761 §6.3: "localhost" is always the loopback addresses, whatever
    /etc/hosts says; ::1 first (RFC 6724 prefers it), where this host has IPv6."""
    results = [Resolved(socket.AF_INET, kind, 0, ("127.0.0.1", port))]
    if socket.has_ipv6 and _loopback_v6_available():
        results.insert(0, Resolved(socket.AF_INET6, kind, 0, ("::1", port, 0, 0)))
    return results


def _loopback_v6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def reverse_name(sockaddr: SockAddr) -> str | None:
    """The host name that ``sockaddr`` maps back to, or None when there is none."""
    if isinstance(sockaddr, str):
        return None
    loop = asyncio.get_running_loop()
    try:
        host, _port = await loop.getnameinfo(sockaddr, socket.NI_NAMEREQD)
    except (socket.gaierror, OSError):
        return None
    return host


# ---------------------------------------------------------------------------------------
# Stream protocols: TCP, or Multipath TCP


class StreamProtocol(enum.IntEnum):
    """The protocol number of a stream socket over IP (``SO_PROTOCOL``)."""

    TCP = socket.IPPROTO_TCP
    MPTCP = 262  # IPPROTO_MPTCP; the socket module names it only on some builds


TCP_IS_MPTCP = 43  # <linux/tcp.h>, Linux >= 5.16: 1 once the peer agreed to MPTCP
# What socket() says where the kernel has no MPTCP: not built in, or
# net.mptcp.enabled = 0 (ENOPROTOOPT), or an old kernel that rejects the number.
_NO_MPTCP_ERRNOS = frozenset({errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL})
_NO_MPTCP_SAID: set[int] = set()  # errnos logged: say it once per process, not per socket


def stream_socket(family: socket.AddressFamily, *, mptcp: bool = False) -> socket.socket:
    """A TCP socket, or with ``mptcp`` an MPTCP one where this kernel has MPTCP (else
    TCP, said once at info level).  The one place stream sockets over IP are made."""
    if mptcp:
        try:
            return socket.socket(family, socket.SOCK_STREAM, StreamProtocol.MPTCP)
        except OSError as exc:
            if exc.errno not in _NO_MPTCP_ERRNOS:
                raise
            if exc.errno not in _NO_MPTCP_SAID:
                _NO_MPTCP_SAID.add(exc.errno)
                log.info("this kernel does not offer Multipath TCP (%s); using plain TCP",
                         exc.strerror or exc)
    return socket.socket(family, socket.SOCK_STREAM)


class Multipath(enum.StrEnum):
    """Whether a connected stream socket runs Multipath TCP."""

    YES = "Multipath TCP"
    NO = "plain TCP"
    UNKNOWN = "MPTCP, if the peer agreed (this kernel cannot tell: it predates 5.16)"


def multipath(sock: socket.socket) -> Multipath:
    """Ask the kernel, after connect or accept: an MPTCP socket whose peer lacks MPTCP
    falls back to TCP by itself (accepted ones then even report IPPROTO_TCP)."""
    if sock.family == socket.AF_UNIX:
        return Multipath.NO
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) != StreamProtocol.MPTCP:
            return Multipath.NO
        agreed = sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP)
    except OSError:
        return Multipath.UNKNOWN
    return Multipath.YES if agreed else Multipath.NO


def describe_multipath(sock: socket.socket) -> str:
    """``Multipath TCP`` or why not, for logs and --verbose."""
    state = multipath(sock)
    if sock.family == socket.AF_UNIX:
        return "AF_UNIX (MPTCP does not apply)"
    if state is Multipath.NO:
        return "plain TCP: MPTCP was not agreed (the peer, or this host, does not offer it)"
    return str(state)


# ---------------------------------------------------------------------------------------
# Listening


def _bind(sock: socket.socket, sockaddr: SockAddr, shown: str) -> None:
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise network_error(exc, shown, "bind") from exc


def _unix_listener(path: str, kind: socket.SocketKind, backlog: int) -> socket.socket:
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    _bind(sock, path, f"unix:{path}")
    if kind == socket.SOCK_STREAM:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file that nobody listens on any more (left by a killed server)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def _inet_socket(family: socket.AddressFamily, kind: socket.SocketKind,
                 *, dual_stack: bool, mptcp: bool) -> socket.socket:
    sock = (stream_socket(family, mptcp=mptcp) if kind == socket.SOCK_STREAM
            else socket.socket(family, kind))
    if kind == socket.SOCK_STREAM:
        # Lets a restarted server bind while old connections sit in TIME_WAIT; a port
        # that another socket listens on still fails with EADDRINUSE.  Never on
        # datagram sockets: there Linux lets a second socket with the option bind the
        # same port and take its traffic, and a second server must fail instead.
        # SO_REUSEPORT is not set either, for the same reason.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # Set explicitly: the system default (net.ipv6.bindv6only) varies between hosts.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    return sock


async def open_listeners(address: Address, kind: socket.SocketKind = socket.SOCK_STREAM,
                         backlog: int = DEFAULT_BACKLOG, *,
                         mptcp: bool = False) -> list[socket.socket]:
    """Bound (and, for streams, listening) non-blocking sockets for ``address``.

    ``""`` as host gives one dual-stack socket on ``::`` (``0.0.0.0`` where IPv6 is
    missing); a name gives one socket per resolved address.  With port 0 every socket
    shares the port the kernel picked for the first one.  ``mptcp``: stream sockets
    over IP listen with Multipath TCP, which still accepts plain TCP clients; AF_UNIX
    and datagram sockets ignore it.
    """
    if isinstance(address, UnixPath):
        return [_unix_listener(address.path, kind, backlog)]
    if address.host == "":
        targets = [Resolved(socket.AF_INET6, kind, 0, ("::", address.port, 0, 0))]
        if not socket.has_ipv6:
            targets = [Resolved(socket.AF_INET, kind, 0, ("0.0.0.0", address.port))]
    else:
        targets = await resolve(address, kind, passive=True)
    sockets: list[socket.socket] = []
    port = address.port
    try:
        for target in targets:
            sockaddr = target.sockaddr
            assert not isinstance(sockaddr, str)
            sockaddr = (sockaddr[0], port, *sockaddr[2:])
            try:
                sock = _inet_socket(target.family, kind, dual_stack=address.host == "",
                                    mptcp=mptcp)
            except OSError as exc:
                if address.host == "" and exc.errno == errno.EAFNOSUPPORT:
                    return await open_listeners(HostPort("0.0.0.0", port), kind, backlog,
                                                mptcp=mptcp)
                raise network_error(exc, format_sockaddr(sockaddr), "socket") from exc
            _bind(sock, sockaddr, format_sockaddr(sockaddr))
            if kind == socket.SOCK_STREAM:
                sock.listen(backlog)
            sock.setblocking(False)
            sockets.append(sock)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# ---------------------------------------------------------------------------------------
# Datagrams: which local address a datagram was sent to

# Linux's IP_PKTINFO; the socket module does not export it on every build.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO_ADDR = slice(8, 12)   # struct in_pktinfo { ifindex; spec_dst; addr }
_IN6_PKTINFO_ADDR = slice(0, 16)  # struct in6_pktinfo { addr; ifindex }
_PKTINFO_SPACE = socket.CMSG_SPACE(20)


def enable_destination_address(sock: socket.socket) -> None:
    """Ask the kernel to report each datagram's destination address (IP_PKTINFO,
    IPV6_RECVPKTINFO), so that a server bound to a wildcard can answer from the
    address the client used; on a dual-stack socket this covers IPv4 too."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    elif sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def recv_with_destination(sock: socket.socket, bufsize: int,
                          ) -> tuple[bytes, SockAddr, str | None, bool]:
    """One datagram: its bytes, its source, the local address it was sent to (None
    when the kernel did not say) and whether it was longer than ``bufsize``."""
    data, ancillary, flags, source = sock.recvmsg(bufsize, _PKTINFO_SPACE)
    destination = None
    for level, kind, payload in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            destination = socket.inet_ntop(socket.AF_INET6, payload[_IN6_PKTINFO_ADDR])
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            destination = socket.inet_ntop(socket.AF_INET, payload[_IN_PKTINFO_ADDR])
    return data, source, destination, bool(flags & socket.MSG_TRUNC)


# ---------------------------------------------------------------------------------------
# Connecting


async def connect_one(target: Resolved, timeout_s: float, *,
                      mptcp: bool = False) -> socket.socket:
    """A non-blocking connect (EINPROGRESS, then poll, then SO_ERROR) with a deadline;
    ``mptcp`` asks for Multipath TCP on a stream target (see ``stream_socket``)."""
    loop = asyncio.get_running_loop()
    sock = (stream_socket(target.family, mptcp=mptcp) if target.type == socket.SOCK_STREAM
            else socket.socket(target.family, target.type, target.proto))
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            await _connect_nonblocking(loop, sock, target.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_nonblocking(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                               sockaddr: SockAddr) -> None:
    """connect(2) on a resolved address.  Not ``loop.sock_connect``: asyncio passes the
    socket's protocol to getaddrinfo, which refuses IPPROTO_MPTCP (EAI_SOCKTYPE)."""
    code = sock.connect_ex(sockaddr)
    if code in (errno.EINPROGRESS, errno.EINTR):  # EINTR: still connecting, as EINPROGRESS
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock.fileno(), ready)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


async def connect(address: Address, timeout_s: float = 10.0,
                  kind: socket.SocketKind = socket.SOCK_STREAM, *,
                  mptcp: bool = False) -> socket.socket:
    """Connect to the first resolved address that answers; the timeout covers them all.
    ``mptcp``: over IP, ask for Multipath TCP (AF_UNIX ignores it); the kernel falls
    back to TCP by itself when the server lacks it."""
    loop = asyncio.get_running_loop()
    if isinstance(address, UnixPath):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.sock_connect(sock, address.path)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise network_error(exc, address, "connect") from exc
        return sock
    targets = await resolve(address, kind)
    failures: list[tuple[Resolved, BaseException]] = []
    deadline = loop.time() + timeout_s
    for index, target in enumerate(targets):
        # Share what is left of the budget among the addresses not yet tried, so one
        # black-holed address cannot eat the whole timeout.
        share = (deadline - loop.time()) / (len(targets) - index)
        if share <= 0:
            break
        try:
            sock = await connect_one(target, share, mptcp=mptcp)
        except (OSError, TimeoutError) as exc:
            failures.append((target, exc))
            continue
        if mptcp:
            log.info("connected to %s over %s", target, describe_multipath(sock))
        return sock
    raise _connect_failure(address, failures)


def _connect_failure(address: HostPort,
                     failures: Sequence[tuple[Resolved, BaseException]]) -> NetworkError:
    if not failures:
        return NetworkError(f"{address} did not answer in time", errno=errno.ETIMEDOUT,
                            address=str(address))
    first_target, first_exc = failures[0]
    tried = ", ".join(str(t) for t, _ in failures)
    shown = str(first_target) if len(failures) == 1 else f"{address.host} ({tried})"
    error = network_error(first_exc, shown, "connect")
    error.__cause__ = first_exc
    return error


# SO_SNDBUFFORCE / SO_RCVBUFFORCE of <asm-generic/socket.h> (x86, arm, riscv, powerpc):
# Python names them only from 3.12 on.
_BUFFORCE = ((getattr(socket, "SO_RCVBUFFORCE", 33), getattr(socket, "SO_SNDBUFFORCE", 32))
             if sys.platform == "linux" and os.uname().machine in
             ("x86_64", "i686", "aarch64", "armv7l", "riscv64", "ppc64le") else (None, None))


def grow_buffers(sock: socket.socket, size: int) -> None:
    """Ask for ``size``-byte kernel send and receive buffers: past net.core.[rw]mem_max
    when allowed (SO_*BUFFORCE, root), else as much as the system grants."""
    for force, plain in ((_BUFFORCE[0], socket.SO_RCVBUF), (_BUFFORCE[1], socket.SO_SNDBUF)):
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue


def peer_and_local(sock: socket.socket) -> tuple[str, str]:
    """getpeername / getsockname, formatted for logs."""
    try:
        peer = format_sockaddr(sock.getpeername())
    except OSError:
        peer = "?"
    try:
        local = format_sockaddr(sock.getsockname())
    except OSError:
        local = "?"
    return peer, local

"""The socket layer against the kernel: parsing, listeners, connect errors."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from sockferry.addresses import HostPort, UnixPath, format_sockaddr, parse_address
from sockferry.errors import NetworkError, UsageError
from sockferry.sockets import (
    connect,
    enable_destination_address,
    grow_buffers,
    network_error,
    open_listeners,
    recv_with_destination,
    resolve,
    storage_error,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:80", HostPort("example.org", 80)),
        ("example.org", HostPort("example.org", 2345)),
        (":69", HostPort("", 69)),
        ("[::1]:2345", HostPort("::1", 2345)),
        ("[fe80::1%eth0]:22", HostPort("fe80::1%eth0", 22)),
        ("[::1]", HostPort("::1", 2345)),
        ("::1", HostPort("::1", 2345)),
        ("127.0.0.1:0", HostPort("127.0.0.1", 0)),
        ("unix:/run/x.sock", UnixPath("/run/x.sock")),
    ],
)
def test_parse_address(text: str, expected: object) -> None:
    assert parse_address(text, 2345) == expected


@pytest.mark.parametrize("text", ["host:99999", "host:http", "[::1", "[nothex]:1",
                                  "[::1]x", "fe80::1:zz:2", "unix:"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text, 2345)


def test_format_sockaddr() -> None:
    assert format_sockaddr(("127.0.0.1", 5)) == "127.0.0.1:5"
    assert format_sockaddr(("::1", 5, 0, 0)) == "[::1]:5"
    assert format_sockaddr("/tmp/s") == "unix:/tmp/s"


def test_localhost_listens_on_both_loopbacks() -> None:
    async def go() -> list[tuple[int, object]]:
        socks = await open_listeners(HostPort("localhost", 0))
        try:
            ports = {s.getsockname()[1] for s in socks}
            assert len(ports) == 1, "all listeners share the port picked for the first"
            return [(s.family, s.getsockname()[0]) for s in socks]
        finally:
            for s in socks:
                s.close()

    got = asyncio.run(go())
    assert (socket.AF_INET, "127.0.0.1") in got
    assert (socket.AF_INET6, "::1") in got
    for family, _ in got:
        assert family in (socket.AF_INET, socket.AF_INET6)


def test_all_interfaces_is_dual_stack() -> None:
    async def go() -> None:
        [sock] = await open_listeners(HostPort("", 0))
        with sock:
            assert sock.family == socket.AF_INET6
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            port = sock.getsockname()[1]
            # An IPv4 client reaches the IPv6 socket through a v4-mapped address.
            client = await connect(HostPort("127.0.0.1", port), 2.0)
            client.close()

    asyncio.run(go())


def test_ipv6_listener_sets_v6only() -> None:
    async def go() -> None:
        [sock] = await open_listeners(HostPort("::1", 0))
        with sock:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            assert not sock.get_inheritable()

    asyncio.run(go())


def test_address_in_use_is_one_sentence() -> None:
    async def go() -> None:
        [first] = await open_listeners(HostPort("127.0.0.1", 0))
        with first:
            port = first.getsockname()[1]
            with pytest.raises(NetworkError) as info:
                await open_listeners(HostPort("127.0.0.1", port))
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == (f"127.0.0.1:{port} is already in use — stop the "
                                       "other server or pick another port")

    asyncio.run(go())


def test_connect_refused_names_address() -> None:
    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, never listening: connects are refused
            with pytest.raises(NetworkError) as info:
                await connect(HostPort("127.0.0.1", port), 2.0)
        assert str(info.value) == (f"connection refused by 127.0.0.1:{port} — is the "
                                   "server running?")

    asyncio.run(go())


def test_connect_unresolvable_host() -> None:
    async def go() -> None:
        with pytest.raises(NetworkError) as info:
            await connect(HostPort("no-such-host.invalid", 1), 2.0)
        assert str(info.value).startswith("cannot resolve 'no-such-host.invalid'")

    asyncio.run(go())


def test_connect_tries_every_address() -> None:
    """localhost is ::1 then 127.0.0.1; a server on 127.0.0.1 only is still reached."""
    async def go() -> None:
        [listener] = await open_listeners(HostPort("127.0.0.1", 0))
        with listener:
            port = listener.getsockname()[1]
            assert [r.sockaddr[0] for r in await resolve(HostPort("localhost", port))][-1] \
                == "127.0.0.1"
            sock = await connect(HostPort("localhost", port), 2.0)
            with sock:
                assert sock.getpeername()[:2] == ("127.0.0.1", port)

    asyncio.run(go())


def test_unix_socket_listener_replaces_stale_file(tmp_path: object) -> None:
    path = f"{tmp_path}/s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a killed server leaves

    async def go() -> None:
        [sock] = await open_listeners(UnixPath(path))
        with sock:
            client = await connect(UnixPath(path), 2.0)
            client.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("code", "action", "text"),
    [
        (errno.EHOSTUNREACH, "connect", "no route to host 10.9.9.9:1 — check the address "
         "and the network"),
        (errno.ENETUNREACH, "connect", "network unreachable for 10.9.9.9:1 — check your "
         "network connection"),
        (errno.EADDRNOTAVAIL, "bind", "10.9.9.9:1 is not an address of this machine — pick "
         "one of its own addresses"),
        (errno.ETIMEDOUT, "connect", "10.9.9.9:1 did not answer in time — check the "
         "address, the network or a firewall"),
        (errno.ECONNRESET, "recv", "connection to 10.9.9.9:1 was reset by the peer — the "
         "other side failed or was stopped"),
        (errno.EPIPE, "send", "connection to 10.9.9.9:1 was closed by the peer — the other "
         "side failed or was stopped"),
    ],
)
def test_network_messages(code: int, action: str, text: str) -> None:
    assert str(network_error(OSError(code, "x"), "10.9.9.9:1", action)) == text


def test_bind_privileged_port_message() -> None:
    error = network_error(PermissionError(errno.EACCES, "denied"), "[::]:69", "bind")
    assert str(error) == "binding [::]:69 needs privileges — run as root or use a port " \
        "above 1023"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "disk full while writing 'backup.tar'; the partial file was removed"),
        (errno.EDQUOT, "disk quota exceeded while writing 'backup.tar'; the partial file was "
         "removed"),
        (errno.EROFS, "'backup.tar' is on a read-only file system; the partial file was "
         "removed"),
    ],
)
def test_storage_messages(code: int, text: str) -> None:
    error = storage_error(OSError(code, "x"), "backup.tar", "the partial file was removed")
    assert str(error) == text
    assert error.errno == code


def test_grow_buffers_past_the_system_maximum_as_root() -> None:
    with open("/proc/sys/net/core/wmem_max") as limit_file:
        system_max = int(limit_file.read())
    wanted = max(4 << 20, 4 * system_max)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        grow_buffers(sock, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    # Linux doubles the value asked for (bookkeeping overhead) and caps it for non-root.
    if os.geteuid() == 0:
        assert granted >= wanted
    else:
        assert granted <= 2 * system_max


@pytest.mark.parametrize(("listen", "send_to", "expected"), [
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("", "127.0.0.1", "::ffff:127.0.0.1"),
    ("", "::1", "::1"),
])
def test_recv_with_destination(listen: str, send_to: str, expected: str) -> None:
    async def go() -> None:
        [sock] = await open_listeners(HostPort(listen, 0), socket.SOCK_DGRAM)
        with sock:
            enable_destination_address(sock)
            port = sock.getsockname()[1]
            family = socket.AF_INET6 if ":" in send_to else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"hello", (send_to, port))
                sender.sendto(b"x" * 100, (send_to, port))
                sock.setblocking(True)
                data, source, destination, truncated = recv_with_destination(sock, 64)
                assert (data, destination, truncated) == (b"hello", expected, False)
                assert source[1] == sender.getsockname()[1]
                data, _, _, truncated = recv_with_destination(sock, 64)
                assert len(data) == 64 and truncated

    asyncio.run(go())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3", "2001:db8::7"])
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_an_ip_literal_resolves_as_getaddrinfo_says_without_asking_it(
        host: str, kind: socket.SocketKind) -> None:
    """Literals skip the resolver (its worker thread, the IDNA codec) with its answer."""
    found = asyncio.run(resolve(HostPort(host, 4242), kind))
    expected = [(family, type_, proto, sockaddr) for family, type_, proto, _, sockaddr
                in socket.getaddrinfo(host, 4242, type=kind)]
    assert [(r.family, r.type, r.proto, r.sockaddr) for r in found] == expected


def test_a_literal_of_the_other_family_is_still_refused() -> None:
    for host, family in (("127.0.0.1", socket.AF_INET6), ("::1", socket.AF_INET)):
        with pytest.raises(NetworkError, match="not supported"):
            asyncio.run(resolve(HostPort(host, 4242, family)))

"""The SCTP-over-UDP endpoint over real loopback sockets."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import NetworkError, NotAvailable
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssociationChange, AssocState
from sockferry.sctp.kernel import KernelEndpoint
from sockferry.sctp.kernel_socket import kernel_sctp_missing
from sockferry.sctp.transport import open_endpoint
from sockferry.sctp.udp import UdpEndpoint, path_packet_size
from tests.sctp.endpoints import messages, next_of

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_messages_both_ways_and_graceful_shutdown(host: str) -> None:
    async def main() -> None:
        async with await UdpEndpoint.open([HostPort(host, 0)]) as server, \
                await UdpEndpoint.open() as client:
            target = HostPort(host, server.sctp_port)
            assoc = await client.connect(target)
            up = await next_of(server, AssociationChange)
            assert isinstance(up, AssociationChange) and up.state == AssocState.COMM_UP
            big = random.Random(1).randbytes(1 << 20)
            await client.send(b"first", to=assoc, stream=1, ppid=5)
            await client.send(big, to=assoc, stream=2, ppid=6)
            await client.send(b"loose", to=assoc, stream=3, ppid=7, unordered=True)
            got = await messages(server, 3)
            assert {(m.stream, m.ppid, m.unordered, m.data) for m in got} == {
                (1, 5, False, b"first"), (2, 6, False, big), (3, 7, True, b"loose")}
            await server.send(b"reply", to=got[0].assoc_id, stream=4, ppid=8)
            (reply,) = await messages(client, 1)
            assert (reply.data, reply.assoc_id, reply.stream) == (b"reply", assoc, 4)
            await client.shutdown(assoc)
            done = await next_of(server, AssociationChange)
            assert isinstance(done, AssociationChange)
            assert done.state == AssocState.SHUTDOWN_COMP

    asyncio.run(main())


def test_one_server_many_clients_replies_by_association() -> None:
    async def main() -> None:
        async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)]) as server:
            clients = [await UdpEndpoint.open() for _ in range(5)]
            target = HostPort("127.0.0.1", server.sctp_port)
            for index, client in enumerate(clients):
                await client.send(f"client {index}".encode(), to=target)
            for message in await messages(server, 5):
                await server.send(b"you are " + message.data, to=message.assoc_id)
            for index, client in enumerate(clients):
                (reply,) = await messages(client, 1)
                assert reply.data == f"you are client {index}".encode()
                await client.close()

    asyncio.run(main())


def test_a_vanished_peer_is_reported_lost() -> None:
    fast = Config(rto_initial_s=0.1, rto_min_s=0.05, rto_max_s=0.2, hb_interval_s=0.1,
                  association_max_retrans=3)

    async def main() -> None:
        async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)], config=fast) as server:
            client = await UdpEndpoint.open(config=fast)
            await client.connect(HostPort("127.0.0.1", server.sctp_port))
            await next_of(server, AssociationChange)
            for protocol in client._sockets:
                assert protocol.transport is not None
                protocol.transport.abort()
            lost = await next_of(server, AssociationChange, timeout_s=20)
            assert isinstance(lost, AssociationChange)
            assert lost.state == AssocState.COMM_LOST and "HEARTBEAT" in lost.reason
            client._closed = True

    asyncio.run(main())


def test_abort_is_reported_with_its_reason() -> None:
    async def main() -> None:
        async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)]) as server, \
                await UdpEndpoint.open() as client:
            assoc = await client.connect(HostPort("127.0.0.1", server.sctp_port))
            await next_of(server, AssociationChange)
            client.abort(assoc, "enough")
            lost = await next_of(server, AssociationChange)
            assert isinstance(lost, AssociationChange)
            assert lost.state == AssocState.COMM_LOST and "enough" in lost.reason

    asyncio.run(main())


def test_udp_port_other_than_the_sctp_port() -> None:
    async def main() -> None:
        async with await UdpEndpoint.open([HostPort("127.0.0.1", 4242)], udp_port=0) as server:
            assert server.sctp_port == 4242
            udp_port = server.local_addresses[0][1]  # type: ignore[index]
            async with await UdpEndpoint.open(peer_udp_port=udp_port) as client:
                await client.send(b"hi", to=HostPort("127.0.0.1", 4242))
                (got,) = await messages(server, 1)
                assert got.data == b"hi"

    asyncio.run(main())


def test_connect_to_a_silent_port_times_out_with_a_sentence() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # bound, never answers: no ICMP either
            port = silent.getsockname()[1]
            async with await UdpEndpoint.open() as client:
                with pytest.raises(NetworkError, match=r"no SCTP answer from .* within 0\.5 s"):
                    await client.connect(HostPort("127.0.0.1", port), timeout_s=0.5)

    asyncio.run(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connect_to_a_closed_port_is_refused_at_once(host: str) -> None:
    """The ICMP port unreachable for our INIT ends the attempt (IP_RECVERR)."""
    async def main() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as closed:
            closed.bind((host, 0))
            port = closed.getsockname()[1]
        async with await UdpEndpoint.open() as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(NetworkError) as info:
                await client.connect(HostPort(host, port), timeout_s=20)
            assert asyncio.get_running_loop().time() - started < 5
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        assert f"connection refused by {shown} (ICMP port unreachable)" in str(info.value)

    asyncio.run(main())


def test_transport_choice() -> None:
    """auto: the kernel's SCTP where it has it (the VM's tests), the userspace stack here."""
    async def main() -> None:
        missing = kernel_sctp_missing()
        if missing is not None:
            with pytest.raises(NotAvailable, match="--transport udp"):
                await open_endpoint("kernel")
        for transport, kind in (("auto", UdpEndpoint if missing else KernelEndpoint),
                                ("udp", UdpEndpoint)):
            endpoint = await open_endpoint(transport, listen=[HostPort("127.0.0.1", 0)])
            assert isinstance(endpoint, kind)
            await endpoint.close()

    asyncio.run(main())


def test_loopback_packets_use_its_large_mtu() -> None:
    assert path_packet_size(("127.0.0.1", 9)) == 65507
    assert path_packet_size(("::1", 9, 0, 0)) > 60_000


def test_listening_on_two_addresses_shares_one_port() -> None:
    async def main() -> None:
        listen = [HostPort("127.0.0.1", 0), HostPort("::1", 0)]
        async with await UdpEndpoint.open(listen) as server:
            ports = {address[1] for address in server.local_addresses}  # type: ignore[index]
            assert ports == {server.sctp_port}
            for host in ("127.0.0.1", "::1"):
                async with await UdpEndpoint.open() as client:
                    await client.send(host.encode(), to=HostPort(host, server.sctp_port))
                    (got,) = await messages(server, 1)
                    assert got.data == host.encode()
                    assert got.peer[0] == host  # type: ignore[index]

    asyncio.run(main())


def test_a_name_with_two_addresses_gives_one_association() -> None:
    async def main() -> None:
        listen = [HostPort("127.0.0.1", 0), HostPort("::1", 0)]
        async with await UdpEndpoint.open(listen) as server:
            async with await UdpEndpoint.open() as client:
                assoc = await client.connect(HostPort("localhost", server.sctp_port))
                await client.shutdown(assoc)
            up = await next_of(server, AssociationChange)
            done = await next_of(server, AssociationChange)
            assert isinstance(up, AssociationChange) and isinstance(done, AssociationChange)
            assert [up.state, done.state] == [AssocState.COMM_UP, AssocState.SHUTDOWN_COMP]
            assert server.stack.association_ids == []

    asyncio.run(main())

"""The Linux kernel's SCTP and our userspace stack, talking SCTP over UDP (RFC 6951).

Both run inside the VM of scripts/vm-test on its loopback: the kernel's UDP
encapsulation is switched on there (sysctl net.sctp.udp_port), and each stack is in
turn the server and the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from sockferry.addresses import HostPort
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssocId, AssocState, Endpoint, StreamCounts
from sockferry.sctp.kernel import KernelEndpoint
from sockferry.sctp.udp import UdpEndpoint
from tests.sctp.endpoints import messages, next_change, next_end, run

pytestmark = [pytest.mark.kernel_sctp, pytest.mark.timeout(180)]

KIB64 = 65536


@dataclass
class Pair:
    """A server, a client with one association to it, and which stack is which."""

    server: Endpoint
    client: Endpoint
    client_assoc: AssocId
    server_assoc: AssocId


@asynccontextmanager
async def pair(kernel_server: bool, udp_port: int,
               server_streams: StreamCounts | None = None,
               client_streams: StreamCounts | None = None) -> AsyncIterator[Pair]:
    server_config = Config(streams=server_streams or StreamCounts())
    client_config = Config(streams=client_streams or StreamCounts())
    server: Endpoint
    client: Endpoint
    if kernel_server:  # userspace client -> the kernel's UDP port
        kernel = await KernelEndpoint.open([HostPort("127.0.0.1", 0)], config=server_config)
        server, port = kernel, kernel.sctp_port
        client = await UdpEndpoint.open((), peer_udp_port=udp_port, config=client_config)
    else:  # kernel client -> the userspace server's UDP port (= its SCTP port)
        userspace = await UdpEndpoint.open([HostPort("127.0.0.1", 0)], config=server_config)
        server, port = userspace, userspace.sctp_port
        client = await KernelEndpoint.open((), peer_udp_port=port, config=client_config)
    try:
        client_assoc = await client.connect(HostPort("127.0.0.1", port), timeout_s=20)
        up = await next_change(server)
        assert up.state == AssocState.COMM_UP
        yield Pair(server, client, client_assoc, up.assoc_id)
    finally:
        await client.close()
        await server.close()


DIRECTIONS = pytest.mark.parametrize("kernel_server", [True, False],
                                     ids=["userspace-to-kernel", "kernel-to-userspace"])


def in_pair(kernel_server: bool, udp_port: int, test: Callable[[Pair], Awaitable[None]],
            **streams: StreamCounts) -> None:
    async def body() -> None:
        async with pair(kernel_server, udp_port, **streams) as p:
            await test(p)
    run(body)


@DIRECTIONS
def test_setup_streams_ppids_and_order(kernel_server: bool, kernel_encap_port: int) -> None:
    async def test(p: Pair) -> None:
        # INIT negotiation: the client asks 7 out / allows 3 in; the server 5 / 4.
        assert p.client.streams(p.client_assoc) == (4, 3)
        assert p.server.streams(p.server_assoc) == (3, 4)
        for index in range(3):
            await p.client.send(f"ordered {index}".encode(), to=p.client_assoc, stream=3,
                                ppid=1000 + index)
        await p.client.send(b"loose", to=p.client_assoc, stream=1, ppid=0xFFFFFFFF,
                            unordered=True)
        got = await messages(p.server, 4)
        ordered = [(m.data, m.ppid) for m in got if m.stream == 3]
        assert ordered == [(f"ordered {i}".encode(), 1000 + i) for i in range(3)]
        (loose,) = [m for m in got if m.stream == 1]
        assert (loose.data, loose.ppid, loose.unordered) == (b"loose", 0xFFFFFFFF, True)
        assert {m.assoc_id for m in got} == {p.server_assoc}
        for stream in range(3):
            await p.server.send(b"reply %d" % stream, to=p.server_assoc, stream=stream,
                                ppid=stream)
        replies = await messages(p.client, 3)
        assert sorted((m.stream, m.ppid, m.data) for m in replies) == [
            (s, s, b"reply %d" % s) for s in range(3)]

    in_pair(kernel_server, kernel_encap_port, test,
            server_streams=StreamCounts(5, 4), client_streams=StreamCounts(7, 3))


@DIRECTIONS
def test_64k_messages_both_ways(kernel_server: bool, kernel_encap_port: int) -> None:
    async def test(p: Pair) -> None:
        rng = random.Random(64)
        up, down = rng.randbytes(KIB64), rng.randbytes(KIB64)
        await p.client.send(up, to=p.client_assoc, stream=2, ppid=64)
        (got,) = await messages(p.server, 1)
        assert (got.data, got.stream, got.ppid) == (up, 2, 64)
        await p.server.send(down, to=p.server_assoc, stream=2, ppid=46)
        (back,) = await messages(p.client, 1)
        assert (back.data, back.ppid) == (down, 46)

    in_pair(kernel_server, kernel_encap_port, test)


@DIRECTIONS
def test_counted_bulk_transfer(kernel_server: bool, kernel_encap_port: int) -> None:
    count = 48  # 3 MiB: QEMU's emulation runs the userspace stack slowly

    async def test(p: Pair) -> None:
        sent = hashlib.sha256()

        async def produce() -> None:
            rng = random.Random(48)
            for index in range(count):
                data = rng.randbytes(KIB64)
                sent.update(data)
                await p.client.send(data, to=p.client_assoc, stream=index % 4, ppid=index)

        producer = asyncio.create_task(produce())
        got = await messages(p.server, count)
        await producer
        by_index = {m.ppid: m.data for m in got}
        assert sorted(by_index) == list(range(count))
        received = hashlib.sha256(b"".join(by_index[i] for i in range(count)))
        assert received.digest() == sent.digest()

    in_pair(kernel_server, kernel_encap_port, test)


@DIRECTIONS
@pytest.mark.parametrize("server_ends", [False, True], ids=["client-ends", "server-ends"])
def test_graceful_shutdown(kernel_server: bool, server_ends: bool,
                           kernel_encap_port: int) -> None:
    async def test(p: Pair) -> None:
        await p.client.send(b"last words", to=p.client_assoc)
        (last,) = await messages(p.server, 1)
        assert last.data == b"last words"
        ending, other = (p.server, p.client) if server_ends else (p.client, p.server)
        ending_id, other_id = ((p.server_assoc, p.client_assoc) if server_ends
                               else (p.client_assoc, p.server_assoc))
        await ending.shutdown(ending_id)
        done = await next_end(other)
        assert (done.state, done.assoc_id) == (AssocState.SHUTDOWN_COMP, other_id)

    in_pair(kernel_server, kernel_encap_port, test)


@DIRECTIONS
@pytest.mark.parametrize("server_aborts", [False, True],
                         ids=["client-aborts", "server-aborts"])
def test_abort_with_reason(kernel_server: bool, server_aborts: bool,
                           kernel_encap_port: int) -> None:
    async def test(p: Pair) -> None:
        aborting, other = (p.server, p.client) if server_aborts else (p.client, p.server)
        aborting_id, other_id = ((p.server_assoc, p.client_assoc) if server_aborts
                                 else (p.client_assoc, p.server_assoc))
        aborting.abort(aborting_id, "out of patience")
        lost = await next_end(other)
        assert (lost.state, lost.assoc_id) == (AssocState.COMM_LOST, other_id)
        assert lost.reason == ("the peer aborted the association: user initiated abort "
                               "(out of patience)")

    in_pair(kernel_server, kernel_encap_port, test)

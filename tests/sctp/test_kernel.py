"""The kernel backend against the real Linux SCTP stack (in the VM of scripts/vm-test)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import NetworkError, UsageError
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssocState, StreamCounts
from sockferry.sctp.kernel import KernelEndpoint
from sockferry.sctp.transport import open_endpoint
from tests.conftest import require_program
from tests.sctp.endpoints import messages, next_change, next_end, run

pytestmark = [pytest.mark.kernel_sctp, pytest.mark.timeout(120)]


def streams(outbound: int, inbound: int) -> Config:
    return Config(streams=StreamCounts(outbound, inbound))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_messages_streams_ppids_and_replies_by_association(host: str) -> None:
    async def body() -> None:
        async with await KernelEndpoint.open([HostPort(host, 0)], config=streams(4, 6)) \
                as server, await KernelEndpoint.open(config=streams(8, 3)) as client:
            assoc = await client.connect(HostPort(host, server.sctp_port))
            up = await next_change(server)
            assert up.state == AssocState.COMM_UP and up.peer is not None
            assert up.peer[0] == host
            # INIT asks for 8 outbound and allows 3 inbound; the server 4 and 6.
            assert client.streams(assoc) == (6, 3)
            assert (up.outbound_streams, up.inbound_streams) == (3, 6)
            assert server.streams(up.assoc_id) == (3, 6)
            big = random.Random(1).randbytes(1 << 20)  # more than one recvmsg: joined
            await client.send(b"first", to=assoc, stream=1, ppid=5)
            await client.send(big, to=assoc, stream=2, ppid=0xFFFFFFFF)
            await client.send(b"loose", to=assoc, stream=5, ppid=7, unordered=True)
            got = await messages(server, 3)
            assert {(m.stream, m.ppid, m.unordered, m.data) for m in got} == {
                (1, 5, False, b"first"), (2, 0xFFFFFFFF, False, big), (5, 7, True, b"loose")}
            assert {m.assoc_id for m in got} == {up.assoc_id}
            await server.send(b"reply", to=up.assoc_id, stream=2, ppid=8)
            (reply,) = await messages(client, 1)
            assert (reply.data, reply.assoc_id, reply.stream, reply.ppid) == (
                b"reply", assoc, 2, 8)
            with pytest.raises(UsageError, match="stream 3 is not among the 3"):
                await server.send(b"x", to=up.assoc_id, stream=3)
            await client.shutdown(assoc)
            done = await next_change(server)
            assert (done.state, done.assoc_id) == (AssocState.SHUTDOWN_COMP, up.assoc_id)

    run(body)


def test_one_server_many_clients_told_apart_by_association() -> None:
    async def body() -> None:
        async with await KernelEndpoint.open([HostPort("127.0.0.1", 0)]) as server:
            target = HostPort("127.0.0.1", server.sctp_port)
            clients = [await KernelEndpoint.open() for _ in range(5)]
            for index, client in enumerate(clients):
                await client.send(f"client {index}".encode(), to=target, stream=index)
            got = await messages(server, 5)
            assert len({m.assoc_id for m in got}) == 5
            for message in got:
                assert message.stream == int(message.data.split()[1])
                await server.send(b"you are " + message.data, to=message.assoc_id,
                                  stream=message.stream)
            for index, client in enumerate(clients):
                (reply,) = await messages(client, 1)
                assert (reply.data, reply.stream) == (f"you are client {index}".encode(),
                                                      index)
                await client.close()
            # (the COMM_UPs went by while messages() waited for messages)
            ends = [await next_change(server) for _ in range(5)]
            assert {c.state for c in ends} == {AssocState.SHUTDOWN_COMP}
            assert {c.assoc_id for c in ends} == {m.assoc_id for m in got}

    run(body)


def test_seed_client_that_just_closes_is_noticed() -> None:
    """The seed's open question: its client closes the socket and the server never hears.
    Here it hears SHUTDOWN_COMP, with the association id it saw the message on."""
    async def body() -> None:
        async with await KernelEndpoint.open([HostPort("127.0.0.1", 0)]) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET,
                               socket.IPPROTO_SCTP) as seed_client:
                seed_client.sendto(b"hello", ("127.0.0.1", server.sctp_port))
                (message,) = await messages(server, 1)
                assert message.data == b"hello"
                assert message.peer == ("127.0.0.1", seed_client.getsockname()[1])
            gone = await next_end(server)
            assert (gone.state, gone.assoc_id) == (AssocState.SHUTDOWN_COMP,
                                                   message.assoc_id)
            with pytest.raises(NetworkError, match="does not exist or has ended"):
                await server.send(b"late", to=message.assoc_id)

    run(body)


def test_abort_reaches_the_peer_with_its_reason() -> None:
    async def body() -> None:
        async with await KernelEndpoint.open([HostPort("127.0.0.1", 0)]) as server, \
                await KernelEndpoint.open() as client:
            assoc = await client.connect(HostPort("127.0.0.1", server.sctp_port))
            up = await next_change(server)
            client.abort(assoc, "changed my mind")
            lost = await next_change(server)
            assert (lost.state, lost.assoc_id) == (AssocState.COMM_LOST, up.assoc_id)
            assert "the peer aborted the association" in lost.reason
            assert "changed my mind" in lost.reason
            mine = await next_end(client)
            assert (mine.state, mine.reason) == (AssocState.COMM_LOST,
                                                 "aborted locally: changed my mind")

    run(body)


def test_connect_to_a_port_nobody_serves() -> None:
    async def body() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET,
                           socket.IPPROTO_SCTP) as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]  # bound but not listening: INIT is refused
            async with await KernelEndpoint.open() as client:
                with pytest.raises(NetworkError, match=r"could not set up an SCTP "
                                   r"association with 127\.0\.0\.1:"):
                    await client.connect(HostPort("127.0.0.1", port), timeout_s=20)

    run(body)


def test_bulk_with_flow_control_when_the_reader_is_slow() -> None:
    """More than the socket buffers hold: send() waits for room, nothing is lost."""
    count, size = 64, 65536

    async def body() -> None:
        async with await KernelEndpoint.open([HostPort("127.0.0.1", 0)]) as server, \
                await KernelEndpoint.open() as client:
            assoc = await client.connect(HostPort("127.0.0.1", server.sctp_port))
            sent = hashlib.sha256()

            async def produce() -> None:
                rng = random.Random(7)
                for index in range(count):
                    data = rng.randbytes(size)
                    sent.update(data)
                    await client.send(data, to=assoc, stream=index % 10, ppid=index)

            producer = asyncio.create_task(produce())
            await asyncio.sleep(0.5)  # let the buffers fill before anyone reads
            by_index: dict[int, bytes] = {}
            per_stream: dict[int, list[int]] = {}
            for message in await messages(server, count):
                by_index[message.ppid] = message.data
                per_stream.setdefault(message.stream, []).append(message.ppid)
            await producer
            # Ordered delivery per stream (RFC 9260 §6.6), every byte as sent.
            assert all(ppids == sorted(ppids) for ppids in per_stream.values())
            received = hashlib.sha256(b"".join(by_index[i] for i in range(count)))
            assert received.digest() == sent.digest()

    run(body)


def test_factory_picks_the_kernel_here() -> None:
    async def body() -> None:
        for transport in ("auto", "kernel"):
            endpoint = await open_endpoint(transport, listen=[HostPort("127.0.0.1", 0)])
            assert isinstance(endpoint, KernelEndpoint)
            await endpoint.close()

    run(body)


QUICK_FAILURE = Config(rto_initial_s=0.2, rto_min_s=0.2, rto_max_s=0.4,
                       association_max_retrans=2, hb_interval_s=0.2)


@pytest.fixture
def dead_loopback() -> Iterator[Callable[[], None]]:
    """Calling it drops every packet on lo (tc netem), as if the peer had vanished
    without a word; the qdisc is removed after the test."""
    tc = require_program("tc")
    added = []

    def kill() -> None:
        subprocess.run([tc, "qdisc", "add", "dev", "lo", "root", "netem", "loss", "100%"],
                       check=True, timeout=30)
        added.append(True)

    yield kill
    if added:
        subprocess.run([tc, "qdisc", "del", "dev", "lo", "root"], check=True, timeout=30)


def test_a_peer_that_vanishes_is_lost_after_the_retransmission_limit(
        dead_loopback: Callable[[], None]) -> None:
    async def body() -> None:
        async with await KernelEndpoint.open([HostPort("127.0.0.1", 0)],
                                             config=QUICK_FAILURE) as server, \
                await KernelEndpoint.open(config=QUICK_FAILURE) as client:
            assoc = await client.connect(HostPort("127.0.0.1", server.sctp_port))
            up = await next_change(server)
            dead_loopback()
            await client.send(b"into the void", to=assoc)
            lost = await next_change(server)  # heartbeats unanswered
            assert (lost.state, lost.assoc_id) == (AssocState.COMM_LOST, up.assoc_id)
            assert lost.reason == "the peer aborted or stopped answering"
            mine = await next_end(client)  # DATA unacknowledged
            assert (mine.state, mine.assoc_id) == (AssocState.COMM_LOST, assoc)

    run(body)

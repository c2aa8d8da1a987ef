"""Interoperability with usrsctp, an independent SCTP stack, over UDP on loopback."""

from __future__ import annotations

import asyncio
import random
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.sctp.endpoint import AssociationChange, AssocState, UserMessage
from sockferry.sctp.udp import UdpEndpoint
from tests.conftest import require_program
from tests.sctp.usrsctp_peer import UsrsctpPeer, build, fields, pattern_bytes

pytestmark = pytest.mark.timeout(120)
PEER_SCTP_PORT = 5001
BULK_COUNT = 200  # 200 x 64 KiB = 12.5 MiB
KIB64 = 65536


@pytest.fixture(scope="session")
def peer_binary() -> Iterator[Path]:
    require_program("gcc")
    with tempfile.TemporaryDirectory(prefix="usrsctp-peer-") as directory:
        binary = build(Path(directory))
        if binary is None:
            require_program("libusrsctp (usrsctp.h)")
        assert binary is not None
        yield binary


async def next_change(endpoint: UdpEndpoint, timeout_s: float = 20.0) -> AssociationChange:
    async with asyncio.timeout(timeout_s):
        while True:
            item = await endpoint.receive()
            if isinstance(item, AssociationChange):
                return item


async def next_messages(endpoint: UdpEndpoint, count: int,
                        timeout_s: float = 60.0) -> list[UserMessage]:
    got: list[UserMessage] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            item = await endpoint.receive()
            if isinstance(item, UserMessage):
                got.append(item)
    return got


def test_we_connect_to_usrsctp(peer_binary: Path) -> None:
    async def main() -> None:
        peer = await UsrsctpPeer.start(peer_binary)
        try:
            await peer.command(f"LISTEN {PEER_SCTP_PORT}")
            await peer.command("ECHO 1")
            async with await UdpEndpoint.open(peer_udp_port=peer.udp_port) as ours:
                assoc = await ours.connect(HostPort("127.0.0.1", PEER_SCTP_PORT))
                assert ours.streams(assoc) == (10, 10)
                up = fields(await peer.expect("EVENT COMM_UP"))
                assert (up["out"], up["in"]) == ("10", "10")
                rng = random.Random(4)
                sent = [(1, 11, False, b"small"), (2, 22, True, rng.randbytes(KIB64)),
                        (3, 33, False, rng.randbytes(KIB64)), (9, 99, True, b"last stream")]
                for stream, ppid, unordered, data in sent:
                    await ours.send(data, to=assoc, stream=stream, ppid=ppid,
                                    unordered=unordered)
                for stream, ppid, unordered, data in sent:
                    got = fields(await peer.expect(f"MSG assoc=\\d+ stream={stream} "))
                    assert got == {**got, "ppid": str(ppid), "unordered": str(int(unordered)),
                                   "len": str(len(data)), "crc": f"{zlib.crc32(data):08x}"}
                echoes = await next_messages(ours, len(sent))
                assert sorted((m.stream, m.ppid, m.unordered, m.data) for m in echoes) == sent
                await peer.command("ECHO 0")
                await peer.command("QUIET 1")
                block = rng.randbytes(KIB64)
                for _ in range(BULK_COUNT):
                    await ours.send(block, to=assoc, stream=0)
                await ours.shutdown(assoc)  # returns at SHUTDOWN_COMP: all was delivered
                await peer.expect("EVENT SHUTDOWN_COMP")
                await peer.command("STATS")
                stats = fields(peer.lines[-2])
                assert stats["msgs"] == str(len(sent) + BULK_COUNT)
                assert stats["bytes"] == str(sum(len(d) for *_, d in sent) + BULK_COUNT * KIB64)
        finally:
            await peer.close()

    asyncio.run(main())


def test_usrsctp_connects_to_us(peer_binary: Path) -> None:
    async def main() -> None:
        peer = await UsrsctpPeer.start(peer_binary)
        try:
            async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)]) as ours:
                port = ours.sctp_port
                await peer.command(f"CONNECT 127.0.0.1 {port} {port}")
                up = await next_change(ours)
                assert up.state == AssocState.COMM_UP
                assert (up.outbound_streams, up.inbound_streams) == (10, 10)
                peer_assoc = fields(await peer.expect("EVENT COMM_UP"))["assoc"]
                script = [(1, 5, 0, 100, 1), (4, 6, 1, KIB64, 2), (7, 7, 0, KIB64, 3)]
                for stream, ppid, unordered, length, seed in script:
                    await peer.command(f"SEND {peer_assoc} {stream} {ppid} {unordered} "
                                       f"{length} {seed}")
                got = await next_messages(ours, len(script))
                assert sorted((m.stream, m.ppid, m.unordered, m.data) for m in got) == [
                    (s, p, bool(u), pattern_bytes(n, seed)) for s, p, u, n, seed in script]
                reply = random.Random(5).randbytes(KIB64)
                await ours.send(reply, to=up.assoc_id, stream=8, ppid=80, unordered=True)
                line = fields(await peer.expect("MSG "))
                assert (line["stream"], line["ppid"], line["unordered"], line["crc"]) == (
                    "8", "80", "1", f"{zlib.crc32(reply):08x}")
                bulk = asyncio.create_task(next_messages(ours, BULK_COUNT))
                await peer.command(f"BULK {peer_assoc} 0 {BULK_COUNT} {KIB64}", timeout_s=60)
                received = await bulk
                assert all(m.data == pattern_bytes(KIB64, 0) for m in received)
                await peer.command(f"SHUTDOWN {peer_assoc}")
                done = await next_change(ours)
                assert done.state == AssocState.SHUTDOWN_COMP
                await peer.expect("EVENT SHUTDOWN_COMP")
        finally:
            await peer.close()

    asyncio.run(main())


@pytest.mark.parametrize("who_aborts", ["us", "usrsctp"])
def test_abort_both_ways(peer_binary: Path, who_aborts: str) -> None:
    async def main() -> None:
        peer = await UsrsctpPeer.start(peer_binary)
        try:
            await peer.command(f"LISTEN {PEER_SCTP_PORT}")
            async with await UdpEndpoint.open(peer_udp_port=peer.udp_port) as ours:
                assoc = await ours.connect(HostPort("127.0.0.1", PEER_SCTP_PORT))
                await next_change(ours)
                peer_assoc = fields(await peer.expect("EVENT COMM_UP"))["assoc"]
                if who_aborts == "us":
                    ours.abort(assoc, "test over")
                    await peer.expect("EVENT COMM_LOST")
                else:
                    await peer.command(f"ABORT {peer_assoc} enough")
                    lost = await next_change(ours)
                    assert lost.state == AssocState.COMM_LOST
                    assert "enough" in lost.reason
        finally:
            await peer.close()

    asyncio.run(main())

"""The asyncio driver (aio.py) on its own, on real UDP sockets on loopback.

The driver runs one core on a TID socket; the other side is a raw socket the test
drives by hand, so it can fall silent, write from a wrong port or stop at the moment a
test needs.  What is checked is the driver's share of the work: its one timer (armed
early, it fires, finds nothing due and is armed again), strangers on the TID (ERROR 5
from the transfer's own port, the transfer goes on, also while the lock-step lane has
the core), the buffers it gives the TID and its connected twin, what a cancel leaves
(an ERROR to the peer, no file, no temporary), and that nothing stays open once
``run()`` returned: no descriptor, no socket, no lane thread.  What the core alone would
send comes from memlink (the core on a virtual clock, the harness in the driver's
part); loss, where a test needs it, from the seeded relay of tests/lossy.py.

Every wait is bounded.  Where a test needs the driver's round-trip estimate to be long
(a lane that must still be waiting when the stranger writes), the raw peer answers the
request late: the first sample sets the estimate, and the timeout is three times it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sockferry.errors import NetworkError, SockferryError, StorageError, TransferTimeout
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.names import is_temporary_name
from sockferry.tftp.accept import agree_options
from sockferry.tftp.aio import (
    CHUNK_BYTES,
    SOCKET_BUFFER_BYTES,
    FileSink,
    FileSource,
    TransferDriver,
    TransferResult,
    storage_error_code,
    tid_socket,
)
from sockferry.tftp.options import ServerLimits, TransferOptions
from sockferry.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    Packet,
    TransferRequest,
    decode_packet,
    encode_ack,
    encode_data,
    encode_oack,
)
from sockferry.tftp.receiving import ClientRead, ServerWrite
from sockferry.tftp.sending import ClientWrite, ServerRead
from sockferry.tftp.transfer import Timing, Transfer
from tests.lossy import Impairment, LossyUdpRelay, lossy_link
from tests.tftp.memlink import SERVER_PORT, Endpoint, Session

Addr = tuple[Any, ...]
WAIT_S = 5.0
# How late the raw server answers the request when a test needs a long timeout: the
# client's first round-trip sample, which makes its timeout about three times this.
LATE_ANSWER_S = 0.3
# Long enough for that timeout; the client dallies a tenth of it after its last ACK.
PATIENT = Timing(timeout_s=2.0, retries=6, dally_rtos=0.1)


@dataclass(frozen=True)
class Net:
    """Where the driver's TID is bound and where its raw peers are."""

    client_host: str
    peer_host: str

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.client_host else socket.AF_INET

    def seen(self, addr: Addr) -> Addr:
        """A raw peer's address as the driver's socket reports it."""
        if self.family == socket.AF_INET6 and ":" not in self.peer_host:
            return (f"::ffff:{addr[0]}", addr[1], 0, 0)  # dual-stack: v4-mapped
        return addr


NETS = [Net("127.0.0.1", "127.0.0.1"), Net("::1", "::1"), Net("::", "127.0.0.1")]
NET_IDS = ["ipv4", "ipv6", "dual-stack"]


class RawPeer:
    """A UDP socket on loopback driven by hand: the driver's peer, or a stranger."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address: Addr = self.sock.getsockname()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes, to: Addr) -> None:
        self.sock.sendto(data, to)

    async def recv(self) -> tuple[Packet, Addr]:
        loop = asyncio.get_running_loop()
        data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), WAIT_S)
        return decode_packet(data), source

    def drain(self) -> list[Packet]:
        """What is queued already.  Loopback delivers within sendto, so once the driver
        is done this is everything it sent here."""
        got = []
        while True:
            try:
                got.append(decode_packet(self.sock.recv(70000)))
            except BlockingIOError:
                return got


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def lane_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "tftp-lane" and t.is_alive()}


class Watch:
    """What was open before a test's driver ran (see ``nothing_left_open``)."""

    def __init__(self) -> None:
        self.fds = open_fds()
        self.lanes = lane_threads()

    def lane_running(self) -> bool:
        return bool(lane_threads() - self.lanes)

    async def wait_for_lane(self) -> None:
        """The lane starts in the callback that sent the datagram just received."""
        for _ in range(400):  # bounded: 2 s
            if self.lane_running():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the lock-step lane never took the transfer")


@contextlib.contextmanager
def nothing_left_open() -> Iterator[Watch]:
    """Every descriptor and lane thread that appears inside is gone at the end."""
    watch = Watch()
    yield watch
    assert not watch.lane_running(), "a lane thread outlived its transfer"
    assert open_fds() == watch.fds, "descriptors left open"


def sockets_on_port(family: socket.AddressFamily, port: int) -> list[dict[str, Any]]:
    """The UDP sockets of this process bound to ``port``: their peer and buffers."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = os.dup(int(name))
        except OSError:
            continue  # the directory listing's own descriptor, closed meanwhile
        with socket.socket(fileno=dup) as sock:
            if sock.family != family or sock.type != socket.SOCK_DGRAM \
                    or sock.getsockname()[1] != port:
                continue
            try:
                peer: Addr | None = sock.getpeername()
            except OSError:
                peer = None
            found.append({"peer": peer,
                          "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)})
    return found


def blocks_of(payload: bytes, blksize: int) -> list[bytes]:
    """The DATA payloads of a file: a short (maybe empty) block ends it."""
    return [payload[i:i + blksize] for i in range(0, len(payload) + 1, blksize)]


def file_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def download(net: Net, server: RawPeer, options: dict[str, str], timing: Timing,
             sink: FileSink | None) -> TransferDriver:
    """A driver fetching ``file.bin`` from the raw ``server`` (RRQ on a fresh TID)."""
    request = TransferRequest(Opcode.RRQ, b"file.bin", "octet", options)
    core = ClientRead(net.seen(server.address), request, timing,
                      asyncio.get_running_loop().time())
    return TransferDriver(tid_socket(net.family, net.client_host), core, sink=sink)


def sink_for(path: Path) -> FileSink:
    return FileSink(AtomicFile.beside(str(path)), 0o644)


def source_for(path: Path) -> FileSource:
    return FileSource(os.open(path, os.O_RDONLY | os.O_CLOEXEC), path.name)


async def serve(server: RawPeer, client: Addr, blocks: list[bytes], windowsize: int,
                first: int = 1) -> None:
    """Send ``blocks[first - 1:]`` window by window, each window's ACK awaited."""
    block = first
    while block <= len(blocks):
        end = min(block + windowsize - 1, len(blocks))
        for n in range(block, end + 1):
            server.send(encode_data(n, blocks[n - 1]), client)
        packet, source = await server.recv()
        assert source == client and packet == Ack(end), packet
        block = end + 1


async def start_download(net: Net, server: RawPeer, timing: Timing, options: dict[str, str],
                         sink: FileSink | None) -> tuple[asyncio.Task[TransferResult], Addr]:
    """Run a download until its request arrived; returns the run and the client's TID.
    The answer is left to the test."""
    driver = download(net, server, options, timing, sink)
    task = asyncio.create_task(driver.run())
    request, client = await server.recv()
    assert isinstance(request, TransferRequest) and request.options == options, request
    return task, client


def sent_with_nobody_answering(core: Transfer, timing: Timing) -> list[bytes]:
    """Every datagram ``core`` sends while nothing ever answers, with memlink playing the
    driver on a virtual clock: what the core asks for, whatever a real clock does."""
    sent: list[bytes] = []

    def lost(data: bytes, src: object, dst: object) -> bool:
        sent.append(data)
        return False

    session = Session(lossy_link(keep=lost), Endpoint(core), b"", ServerLimits(), timing)
    session.run()
    assert session.client.core.finished
    return sent


# -- the timer ----------------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_a_silent_server_gets_the_request_as_often_as_the_core_asks(net: Net) -> None:
    timing = Timing(timeout_s=0.05, retries=3)
    request = TransferRequest(Opcode.RRQ, b"file.bin", "octet", {"blksize": "1468"})
    expected = sent_with_nobody_answering(ClientRead(SERVER_PORT, request, timing, 0.0),
                                          timing)
    assert len(expected) == timing.retries + 1  # the request, then once per retry

    async def go() -> tuple[TransferResult, list[Packet]]:
        with RawPeer(net.peer_host) as server, nothing_left_open():
            driver = download(net, server, dict(request.options), timing, None)
            result = await asyncio.wait_for(driver.run(), WAIT_S)
            return result, server.drain()

    result, got = asyncio.run(go())
    assert got == [decode_packet(data) for data in expected]
    assert isinstance(result.error, TransferTimeout), result.error
    assert result.retransmissions == timing.retries


def test_a_timer_armed_early_fires_is_armed_again_and_the_resend_comes(tmp_path: Path,
                                                                       ) -> None:
    """A window of two blocks goes out and the timer is armed for its deadline.  The ACK
    of the first block moves the window on and the deadline later (no round trip is
    timed by an ACK inside a window, so the timeout stays put): the timer is left where
    it was, fires early, finds nothing due and must be armed again, or the peer that
    now falls silent would never get the window again and the transfer would hang."""
    payload = file_bytes(4 * 512 + 100)
    (tmp_path / "f").write_bytes(payload)
    blocks = blocks_of(payload, 512)
    timing = Timing(timeout_s=0.3, retries=2)  # the first timeout, and its cap

    async def go() -> tuple[TransferResult, list[Packet], list[Packet]]:
        loop = asyncio.get_running_loop()
        with RawPeer("127.0.0.1") as client, nothing_left_open():
            core = ServerRead(client.address, TransferOptions(windowsize=2), {}, timing,
                              loop.time())
            driver = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"), core,
                                    source=source_for(tmp_path / "f"))
            task = asyncio.create_task(driver.run())
            first = [(await client.recv()) for _ in range(2)]
            tid = first[0][1]
            client.send(encode_ack(1), tid)
            result = await asyncio.wait_for(task, WAIT_S)
            return result, [packet for packet, _ in first], client.drain()

    result, first, rest = asyncio.run(go())
    assert first == [Data(1, blocks[0]), Data(2, blocks[1])]
    window = [Data(2, blocks[1]), Data(3, blocks[2])]
    assert rest[:2] == window, f"the ACK must come before the first timeout: {rest}"
    assert rest == window * (1 + timing.retries), rest
    assert isinstance(result.error, TransferTimeout), result.error
    assert result.retransmissions == timing.retries


def test_a_peer_silent_in_lock_step_gets_the_block_again_then_the_transfer_ends(
        tmp_path: Path) -> None:
    """The lane has the core when the peer falls silent: its receive timeout hands the
    core back, the loop's timer resends, and after the retries the transfer fails; the
    lane thread, the sockets and the file are all gone then."""
    payload = file_bytes(20 * 512 + 7)
    (tmp_path / "f").write_bytes(payload)
    blocks = blocks_of(payload, 512)
    # Four timeouts of at least 20 ms, doubling, outlast the 0.2 s cap: the transfer
    # gives up at the fourth, whatever the round trip measured.
    timing = Timing(timeout_s=0.2, retries=3)
    acked = 5

    async def go() -> tuple[TransferResult, list[Packet]]:
        loop = asyncio.get_running_loop()
        with RawPeer("127.0.0.1") as client, nothing_left_open() as watch:
            core = ServerRead(client.address, TransferOptions(), {}, timing, loop.time())
            driver = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"), core,
                                    source=source_for(tmp_path / "f"))
            task = asyncio.create_task(driver.run())
            packet, tid = await client.recv()
            assert packet == Data(1, blocks[0])
            # Lock-step from the first block: the lane waits for ACK 1 (no round trip
            # measured yet, so for the whole 0.2 s).
            assert watch.lane_running()
            block = 1
            while block <= acked:
                client.send(encode_ack(block), tid)
                for _ in range(10):  # bounded: a slow peer may see a block repeated
                    packet, _ = await client.recv()
                    assert isinstance(packet, Data), packet
                    if packet.block == block + 1:
                        break
                assert packet == Data(block + 1, blocks[block]), packet
                block += 1
            result = await asyncio.wait_for(task, WAIT_S)
            return result, client.drain()

    result, rest = asyncio.run(go())
    # The first copy was read above; the rest came once per retry.
    assert rest == [Data(acked + 1, blocks[acked])] * timing.retries, rest
    assert isinstance(result.error, TransferTimeout), result.error


# -- strangers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("net", "windowsize"), [
    (NETS[0], 1), (NETS[0], 4), (NETS[1], 1), (NETS[2], 1),
], ids=["ipv4-lane", "ipv4-window", "ipv6-lane", "dual-stack-lane"])
def test_a_datagram_from_a_wrong_port_gets_error_5_and_the_transfer_goes_on(
        tmp_path: Path, net: Net, windowsize: int) -> None:
    """RFC 1350 §4: the stranger (same host, another port) gets ERROR 5 from the
    transfer's own port, and the transfer goes on as if nothing came; in lock-step the
    stranger writes while the lane has the core."""
    payload = file_bytes(8 * 512 + 300, seed=windowsize)
    blocks = blocks_of(payload, 512)
    options = {"windowsize": str(windowsize)} if windowsize > 1 else {}
    target = tmp_path / "got"

    async def go() -> TransferResult:
        with RawPeer(net.peer_host) as server, RawPeer(net.peer_host) as stranger, \
                nothing_left_open() as watch:
            task, client = await start_download(net, server, PATIENT, options,
                                                sink_for(target))
            await asyncio.sleep(LATE_ANSWER_S)
            if windowsize > 1:
                server.send(encode_oack(options), client)
                packet, _ = await server.recv()
                assert packet == Ack(0), packet
            await serve(server, client, blocks[:windowsize], windowsize)
            if windowsize == 1:
                await watch.wait_for_lane()
            nxt = windowsize + 1
            stranger.send(encode_data(nxt, b"not from the peer".ljust(512, b"!")), client)
            answer, source = await stranger.recv()
            assert answer == Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
            assert source == client, "ERROR 5 comes from the transfer's port"
            if windowsize == 1:
                assert watch.lane_running(), "a stranger does not take the core from the lane"
            await serve(server, client, blocks, windowsize, first=nxt)
            result = await asyncio.wait_for(task, WAIT_S)
            assert server.drain() == []  # no ERROR, no repeated ACK
            assert stranger.drain() == []
            return result

    result = asyncio.run(go())
    assert result.error is None, result.error
    assert target.read_bytes() == payload


def test_a_stranger_to_a_sending_server_gets_error_5_on_the_window_path(
        tmp_path: Path) -> None:
    """The server's side: its twin is connected from the start, so every stranger lands
    on the unconnected socket; windows keep the transfer on the loop's path."""
    payload = file_bytes(6 * 512 + 1)
    (tmp_path / "f").write_bytes(payload)
    blocks = blocks_of(payload, 512)

    async def go() -> TransferResult:
        loop = asyncio.get_running_loop()
        with RawPeer("::1") as client, RawPeer("::1") as stranger, nothing_left_open():
            core = ServerRead(client.address, TransferOptions(windowsize=3), {}, PATIENT,
                              loop.time())
            driver = TransferDriver(tid_socket(socket.AF_INET6, "::1"), core,
                                    source=source_for(tmp_path / "f"))
            task = asyncio.create_task(driver.run())
            window = [(await client.recv()) for _ in range(3)]
            tid = window[0][1]
            assert [p for p, _ in window] == [Data(n, blocks[n - 1]) for n in (1, 2, 3)]
            stranger.send(encode_ack(3), tid)
            assert await stranger.recv() == (Error(ErrorCode.UNKNOWN_TID,
                                                   "unknown transfer ID"), tid)
            assert client.drain() == [], "the stranger's ACK moved nothing"
            client.send(encode_ack(3), tid)
            for n in (4, 5, 6):
                assert await client.recv() == (Data(n, blocks[n - 1]), tid)
            client.send(encode_ack(6), tid)
            assert await client.recv() == (Data(7, blocks[6]), tid)
            client.send(encode_ack(7), tid)
            return await asyncio.wait_for(task, WAIT_S)

    result = asyncio.run(go())
    assert result.error is None and result.size == len(payload), result


# -- buffers ------------------------------------------------------------------------------


def _granted_floor(option: int) -> int:
    """What grow_buffers must obtain: all of it with CAP_NET_ADMIN (SO_*BUFFORCE), else
    up to the system's maximum."""
    if os.geteuid() == 0:
        return SOCKET_BUFFER_BYTES
    sysctl = "rmem_max" if option == socket.SO_RCVBUF else "wmem_max"
    with open(f"/proc/sys/net/core/{sysctl}") as limit:
        return min(SOCKET_BUFFER_BYTES, int(limit.read()))


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_the_tid_and_its_twin_get_large_buffers(net: Net, tmp_path: Path) -> None:
    floors = {"rcvbuf": _granted_floor(socket.SO_RCVBUF),
              "sndbuf": _granted_floor(socket.SO_SNDBUF)}
    with socket.socket(net.family, socket.SOCK_DGRAM) as fresh:
        defaults = {"rcvbuf": fresh.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    "sndbuf": fresh.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
    if any(defaults[k] >= floors[k] for k in floors):
        pytest.skip(f"this system grants no more than the default buffers: {defaults}")
    payload = file_bytes(512 + 10)

    async def go() -> tuple[TransferResult, list[dict[str, Any]], Addr]:
        with RawPeer(net.peer_host) as server, nothing_left_open():
            task, client = await start_download(net, server, PATIENT, {},
                                                sink_for(tmp_path / "got"))
            server.send(encode_data(1, payload[:512]), client)
            assert await server.recv() == (Ack(1), client)  # the twin exists now
            during = sockets_on_port(net.family, client[1])
            server.send(encode_data(2, payload[512:]), client)
            assert await server.recv() == (Ack(2), client)
            result = await asyncio.wait_for(task, WAIT_S)
            assert sockets_on_port(net.family, client[1]) == []
            return result, during, server.address

    result, during, server_address = asyncio.run(go())
    assert result.error is None, result.error
    assert sorted((s["peer"] is not None, s["peer"]) for s in during) == [
        (False, None), (True, net.seen(server_address))], "the TID and its connected twin"
    for sock in during:
        for key, floor in floors.items():
            assert sock[key] >= floor, (sock, floors)


# -- cancelling ---------------------------------------------------------------------------


@pytest.mark.parametrize("windowsize", [1, 4], ids=["lane", "window"])
def test_cancelling_a_download_tells_the_peer_and_leaves_no_file(tmp_path: Path,
                                                                 windowsize: int) -> None:
    """Ctrl-C in mid-download: the peer gets an ERROR from the transfer's port, and the
    temporary the driver had written into is gone."""
    # Large blocks: few round trips to the first write, so the timeout measured on the
    # late first answer is still long when the cancel comes.
    blksize = 8192
    payload = file_bytes(CHUNK_BYTES + 40 * blksize)  # past one write of the sink
    blocks = blocks_of(payload, blksize)
    options = {"blksize": str(blksize), "windowsize": str(windowsize)}
    sent = (CHUNK_BYTES // blksize + 4) // windowsize * windowsize

    async def go() -> None:
        with RawPeer("127.0.0.1") as server, nothing_left_open() as watch:
            task, client = await start_download(NETS[0], server, PATIENT, options,
                                                sink_for(tmp_path / "got"))
            await asyncio.sleep(LATE_ANSWER_S)
            server.send(encode_oack(options), client)
            assert await server.recv() == (Ack(0), client)
            await serve(server, client, blocks[:sent], windowsize)
            for _ in range(400):  # bounded: the lane writes on its thread after its ACK
                temporaries = [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]
                if temporaries and temporaries[0].stat().st_size > 0:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError(f"no bytes written yet: {list(tmp_path.iterdir())}")
            if windowsize == 1:
                assert watch.lane_running(), "the lane has the core when the cancel comes"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await server.recv() == (Error(ErrorCode.NOT_DEFINED,
                                                 "the transfer was interrupted"), client)

    asyncio.run(go())
    assert list(tmp_path.iterdir()) == []


def test_cancelling_a_send_tells_the_peer_and_closes_the_file(tmp_path: Path) -> None:
    payload = file_bytes(200 * 512)
    (tmp_path / "f").write_bytes(payload)
    blocks = blocks_of(payload, 512)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        with RawPeer("127.0.0.1") as client, nothing_left_open() as watch:
            core = ServerRead(client.address, TransferOptions(), {}, PATIENT, loop.time())
            source = source_for(tmp_path / "f")
            driver = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"), core,
                                    source=source)
            task = asyncio.create_task(driver.run())
            packet, tid = await client.recv()
            assert packet == Data(1, blocks[0]), packet
            await asyncio.sleep(LATE_ANSWER_S)  # a long first round trip: a long timeout
            for block in range(1, 11):
                client.send(encode_ack(block), tid)
                assert await client.recv() == (Data(block + 1, blocks[block]), tid)
            assert watch.lane_running(), "the lane has the core when the cancel comes"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await client.recv() == (Error(ErrorCode.NOT_DEFINED,
                                                 "the transfer was interrupted"), tid)
            assert source.fd == -1

    asyncio.run(go())


class HeldCommit(AtomicFile):
    """A real temporary whose commit, on the driver's worker thread, waits at its start
    until released: a cancel can then land while the file is being stored.  Records any
    ``abort`` another thread makes while the commit is under way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.committing = threading.Event()
        self.release = threading.Event()
        self.committed = threading.Event()
        self.overlaps: list[str] = []
        self._committer: int | None = None
        super().__init__(*args, **kwargs)

    def _committing(self) -> None:
        self._committer = threading.get_ident()
        self.committing.set()
        assert self.release.wait(WAIT_S)

    def commit(self, mode: int, mtime_ns: int | None = None, *, clobber: bool = True,
               durable: bool = True) -> None:
        try:
            super().commit(mode, mtime_ns, clobber=clobber, durable=durable)
        finally:
            self._committer = None
            self.committed.set()

    def abort(self) -> None:
        if self._committer not in (None, threading.get_ident()):
            self.overlaps.append(threading.current_thread().name)
        super().abort()


def test_a_cancel_while_the_file_is_stored_leaves_the_store_to_finish_it(
        tmp_path: Path) -> None:
    """The last block is in and the worker thread is committing the file when the run is
    cancelled.  The commit finishes the file on its own (in place, or removed if it
    fails); discarding it from the loop meanwhile would close its descriptor and unlink
    it under the worker (AtomicFile: exactly one of commit and abort finishes a file)."""
    payload = b"the whole file, in one short block"
    target = tmp_path / "got"

    async def go() -> HeldCommit:
        with RawPeer("127.0.0.1") as server, nothing_left_open():
            held = HeldCommit.beside(str(target))
            task, client = await start_download(NETS[0], server, PATIENT, {},
                                                FileSink(held, 0o644))
            server.send(encode_data(1, payload), client)
            assert await asyncio.to_thread(held.committing.wait, WAIT_S)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await server.recv() == (Error(ErrorCode.NOT_DEFINED,
                                                 "the transfer was interrupted"), client)
            held.release.set()
            assert await asyncio.to_thread(held.committed.wait, WAIT_S)
            return held

    held = asyncio.run(go())
    assert held.overlaps == [], "the file was aborted while the worker committed it"
    assert [p.name for p in tmp_path.iterdir()] == ["got"]
    assert target.read_bytes() == payload


def test_a_cancel_just_after_the_store_is_taken_quietly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server's close cancels each driver (``cancel``, not the task).  For one whose
    worker has just stored the file, its completion queued on the loop but not yet
    handled, the cancel fails the transfer first; the store's coroutine, resuming after
    it, must not confirm a failed transfer (a ValueError, logged as a task exception
    nobody retrieved)."""
    payload = b"stored just before the server stopped"
    target = tmp_path / "got"

    async def go() -> tuple[TransferResult, HeldCommit]:
        loop = asyncio.get_running_loop()
        # One worker: a job submitted after the store runs only once the store's
        # completion has been queued on the loop.
        worker = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(worker)
        with RawPeer("127.0.0.1") as server, nothing_left_open():
            held = HeldCommit.beside(str(target))
            driver = download(NETS[0], server, {}, PATIENT, FileSink(held, 0o644))
            task = asyncio.create_task(driver.run())
            request, client = await server.recv()
            assert isinstance(request, TransferRequest)
            server.send(encode_data(1, payload), client)
            for _ in range(400):  # bounded: 2 s
                if held.committing.is_set():
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the store never began")
            held.release.set()
            worker.submit(lambda: None).result(WAIT_S)  # blocks the loop: see above
            # Queued behind the store's completion, so handled before the store's
            # coroutine resumes.
            loop.call_soon(driver.cancel, SockferryError("the server is shutting down"))
            result = await asyncio.wait_for(task, WAIT_S)
            assert await server.recv() == (Error(ErrorCode.NOT_DEFINED,
                                                 "the server is shutting down"), client)
            return result, held

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        result, held = asyncio.run(go())
        del go
        gc.collect()  # a task's unretrieved exception is logged when it is collected
    assert [r.getMessage() for r in caplog.records] == []
    assert str(result.error) == "the server is shutting down"
    assert held.overlaps == []
    assert [p.name for p in tmp_path.iterdir()] == ["got"]
    assert target.read_bytes() == payload


# -- two drivers through a lossy network ---------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("windowsize", [1, 8])
@pytest.mark.parametrize("read", [True, False], ids=["read", "write"])
def test_two_drivers_through_a_lossy_relay(tmp_path: Path, read: bool, windowsize: int,
                                           seed: int) -> None:
    """A client driver and a server driver (started by a bare request port here: only
    the driver's ``request_repeated`` for a repeated request) through the seeded lossy
    NAT; each reports its outcome once, and nothing stays open."""
    payload = file_bytes(120_000, seed)
    (tmp_path / "local").write_bytes(payload)
    (tmp_path / "served").write_bytes(payload)
    options = {"blksize": "1468", "windowsize": str(windowsize)}
    timing = Timing(timeout_s=1.0, retries=20, dally_rtos=3)
    outcomes: list[TransferResult] = []

    async def accept(listener: socket.socket, drivers: list[TransferDriver],
                     runs: list[asyncio.Task[TransferResult]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, peer = await loop.sock_recvfrom(listener, 70000)
            if drivers:  # the client repeated its request (this port has one client)
                drivers[0].request_repeated(len(data))
                continue
            request = decode_packet(data)
            assert isinstance(request, TransferRequest)
            agreed, oack = agree_options(request, file_size=len(payload) if read else None,
                                         upload_limit=None, limits=ServerLimits())
            core: Transfer
            if read:
                core = ServerRead(peer, agreed, oack, timing, loop.time(),
                                  received=len(data))
                driver = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"), core,
                                        source=source_for(tmp_path / "served"),
                                        on_outcome=outcomes.append)
            else:
                core = ServerWrite(peer, agreed, oack, timing, loop.time(),
                                   received=len(data))
                driver = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"), core,
                                        sink=sink_for(tmp_path / "stored"),
                                        on_outcome=outcomes.append)
            drivers.append(driver)
            runs.append(asyncio.create_task(driver.run()))

    async def go() -> tuple[TransferResult, TransferResult, int]:
        loop = asyncio.get_running_loop()
        with nothing_left_open():
            listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with listener:
                listener.bind(("127.0.0.1", 0))
                listener.setblocking(False)
                impairment = Impairment(random.Random(seed), loss=0.05, duplicate=0.03,
                                        reorder=0.05, delay_s=0.0005)
                with LossyUdpRelay(listener.getsockname(), impairment) as relay:
                    drivers: list[TransferDriver] = []
                    runs: list[asyncio.Task[TransferResult]] = []
                    acceptor = asyncio.create_task(accept(listener, drivers, runs))
                    via = ("127.0.0.1", relay.port)
                    client_core: Transfer
                    if read:
                        request = TransferRequest(Opcode.RRQ, b"served", "octet", options)
                        client_core = ClientRead(via, request, timing, loop.time())
                        client = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"),
                                                client_core,
                                                sink=sink_for(tmp_path / "fetched"))
                    else:
                        request = TransferRequest(Opcode.WRQ, b"stored", "octet", options)
                        client_core = ClientWrite(via, request, timing, loop.time())
                        client = TransferDriver(tid_socket(socket.AF_INET, "127.0.0.1"),
                                                client_core,
                                                source=source_for(tmp_path / "local"))
                    client_result = await asyncio.wait_for(client.run(), 60)
                    assert len(runs) == 1, "one request port, one transfer"
                    server_result = await asyncio.wait_for(runs[0], 60)
                    acceptor.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acceptor
                    return client_result, server_result, relay.dropped

    client_result, server_result, dropped = asyncio.run(go())
    assert dropped > 0, "the relay should have lost something"
    assert client_result.error is None, client_result.error
    assert server_result.error is None, server_result.error
    assert outcomes == [server_result]
    stored = tmp_path / ("fetched" if read else "stored")
    assert stored.read_bytes() == payload
    assert not [p for p in os.listdir(tmp_path) if is_temporary_name(p)]


# -- the file ends ------------------------------------------------------------------------


def test_a_sink_writes_whole_chunks_and_stores_at_the_end(tmp_path: Path) -> None:
    target = AtomicFile.beside(str(tmp_path / "f"))
    sink = FileSink(target, 0o640)
    piece = file_bytes(1000)
    for _ in range(CHUNK_BYTES // len(piece)):
        sink.write(piece)
    assert target.written == 0, "blocks are gathered, not written one by one"
    sink.write(piece)
    assert target.written == (CHUNK_BYTES // len(piece) + 1) * len(piece)
    whole = file_bytes(CHUNK_BYTES, seed=1)
    sink.write(whole)  # a whole chunk at once: written as it is
    assert target.written == (CHUNK_BYTES // len(piece) + 1) * len(piece) + CHUNK_BYTES
    sink.write(b"tail")
    sink.store()
    expected = piece * (CHUNK_BYTES // len(piece) + 1) + whole + b"tail"
    assert (tmp_path / "f").read_bytes() == expected
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_a_sink_that_may_not_replace_fails_with_file_exists(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"theirs")
    sink = FileSink(AtomicFile.beside(str(tmp_path / "f")), 0o644, clobber=False)
    sink.write(b"mine")
    with pytest.raises(StorageError) as info:
        sink.store()
    assert storage_error_code(info.value) == ErrorCode.FILE_EXISTS
    assert (tmp_path / "f").read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["f"]


def test_a_discarded_sink_is_never_stored(tmp_path: Path) -> None:
    sink = FileSink(AtomicFile.beside(str(tmp_path / "f")), 0o644)
    sink.write(b"half")
    sink.discard()
    with pytest.raises(StorageError):
        sink.store()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("error", "code"), [
    (StorageError("full", errno=errno.ENOSPC), ErrorCode.DISK_FULL),
    (StorageError("quota", errno=errno.EDQUOT), ErrorCode.DISK_FULL),
    (StorageError("too big", errno=errno.EFBIG), ErrorCode.DISK_FULL),
    (StorageError("gone", errno=errno.ENOENT), ErrorCode.FILE_NOT_FOUND),
    (StorageError("there", errno=errno.EEXIST), ErrorCode.FILE_EXISTS),
    (StorageError("no", errno=errno.EACCES), ErrorCode.ACCESS_VIOLATION),
    (StorageError("no errno"), ErrorCode.ACCESS_VIOLATION),
    (NetworkError("refused", errno=errno.ECONNREFUSED), ErrorCode.NOT_DEFINED),
    (SockferryError("other"), ErrorCode.NOT_DEFINED),
])
def test_storage_errors_map_to_tftp_codes(error: SockferryError, code: ErrorCode) -> None:
    assert storage_error_code(error) == code


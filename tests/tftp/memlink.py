"""Two TFTP cores joined by an in-memory lossy link (tests/lossy.py).

Time is virtual: when nothing is in flight the clock jumps to the earliest deadline or
delivery, so a simulated minute of retransmissions costs milliseconds.  The harness plays
the driver's part: it answers the request the way the server driver does (negotiation,
one transfer per request, duplicates ignored), supplies file bytes to senders and stores
what receivers get.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sockferry.tftp.accept import agree_options
from sockferry.tftp.options import ServerLimits, requested_options
from sockferry.tftp.packets import Opcode, TransferRequest, decode_packet
from sockferry.tftp.receiving import ClientRead, ReceivingTransfer, ServerWrite
from sockferry.tftp.sending import ClientWrite, SendingTransfer, ServerRead
from sockferry.tftp.transfer import (
    BlockReceived,
    LastBlockReceived,
    OptionsAgreed,
    PeerAddress,
    Timing,
    Transfer,
    TransferCompleted,
    TransferFailed,
)
from tests.lossy import LossyLink

CLIENT: PeerAddress = ("client", 40000)
SERVER_PORT: PeerAddress = ("server", 69)
SERVER_TID: PeerAddress = ("server", 50000)
CHUNK = 4096


# The server's transfers keep the anti-amplification rule, but expire only after the
# client's own retries would (a link this lossy may lose every datagram of a few
# seconds): this harness checks that transfers survive, tests of expiry are apart.
UNCONFIRMED_S = 120.0


@dataclass
class Endpoint:
    """A core plus the driver duties the harness performs for it."""

    core: Transfer
    source: bytes = b""
    offset: int = 0
    received: bytearray = field(default_factory=bytearray)
    result: TransferCompleted | TransferFailed | None = None
    agreed: OptionsAgreed | None = None

    def feed(self, now: float) -> None:
        core = self.core
        while isinstance(core, SendingTransfer) and core.wants_data:
            chunk = self.source[self.offset:self.offset + CHUNK]
            self.offset += len(chunk)
            core.send_data(chunk, now, end=self.offset >= len(self.source))
        while (event := core.next_event()) is not None:
            if isinstance(event, BlockReceived):
                self.received += event.data
            elif isinstance(event, LastBlockReceived):
                assert isinstance(core, ReceivingTransfer)
                assert event.size == len(self.received)
                core.confirm_stored(now)
            elif isinstance(event, OptionsAgreed):
                self.agreed = event
            else:
                assert self.result is None, f"second result {event} after {self.result}"
                self.result = event


@dataclass
class Session:
    """A client and the server-side transfer it starts, on one link."""

    link: LossyLink[Any]
    client: Endpoint
    server_file: bytes
    limits: ServerLimits
    timing: Timing
    server: Endpoint | None = None
    stranger_replies: int = 0
    restarts: int = 0  # server transfers started again after one expired unconfirmed
    steps: int = 0  # datagrams handled by the one-step path
    now: float = 0.0

    def _serve_request(self, data: bytes, src: PeerAddress) -> None:
        if self.server is not None and not self.server.core.finished:
            # A repeated request, passed on as the server does.
            self.server.core.request_repeated(len(data), self.now)
            return
        if self.server is not None:  # a transfer whose peer never answered expired
            self.restarts += 1
        request = decode_packet(data)
        assert isinstance(request, TransferRequest)
        is_read = request.opcode is Opcode.RRQ
        options, oack = agree_options(request, file_size=len(self.server_file),
                                      upload_limit=None, limits=self.limits)
        netascii = request.mode == "netascii"
        core: Transfer
        if is_read:
            core = ServerRead(src, options, oack, self.timing, self.now,
                              netascii_mode=netascii, received=len(data),
                              unconfirmed_s=UNCONFIRMED_S)
        else:
            core = ServerWrite(src, options, oack, self.timing, self.now,
                               netascii_mode=netascii, received=len(data),
                              unconfirmed_s=UNCONFIRMED_S)
        self.server = Endpoint(core, source=self.server_file)

    def _flush(self) -> None:
        for address, endpoint in ((CLIENT, self.client), (SERVER_TID, self.server)):
            if endpoint is None:
                continue
            endpoint.feed(self.now)
            for data, dst in endpoint.core.datagrams_to_send():
                self.link.send(data, address, dst, self.now)

    def _deliver(self, data: bytes, src: PeerAddress, dst: PeerAddress) -> None:
        if dst == SERVER_PORT:
            self._serve_request(data, src)
        elif dst == SERVER_TID and self.server is not None:
            self._receive(self.server.core, data, src, dst)
        elif dst == CLIENT:
            self._receive(self.client.core, data, src, dst)
        else:
            self.stranger_replies += 1

    def _receive(self, core: Transfer, data: bytes, src: PeerAddress,
                 dst: PeerAddress) -> None:
        """As the driver does: in lock-step, the peer's datagrams try the one-step path
        first and its answer goes out at once."""
        if src == core.peer and core.options.windowsize == 1:
            reply = one_step(core, data, self.now)
            if reply is not None:
                self.link.send(reply, dst, src, self.now)
                self.steps += 1
                return
        core.receive_datagram(data, src, self.now)

    def run(self, max_steps: int = 2_000_000) -> None:
        for _ in range(max_steps):
            self._flush()
            if self.client.core.finished and (self.server is None or self.server.core.finished):
                return
            while (item := self.link.pop_due(self.now)) is not None:
                self._deliver(*item)
                self._flush()
            times = [t for t in (self.link.next_delivery(), self.client.core.next_deadline(),
                                 self.server and self.server.core.next_deadline())
                     if t is not None]
            if not times:
                return
            self.now = max(self.now, min(times))
            self.client.core.handle_timeout(self.now)
            if self.server is not None:
                self.server.core.handle_timeout(self.now)
        raise AssertionError("the transfer did not finish within the step budget")


def one_step(core: Transfer, data: bytes, now: float) -> bytes | None:
    """What the driver does with a datagram from the peer in lock-step: take the ready
    answer (to be sent at once), then let the core finish the step."""
    if isinstance(core, SendingTransfer):
        reply = core.take_ack(data)
    elif isinstance(core, ReceivingTransfer):
        reply = core.take_block(data)
    else:
        return None
    if reply is not None:
        core.finish_step(now)
    return reply


def session(*, read: bool, payload: bytes, link: LossyLink[Any], blksize: int = 512,
            windowsize: int = 1, mode: str = "octet", tsize: bool = True,
            timing: Timing | None = None, limits: ServerLimits | None = None) -> Session:
    """A client request ready to run: RRQ fetching ``payload`` or WRQ sending it."""
    timing = timing or Timing(timeout_s=2.0, retries=8)
    options = requested_options(blksize=blksize, windowsize=windowsize, timeout_s=None,
                                tsize=(0 if read else len(payload)) if tsize else None)
    opcode = Opcode.RRQ if read else Opcode.WRQ
    request = TransferRequest(opcode, b"file.bin", mode, options)
    core: Transfer = (ClientRead(SERVER_PORT, request, timing, 0.0) if read
                      else ClientWrite(SERVER_PORT, request, timing, 0.0))
    client = Endpoint(core, source=b"" if read else payload)
    return Session(link, client, payload if read else b"", limits or ServerLimits(), timing)


def received_by_receiver(s: Session, read: bool) -> bytes:
    receiver = s.client if read else s.server
    assert receiver is not None
    return bytes(receiver.received)

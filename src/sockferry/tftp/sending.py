"""The sending side of a TFTP transfer (sans-I/O): the server answering an RRQ
(``ServerRead``) and the client doing a WRQ (``ClientWrite``).

Blocks go out in windows of ``windowsize`` (RFC 7440) and the window moves on the peer's
ACKs; a duplicate ACK never triggers a resend (RFC 1123 §4.2.3.1), only the timer does.
The rules shared by both directions are in ``transfer``.
"""

from __future__ import annotations

from typing import ClassVar

from sockferry.tftp import netascii
from sockferry.tftp.options import TransferOptions
from sockferry.tftp.packets import HEADER, Ack, Opcode, OptionAck, TransferRequest, encode_oack
from sockferry.tftp.transfer import (
    DEFAULT_UNCONFIRMED_S,
    SAMPLE_SPACING_S,
    TERMINAL,
    ClientTransfer,
    HandlerTable,
    PeerAddress,
    Timing,
    Transfer,
    TransferCompleted,
    TransferState,
    absolute_block,
    handler_table,
    ignore_packet,
    on,
)

# A sender asks for file bytes this far beyond its window, so that its driver tops the
# stream up between lock-step steps (see ``service_due``) before it runs dry.
READ_AHEAD_BYTES = 256 * 1024
# For the per-packet paths: module globals are found faster than attributes.
_ACK = int(Opcode.ACK)
_DATA = int(Opcode.DATA)
_SENDING = TransferState.SENDING
_pack_header = HEADER.pack


class SendingTransfer(Transfer):
    """Sends a stream of blocks in windows and waits for ACKs."""

    def __init__(self, *, peer: PeerAddress | None, options: TransferOptions, timing: Timing,
                 netascii_mode: bool, now: float) -> None:
        super().__init__(peer=peer, options=options, timing=timing,
                         netascii_mode=netascii_mode, now=now)
        self._stream = b""        # wire bytes from offset _stream_start on
        self._stream_start = 0
        self._total: int | None = None  # wire bytes in the whole file, once known
        self._final: int | None = None  # number of the last block, once known
        self._acked = 0           # highest block acknowledged
        self._next = 1            # next block to send
        self._sent = 0            # highest block sent so far
        self._timed: tuple[int, float] | None = None  # (block, sent_at) for an RTT sample
        self._control = b""       # OACK or request, repeated until answered
        # In lock-step, the ACK of the one block in flight and the DATA that answers
        # it (see take_ack); else None.
        self._awaited_ack: bytes | None = None
        self._ready: bytes | None = None

    def _find_final(self) -> None:
        """The last block's number; a size that is a multiple of blksize ends with an
        empty block (RFC 1350 §6).  Found again when options are agreed: a client learns
        blksize from the OACK after it has been handed the first bytes."""
        if self._total is not None:
            self._final = self._total // self.options.blksize + 1

    def _agree(self, options: TransferOptions) -> None:
        super()._agree(options)
        self._find_final()

    def receive_datagram(self, data: bytes, addr: PeerAddress, now: float) -> None:
        # The hot path: an ACK while sending, handled without building a packet object;
        # equivalent to the (SENDING, Ack) entry of the table.
        if (len(data) == 4 and data[1] == _ACK and not data[0]
                and self.state is _SENDING and addr == self.peer):
            self._on_ack_block((data[2] << 8) | data[3], now)
        else:
            super().receive_datagram(data, addr, now)

    def take_ack(self, data: bytes) -> bytes | None:
        """The first half of lock-step sending's steady state, for a datagram from the
        peer: the answer, ready before the question.

        When ``data`` is the ACK of the one block in flight and the next block is a full
        one already supplied, its DATA datagram, built in advance, is returned for the
        driver to send at once; the driver then calls ``finish_step`` with the current
        time, and the two calls together do exactly what ``receive_datagram`` would (the
        DATA goes out here instead of through ``datagrams_to_send``).  Anything else
        changes nothing and returns None: the datagram then goes to ``receive_datagram``.
        The work a block needs is done after its answer left, while the peer is busy.
        """
        ready = self._ready
        if (data != self._awaited_ack or ready is None or self._timeouts
                or self.state is not _SENDING):
            return None
        return ready

    @property
    def step_ready(self) -> bool:
        return self._ready is not None and not self._timeouts and self.state is _SENDING

    def finish_step(self, now: float) -> None:
        """Account for the ACK ``take_ack`` took, and build the next answer."""
        # _heard, _on_ack_block and _send_window for this one case: no timeout is
        # pending (so no back-off to undo) and the block sent is new, hence may be timed.
        block = self._next
        self._heard_at = now
        timed = self._timed
        if timed is not None:
            self._rto.sample(now - timed[1])
            self._timed = None
        if now >= self._sample_from:
            self._timed = (block, now)
            self._sample_from = now + SAMPLE_SPACING_S
        self._acked = block - 1
        self._sent = block
        self._next = block + 1
        self._deadline = now + self._rto.rto_s
        self._awaited_ack = _pack_header(_ACK, block & 0xFFFF)
        self._prepare()

    def _prepare(self) -> None:
        """Build the DATA of block _next in advance, if it is full and supplied."""
        block = self._next
        blksize = self.options.blksize
        end = block * blksize - self._stream_start
        stream = self._stream
        self._ready = (_pack_header(_DATA, block & 0xFFFF) + stream[end - blksize:end]
                       if end <= len(stream) else None)
        # wants_data, for this one case (lock-step, block _next - 1 in flight).
        self.service_due = self._total is None and len(stream) - end < READ_AHEAD_BYTES

    @property
    def wants_data(self) -> bool:
        """True while fewer file bytes were supplied than the window needs, plus
        READ_AHEAD_BYTES."""
        if self._total is not None or self.state in TERMINAL:
            return False
        window_end = (self._acked + self.options.windowsize + 1) * self.options.blksize
        return self._stream_start + len(self._stream) < window_end + READ_AHEAD_BYTES

    def send_data(self, chunk: bytes, now: float, *, end: bool = False) -> None:
        """The next bytes of the file; ``end`` says there are no more."""
        if self.state in TERMINAL:
            return
        if self._total is not None:
            raise ValueError("send_data after the end of the file")
        done = self._acked * self.options.blksize - self._stream_start
        if done > 0:  # blocks up to _acked will never be sent again
            self._stream = self._stream[done:]
            self._stream_start += done
        self._stream += netascii.encode(chunk) if self.netascii else chunk
        self.size += len(chunk)
        if end:
            self._total = self._stream_start + len(self._stream)
            self._find_final()
        if self.state is TransferState.SENDING:
            self._send_window(now)

    def _start_sending(self, now: float) -> None:
        self.state = TransferState.SENDING
        self._deadline = None
        self._send_window(now)

    def _send_window(self, now: float) -> None:
        options = self.options
        blksize = options.blksize
        last = self._acked + options.windowsize
        final = self._final
        if final is not None and last > final:
            last = final
        stream, start, peer, out = self._stream, self._stream_start, self.peer, self._out
        block = first = self._next
        available = len(stream)
        while block <= last:
            offset = (block - 1) * blksize - start
            end = offset + blksize
            if end > available and final is None:
                break  # the driver has not supplied this block yet
            out.append((_pack_header(_DATA, block & 0xFFFF) + stream[offset:end],
                        peer))  # type: ignore[arg-type]
            block += 1
        if block != first:
            self._next = block
            if block - 1 > self._sent:
                # Karn's rule: only a block sent for the first time is timed; the ACK of
                # a repeated one may answer any of its copies.
                if self._timed is None and now >= self._sample_from:
                    self._timed = (block - 1, now)
                    self._sample_from = now + SAMPLE_SPACING_S
                self._sent = block - 1
            if self._deadline is None:
                self._deadline = now + self._rto.rto_s
        # take_ack handles the ACK of a lone block in flight (once the peer is confirmed:
        # the lane's one-step path does no anti-amplification accounting).
        in_flight = self._next - 1
        if options.windowsize == 1 and in_flight == self._acked + 1 and self._confirmed:
            self._awaited_ack = _pack_header(_ACK, in_flight & 0xFFFF)
            self._prepare()
        else:
            self._awaited_ack = self._ready = None

    def _on_ack(self, packet: Ack, now: float) -> None:
        self._on_ack_block(packet.block, now)

    def _on_ack_block(self, wire: int, now: float) -> None:
        block = absolute_block(wire, self._acked)
        if block <= self._acked or block >= self._next:
            # A duplicate or stale ACK: never answer it with DATA (RFC 1123 §4.2.3.1);
            # only the timer retransmits.
            return
        self._heard(now)
        timed = self._timed
        if timed is not None:
            if block >= timed[0]:
                self._rto.sample(now - timed[1])
            # Either way the timing is over: sampled, or its block goes out again (Karn).
            self._timed = None
        self._acked = block
        if block == self._final:
            self.state = TransferState.DONE
            self._deadline = None
            self._events.append(TransferCompleted(self.size))
            return
        # RFC 7440 §4: an ACK inside the window means the blocks after it were lost;
        # the window restarts right after the acknowledged block.
        self._next = block + 1
        self._deadline = None
        self._send_window(now)

    def _on_timeout(self, now: float) -> None:
        if self.state in (TransferState.REQUESTING, TransferState.OFFERING):
            self._resend_control(now)
        elif self.state is TransferState.SENDING and self._may_retry(now):
            self._next = self._acked + 1
            self._timed = None
            self._send_window(now)

    def _resend_control(self, now: float) -> None:
        raise NotImplementedError

    handlers: ClassVar[HandlerTable] = handler_table(
        Transfer.handlers,
        on(TransferState.SENDING, Ack, _on_ack),
    )


class ServerRead(SendingTransfer):
    """The server side of an RRQ: OACK first when options were agreed, then DATA."""

    def __init__(self, peer: PeerAddress, options: TransferOptions, oack: dict[str, str],
                 timing: Timing, now: float, *, netascii_mode: bool = False,
                 received: int | None = None,
                 unconfirmed_s: float = DEFAULT_UNCONFIRMED_S) -> None:
        """``received``: the request's size, for the anti-amplification rule (None
        takes the peer as confirmed: tests of the machinery behind it)."""
        super().__init__(peer=peer, options=options, timing=timing,
                         netascii_mode=netascii_mode, now=now)
        if received is not None:
            self._guard(received, unconfirmed_s, now)
        if oack:
            self.state = TransferState.OFFERING
            self._control = encode_oack(oack)
            self._send(self._control)
            self._timed = (0, now)
            self._arm(now)
        else:
            self.state = TransferState.SENDING

    def _adopt_peer(self, addr: PeerAddress, now: float) -> bool:
        return True  # a server knows its peer from the request

    def _on_oack_acked(self, packet: Ack, now: float) -> None:
        if packet.block != 0:
            self._unexpected(packet, now)
            return
        self._heard(now)
        if self._timed is not None:
            self._rto.sample(now - self._timed[1])
            self._timed = None
        self._start_sending(now)

    def _resend_control(self, now: float) -> None:
        if self._may_retry(now):
            self._timed = None
            self._send(self._control)
            self._arm(now)

    def _repeat_first_answer(self, now: float) -> None:
        self._timed = None  # Karn: the answer may now answer either copy
        if self.state is TransferState.OFFERING:
            self._send(self._control)
        elif self.state is TransferState.SENDING:
            self._next = self._acked + 1
            self._send_window(now)

    handlers: ClassVar[HandlerTable] = handler_table(
        SendingTransfer.handlers,
        on(TransferState.OFFERING, Ack, _on_oack_acked),
    )


class ClientWrite(ClientTransfer, SendingTransfer):
    """The client side of a WRQ: ACK 0 or an OACK from a new TID, then DATA."""

    def __init__(self, server: PeerAddress, request: TransferRequest, timing: Timing,
                 now: float) -> None:
        super().__init__(peer=None, options=TransferOptions(), timing=timing,
                         netascii_mode=request.mode == "netascii", now=now)
        self._start_request(server, request, now)

    def _on_first_ack(self, packet: Ack, now: float) -> None:
        if packet.block != 0:
            self._unexpected(packet, now)
            return
        self._agree(TransferOptions())  # no OACK: the server ignored every option
        self._start_sending(now)

    def _on_oack(self, packet: OptionAck, now: float) -> None:
        if self._accept_options(packet, now):
            self._start_sending(now)

    def _resend_control(self, now: float) -> None:
        self._resend_request(now)

    handlers: ClassVar[HandlerTable] = handler_table(
        SendingTransfer.handlers,
        on(TransferState.REQUESTING, Ack, _on_first_ack),
        on(TransferState.REQUESTING, OptionAck, _on_oack),
        # A repeated OACK means DATA 1 was lost; like a duplicate ACK it changes nothing.
        on(TransferState.SENDING, OptionAck, ignore_packet),
    )

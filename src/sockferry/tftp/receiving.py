"""The receiving side of a TFTP transfer (sans-I/O): the server answering a WRQ
(``ServerWrite``) and the client doing an RRQ (``ClientRead``).

Blocks are taken in order and acknowledged once per window (RFC 7440); a gap is
acknowledged at the last block in order, so the sender restarts after it, and
duplicates get the last ACK again, once per burst.  File bytes leave as
``BlockReceived`` events; the last block waits for ``confirm_stored`` before its ACK.
The rules shared by both directions are in ``transfer``.
"""

from __future__ import annotations

from typing import ClassVar

from sockferry.errors import RemoteProtocolError, SockferryError
from sockferry.tftp import netascii
from sockferry.tftp.options import TransferOptions
from sockferry.tftp.packets import (
    HEADER,
    Data,
    ErrorCode,
    Opcode,
    OptionAck,
    TransferRequest,
    encode_ack,
    encode_oack,
)
from sockferry.tftp.transfer import (
    DEFAULT_UNCONFIRMED_S,
    SAMPLE_SPACING_S,
    BlockReceived,
    ClientTransfer,
    Event,
    HandlerTable,
    LastBlockReceived,
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

# A receiver's one-step path (take_block) hands file bytes over in batches: once this
# many wait, ``service_due`` asks the driver to collect them (``take_pending``: one write
# of the driver's usual size); should it not, take_block leaves the next block to the
# general path, which hands them over through ``next_event``.
MAX_PENDING_BYTES = 256 * 1024
# For the per-packet paths: module globals are found faster than attributes.
_ACK = int(Opcode.ACK)
_DATA = int(Opcode.DATA)
_RECEIVING = TransferState.RECEIVING
_pack_header = HEADER.pack


class ReceivingTransfer(Transfer):
    """Receives blocks in order, acknowledges each window, re-acknowledges duplicates."""

    def __init__(self, *, peer: PeerAddress | None, options: TransferOptions, timing: Timing,
                 netascii_mode: bool, now: float, max_size: int | None = None) -> None:
        super().__init__(peer=peer, options=options, timing=timing,
                         netascii_mode=netascii_mode, now=now)
        self.max_size = max_size
        self._max_pending = MAX_PENDING_BYTES
        self._received = 0        # highest block received in order
        self._acked = 0           # highest block acknowledged
        self._reply = b""         # the last ACK (or OACK) sent, repeated on timeout
        self._acked_at: float | None = None  # when _reply went out once, for a sample
        self._gap_reported = False
        self._repeated_at = -1e9    # when a duplicate was last answered
        self._pending: list[bytes] = []
        self._handed = 0          # bytes handed over in BlockReceived events so far
        self._decoder = netascii.Decoder() if self.netascii else None
        # In lock-step octet mode, the header of the next DATA and the ACK that answers
        # it (see take_block); else None.
        self._awaited_data: bytes | None = None
        self._ready: bytes | None = None
        self._taken = b""
        # take_block's limits, kept up to date rather than computed per block: the
        # datagram length of a full block, and the size below which one may be taken.
        self._step_length = 0
        self._step_below = 0
        self._hand_over_at = 0   # service_due from this size on
        self._limit_steps()
        self._await_data(1)

    def receive_datagram(self, data: bytes, addr: PeerAddress, now: float) -> None:
        # The hot path: the next block in order, handled without building a packet
        # object; equivalent to the (RECEIVING, Data) entry of the table.
        if (len(data) >= 4 and data[1] == _DATA and not data[0]
                and self.state is _RECEIVING and addr == self.peer
                and ((data[2] << 8) | data[3]) == (self._received + 1) & 0xFFFF
                and len(data) - 4 <= self.options.blksize):
            self._accept_block(self._received + 1, data[4:], now)
        else:
            super().receive_datagram(data, addr, now)

    def take_block(self, data: bytes) -> bytes | None:
        """The first half of lock-step receiving's steady state, for a datagram from the
        peer: the answer, ready before the question.

        When ``data`` is the next block in order, full (so not the last) and within the
        size limit, its ACK, built in advance, is returned for the driver to send at
        once; the driver then calls ``finish_step`` with the current time, and the two
        calls together do exactly what ``receive_datagram`` would (the ACK goes out here
        instead of through ``datagrams_to_send``).  Anything else changes nothing and
        returns None: the datagram then goes to ``receive_datagram``.  Once
        ``max_pending_bytes`` are waiting (and the driver did not collect them with
        ``take_pending``), the next block is left to the general path too, after which
        the driver collects the data with ``next_event``.
        """
        ready = self._ready
        if (ready is None or len(data) != self._step_length
                or data[:4] != self._awaited_data or self.size >= self._step_below
                or self._timeouts or self.state is not _RECEIVING):
            return None
        self._taken = data
        self._reply = ready
        return ready

    @property
    def step_ready(self) -> bool:
        return (self._ready is not None and not self._timeouts
                and self.state is _RECEIVING and self.size < self._step_below)

    @property
    def max_pending_bytes(self) -> int:
        """Bytes received and not yet handed over, beyond which take_block declines."""
        return self._max_pending

    @max_pending_bytes.setter
    def max_pending_bytes(self, value: int) -> None:
        self._max_pending = value
        self._limit_steps()

    def _limit_steps(self) -> None:
        # take_block takes a block only when it is full, when the data waiting to be
        # handed over stays under max_pending_bytes, and when the size limit allows.
        blksize = self.options.blksize
        self._hand_over_at = below = self._handed + self._max_pending
        if self.max_size is not None:
            below = min(below, self.max_size - blksize + 1)
        self._step_length = blksize + 4
        self._step_below = below

    def finish_step(self, now: float) -> None:
        """Accept the block ``take_block`` took, and build the next answer."""
        # _accept_block and _send_ack for this one case: no timeout is pending (so no
        # back-off to undo), no netascii decoding, one block per window.
        data, self._taken = self._taken, b""
        acked_at = self._acked_at
        if acked_at is not None:
            self._rto.sample(now - acked_at)
        if now >= self._sample_from:
            self._acked_at = now
            self._sample_from = now + SAMPLE_SPACING_S
        else:
            self._acked_at = None
        self._heard_at = now
        self._received = self._acked = block = self._received + 1
        self._gap_reported = False
        self.size += len(data) - 4
        self._pending.append(data[4:])
        self._deadline = now + self._rto.rto_s
        self.service_due = self.size >= self._hand_over_at
        wire = (block + 1) & 0xFFFF  # _await_data(block + 1), whose test take_block passed
        self._awaited_data = _pack_header(_DATA, wire)
        self._ready = _pack_header(_ACK, wire)

    def _await_data(self, block: int) -> None:
        """Let take_block handle ``block`` next, when lock-step octet mode allows and the
        peer is confirmed, and build its ACK in advance."""
        if self.options.windowsize == 1 and self._decoder is None and self._confirmed:
            wire = block & 0xFFFF
            self._awaited_data = _pack_header(_DATA, wire)
            self._ready = _pack_header(_ACK, wire)
        else:
            self._awaited_data = self._ready = None

    def _agree(self, options: TransferOptions) -> None:
        super()._agree(options)
        self._limit_steps()
        self._await_data(self._received + 1)

    def _confirm(self) -> None:
        # Called while a block is being accepted, before _received moves on to it: the
        # block built here is the one arriving, rebuilt for the next after its ACK.
        super()._confirm()
        self._await_data(self._received + 1)

    def next_event(self) -> Event | None:
        # Queued events come first: _emit moved any data before them into the queue.
        if self._events:
            return self._events.popleft()
        if self._pending:
            return self._hand_over()
        return None

    def take_pending(self) -> bytes:
        """The bytes received in order and not yet handed over (a driver collecting
        them between lock-step steps, when ``service_due`` says so); nothing while
        events are queued, which come first through ``next_event``."""
        if self._events or not self._pending:
            return b""
        return self._hand_over().data

    def _hand_over(self) -> BlockReceived:
        data, self._pending = b"".join(self._pending), []
        self._handed = self.size
        self.service_due = False
        self._limit_steps()
        return BlockReceived(data)

    def confirm_stored(self, now: float) -> None:
        """The driver stored the file: acknowledge the last block and dally."""
        if self.state is not TransferState.STORING:
            raise ValueError(f"confirm_stored in state {self.state.name}")
        self._reply = encode_ack(self._received)
        self._send(self._reply)
        self.state = TransferState.DALLYING
        rtos = self.timing.dally_rtos
        self._deadline = now + (2 * self._rto.max_s if rtos is None
                                else min(self._rto.max_s, rtos * self._rto.rto_s))
        self._events.append(TransferCompleted(self.size))

    def _emit(self, event: Event) -> None:
        if self._pending:
            self._events.append(self._hand_over())
        self._events.append(event)

    def _fail(self, error: SockferryError, now: float, code: ErrorCode | None = None,
              message: str = "") -> None:
        self._pending = []
        super()._fail(error, now, code, message)

    def _send_ack(self, block: int, now: float, *, fresh: bool = True) -> None:
        self._acked = block
        self._reply = reply = _pack_header(_ACK, block & 0xFFFF)
        self._out.append((reply, self.peer))  # type: ignore[arg-type]
        if fresh and now >= self._sample_from:
            self._acked_at = now  # time the round trip to the next block
            self._sample_from = now + SAMPLE_SPACING_S
        else:
            self._acked_at = None
        self._deadline = now + self._rto.rto_s

    def _on_data(self, packet: Data, now: float) -> None:
        block = absolute_block(packet.block, self._received + 1)
        payload = packet.payload
        blksize = self.options.blksize
        if len(payload) > blksize:
            self._fail(RemoteProtocolError(
                f"the peer sent a block of {len(payload)} bytes, over the agreed "
                f"{blksize}", code=ErrorCode.ILLEGAL_OPERATION), now,
                ErrorCode.ILLEGAL_OPERATION, f"block larger than blksize {blksize}")
        elif block == self._received + 1:
            self._accept_block(block, payload, now)
        elif block <= self._received:
            self._on_duplicate(now)
        elif not self._gap_reported:
            # RFC 7440 §4: a block is missing; acknowledge what we have in order so the
            # sender restarts the window there.
            self._gap_reported = True
            self._send_ack(self._received, now, fresh=False)

    def _on_duplicate(self, now: float) -> None:
        """The sender repeated blocks: it may have missed our last ACK.

        Repeat that ACK unchanged, once per burst (a repeated window brings up to
        windowsize duplicates at once).  Acknowledging more than before here would move
        the window under a sender that already moved on and start a cycle of repeats.
        """
        if now - self._repeated_at >= self._rto.rto_s / 2:
            self._repeated_at = now
            self._acked_at = None
            self._send(encode_ack(self._acked))

    def _accept_block(self, block: int, payload: bytes, now: float) -> None:
        if self._acked_at is not None:
            self._rto.sample(now - self._acked_at)
            self._acked_at = None
        self._heard(now)
        self._received = block
        self._gap_reported = False
        last = len(payload) < self.options.blksize
        decoder = self._decoder
        data = payload
        if decoder is not None:
            data = decoder.feed(payload) + decoder.finish() if last else decoder.feed(payload)
        self.size += len(data)
        if self.max_size is not None and self.size > self.max_size:
            self._fail(RemoteProtocolError(
                f"the upload is larger than the limit of {self.max_size} bytes",
                code=ErrorCode.DISK_FULL), now, ErrorCode.DISK_FULL,
                f"file larger than the limit of {self.max_size} bytes")
            return
        if data:
            self._pending.append(data)
            self.service_due = self.size >= self._hand_over_at
        if last:
            self.state = TransferState.STORING
            self._deadline = None
            self._emit(LastBlockReceived(self.size))
        elif block - self._acked >= self.options.windowsize:
            self._send_ack(block, now)
            if self._awaited_data is not None:
                self._await_data(block + 1)
        else:
            self._arm(now)

    def _on_data_while_dallying(self, packet: Data, now: float) -> None:
        if absolute_block(packet.block, self._received) == self._received:
            self._send(self._reply)  # our final ACK was lost; the sender repeats

    def _on_timeout(self, now: float) -> None:
        if self.state is TransferState.DALLYING:
            self.state = TransferState.DONE
        elif self.state is TransferState.REQUESTING:
            self._resend_control(now)
        elif self.state is TransferState.RECEIVING and self._may_retry(now):
            if self._received > self._acked:
                # RFC 7440 §4: the rest of the window is not coming; acknowledge what
                # arrived in order so the sender restarts after it.
                self._send_ack(self._received, now, fresh=False)
            else:
                self._acked_at = None
                self._send(self._reply)
                self._arm(now)

    def _resend_control(self, now: float) -> None:
        raise NotImplementedError

    handlers: ClassVar[HandlerTable] = handler_table(
        Transfer.handlers,
        on(TransferState.RECEIVING, Data, _on_data),
        on(TransferState.DALLYING, Data, _on_data_while_dallying),
        on(TransferState.STORING, Data, ignore_packet),
    )


class ServerWrite(ReceivingTransfer):
    """The server side of a WRQ: OACK (or ACK 0), then DATA."""

    def __init__(self, peer: PeerAddress, options: TransferOptions, oack: dict[str, str],
                 timing: Timing, now: float, *, netascii_mode: bool = False,
                 max_size: int | None = None, received: int | None = None,
                 unconfirmed_s: float = DEFAULT_UNCONFIRMED_S) -> None:
        """``received``: as for ``ServerRead``."""
        super().__init__(peer=peer, options=options, timing=timing,
                         netascii_mode=netascii_mode, now=now, max_size=max_size)
        if received is not None:
            self._guard(received, unconfirmed_s, now)
            self._awaited_data = self._ready = None  # until the peer's first DATA
        self.state = TransferState.RECEIVING
        self._reply = encode_oack(oack) if oack else encode_ack(0)
        self._send(self._reply)
        self._acked_at = now
        self._arm(now)

    def _adopt_peer(self, addr: PeerAddress, now: float) -> bool:
        return True

    def _repeat_first_answer(self, now: float) -> None:
        self._acked_at = None  # Karn
        self._send(self._reply)


class ClientRead(ClientTransfer, ReceivingTransfer):
    """The client side of an RRQ: an OACK (answered by ACK 0) or DATA 1 from a new TID."""

    def __init__(self, server: PeerAddress, request: TransferRequest, timing: Timing,
                 now: float) -> None:
        super().__init__(peer=None, options=TransferOptions(), timing=timing,
                         netascii_mode=request.mode == "netascii", now=now)
        self._start_request(server, request, now)

    def _on_oack(self, packet: OptionAck, now: float) -> None:
        if self._accept_options(packet, now):
            self.state = TransferState.RECEIVING
            self._send_ack(0, now)

    def _on_repeated_oack(self, packet: OptionAck, now: float) -> None:
        if self._received == 0:  # our ACK 0 was lost
            self._send_ack(0, now, fresh=False)

    def _on_first_data(self, packet: Data, now: float) -> None:
        self._agree(TransferOptions())  # no OACK: the server ignored every option
        self.state = TransferState.RECEIVING
        self._on_data(packet, now)

    def _resend_control(self, now: float) -> None:
        self._resend_request(now)

    handlers: ClassVar[HandlerTable] = handler_table(
        ReceivingTransfer.handlers,
        on(TransferState.REQUESTING, OptionAck, _on_oack),
        on(TransferState.REQUESTING, Data, _on_first_data),
        on(TransferState.RECEIVING, OptionAck, _on_repeated_oack),
    )

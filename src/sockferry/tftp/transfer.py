"""TFTP transfer state machines, both directions and both roles (sans-I/O).

A transfer is fed datagrams and ``now`` (monotonic seconds) and hands back datagrams to
send, events and its next deadline; it never touches a socket, a clock or a file.  File
bytes travel as values: a sending transfer is given the file in chunks
(``send_data``), a receiving one emits ``BlockReceived`` and, at the last block, waits
for the driver to store the file (``confirm_stored``) before it acknowledges that block,
so a peer never hears "done" for a file that is not safely on disk.

Rules implemented here, by source:

- RFC 1350: lock-step DATA/ACK, a short block ends the transfer (a file whose size is a
  multiple of the block size ends with an empty block), packets from a wrong TID get
  ERROR 5 and change nothing, a receiver dallies after its final ACK to repeat it;
- RFC 1123 §4.2.3.1: a duplicate ACK never triggers a resend (the Sorcerer's Apprentice
  bug); only the retransmission timer does;
- RFC 1123 §4.2.3.2: adaptive timeout with exponential backoff (see ``rto``);
- RFC 2347: OACK in place of the first ACK (write) or before the first DATA (read);
- RFC 7440: windows of blocks; a receiver that sees a gap acknowledges the last block it
  has in order, and the sender restarts the window after it;
- block numbers roll over from 65535 to 0 (the tftp-hpa and curl convention);
- never an answer to an ERROR, from the peer or anyone else (two TFTP hosts answering
  each other's errors ping-pong for ever: the "Loop DoS" class, CVE-2024-2169);
- anti-amplification, after RFC 9000 §8: a server transfer whose peer has not yet
  answered on the TID (its source address may be forged) sends it at most
  ``AMPLIFICATION_FACTOR`` times the bytes received from it, except that each request
  datagram gets its one answer (an OACK, ACK 0, or DATA 1 when no option was agreed, as
  RFC 1350 has it); it expires ``unconfirmed_s`` after it started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from sockferry.errors import (
    MalformedPacket,
    PeerRefused,
    RemoteProtocolError,
    SockferryError,
    TransferTimeout,
)
from sockferry.rto import MIN_RTO_S, RetransmitTimer
from sockferry.safe_text import clip
from sockferry.serial import unwrap
from sockferry.tftp import netascii
from sockferry.tftp.options import TransferOptions, accept_oack
from sockferry.tftp.packets import (
    HEADER,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    TransferRequest,
    decode_packet,
    encode_ack,
    encode_error,
    encode_oack,
    encode_request,
    opcode_of,
)

# A socket address as the driver reports it; the core compares addresses, never parses
# them (tests use any hashable tuple).
PeerAddress = tuple[Any, ...]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 6
# ERROR 5 answers to strangers are capped per second, so that a flood of spoofed packets
# cannot turn a transfer into a reflector.
MAX_WRONG_TID_REPLIES_PER_S = 10
# Before a server's peer has proven its address (by answering on the TID), at most this
# many bytes go to it per byte received from it (RFC 9000 §8's factor for QUIC).
AMPLIFICATION_FACTOR = 3
# ... and the transfer ends this long after it started if the peer has still not
# answered: two retransmission intervals of the common clients (tftp-hpa and curl wait
# 5 s), so one lost datagram does not cost a real client its transfer, yet a forged
# request holds its slot a third of the time it did (a retransmission schedule of ~30 s).
DEFAULT_UNCONFIRMED_S = 10.0
_ERROR_OPCODE = b"\x00\x05"
# Round trips are timed at most this often.  On a path whose round trip is this long or
# longer every round trip is timed, the rate RFC 6298 §3 asks of TCP; on faster paths the
# timeout sits at its floor (MIN_RTO_S, four times this) unless the round trip varies a
# lot, and 200 samples a second still follow that within a few tens of milliseconds.
# Lock-step transfers on a LAN save the estimator's arithmetic on nearly every block.
SAMPLE_SPACING_S = MIN_RTO_S / 4
# A receiver's one-step path (take_block) hands file bytes over in batches: once this
# many wait, ``service_due`` asks the driver to collect them (``take_pending``: one write
# of the driver's usual size); should it not, take_block leaves the next block to the
# general path, which hands them over through ``next_event``.
MAX_PENDING_BYTES = 256 * 1024
# A sender asks for file bytes this far beyond its window, so that its driver tops the
# stream up between lock-step steps (see ``service_due``) before it runs dry.
READ_AHEAD_BYTES = 256 * 1024
_ACK = int(Opcode.ACK)
_DATA = int(Opcode.DATA)
_pack_header = HEADER.pack


class TransferState(Enum):
    REQUESTING = auto()  # client: request sent, waiting for the server's first answer
    OFFERING = auto()    # server read: OACK sent, waiting for ACK 0
    SENDING = auto()
    RECEIVING = auto()
    STORING = auto()     # last block in; the driver is storing the file
    DALLYING = auto()    # final ACK sent; repeated if the last block comes again
    DONE = auto()
    FAILED = auto()

    # Looked up once per datagram: members are singletons, so identity hashing is exact
    # and much cheaper than Enum's hash of the name.
    __hash__ = object.__hash__


TERMINAL = frozenset({TransferState.DONE, TransferState.FAILED})
# For the per-packet paths: a module global is found faster than an Enum member.
_SENDING = TransferState.SENDING
_RECEIVING = TransferState.RECEIVING


@dataclass(frozen=True, slots=True)
class Timing:
    """Retransmission policy.  ``timeout_s`` bounds the adaptive timeout (a negotiated
    RFC 2349 timeout replaces it); a transfer gives up after ``retries`` timeouts in a row
    once the peer has also been silent for ``timeout_s``."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    # How long a receiver lingers after its final ACK to repeat it: by default twice the
    # timeout bound, which outlasts the sender's retransmissions; a command-line client
    # that wants to exit soon gives a number of current RTOs instead.
    dally_rtos: float | None = None


# ---------------------------------------------------------------------------------------
# Events (facts, in the past tense)


@dataclass(frozen=True, slots=True)
class OptionsAgreed:
    options: TransferOptions


@dataclass(frozen=True, slots=True)
class BlockReceived:
    data: bytes  # local bytes (netascii already decoded)


@dataclass(frozen=True, slots=True)
class LastBlockReceived:
    """Every byte is in: store the file, then call ``confirm_stored`` or ``abort``."""

    size: int


@dataclass(frozen=True, slots=True)
class TransferCompleted:
    size: int  # local bytes sent or received


@dataclass(frozen=True, slots=True)
class TransferFailed:
    error: SockferryError


Event = OptionsAgreed | BlockReceived | LastBlockReceived | TransferCompleted | TransferFailed


def peer_refusal(packet: Error) -> PeerRefused:
    try:
        name = ErrorCode(packet.code).name.replace("_", " ").lower()
    except ValueError:
        name = "unknown error code"
    text = clip(packet.message) or "(no message)"
    return PeerRefused(f"{text} (TFTP error {packet.code}, {name})", code=packet.code)


def absolute_block(wire: int, reference: int) -> int:
    """The block number nearest to ``reference`` whose low 16 bits are ``wire``."""
    return unwrap(wire, reference, 16)


Handler = Callable[[Any, float], None]


class Transfer:
    """What every transfer shares: TIDs, the timer, retries, outgoing packets, events."""

    def __init__(self, *, peer: PeerAddress | None, options: TransferOptions, timing: Timing,
                 netascii_mode: bool, now: float) -> None:
        self.state = TransferState.REQUESTING
        self.peer = peer
        self.options = options
        self.netascii = netascii_mode
        self.timing = timing
        self.size = 0              # local bytes delivered or acknowledged
        self.retransmissions = 0
        self._rto = RetransmitTimer(max_s=self._max_rto(options))
        self._out: list[tuple[bytes, PeerAddress]] = []
        self._events: deque[Event] = deque()
        self._deadline: float | None = None
        self._timeouts = 0         # consecutive timeouts without progress
        self._heard_at = now
        self._sample_from = now    # no round trip is timed before this time
        self._stranger_window = (now, 0)
        self._table: dict[tuple[TransferState, type], Handler] = {}
        # Anti-amplification (servers only, see _guard): until the peer answers on the
        # TID, what goes to it is charged against _budget; _answers_due datagrams (one per
        # request received) go out whatever the budget.
        self._confirmed = True
        self._started_at = now
        self._expires_at: float | None = None
        self._budget = 0
        self._answers_due = 0
        self.sent_unconfirmed = 0  # bytes sent to the peer before it answered
        self.withheld = 0          # datagrams not sent to it for lack of budget

    # -- the driver's interface ---------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def step_ready(self) -> bool:
        """True in lock-step steady state: the next datagram, if it is the expected
        one, can be answered through the one-step path (see the subclasses)."""
        return False

    # Set by ``finish_step`` when the driver should do its file I/O before the next
    # step: supply file bytes (a sender) or collect them (``take_pending``, a receiver).
    service_due = False

    @property
    def confirmed(self) -> bool:
        """True once the peer answered on the TID (always, for a client)."""
        return self._confirmed

    def receive_datagram(self, data: bytes, addr: PeerAddress, now: float) -> None:
        if self.state in TERMINAL:
            return
        if self.peer is not None and addr != self.peer:
            self._answer_stranger(data, addr, now)
            return
        try:
            packet = decode_packet(data)
        except MalformedPacket as exc:
            if self.peer is None:
                return  # not even an answer: a stray datagram before the TID is known
            # A broken ERROR is still an ERROR: never answered.
            code = None if data[:2] == _ERROR_OPCODE else ErrorCode.ILLEGAL_OPERATION
            self._fail(exc, now, code, str(exc))
            return
        if self.peer is None and not self._adopt_peer(addr, now):
            self._answer_stranger(data, addr, now)
            return
        handler = self._table.get((self.state, type(packet)))
        if handler is not None:
            handler(packet, now)
        elif isinstance(packet, Error):
            self._on_error(packet, now)
        else:
            self._unexpected(packet, now)

    def handle_timeout(self, now: float) -> None:
        expires = self._expires_at
        if expires is not None and now >= expires:
            # Nothing to tell a peer that may not exist: no ERROR.
            self._fail(TransferTimeout(
                f"the peer never answered on the transfer's port within "
                f"{expires - self._started_at:.1f} s (its address may be forged)"), now)
            return
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._on_timeout(now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, PeerAddress]]:
        out, self._out = self._out, []
        if not self._confirmed and out:
            return self._charge(out)
        return out

    def next_deadline(self) -> float | None:
        deadline, expires = self._deadline, self._expires_at
        if expires is not None and (deadline is None or expires < deadline):
            return expires
        return deadline

    def request_repeated(self, nbytes: int, now: float) -> None:
        """The peer sent its request again (a server's transfer).  Before the peer has
        answered, that earns budget and one more answer: the first one, again."""
        if self._confirmed or self.state in TERMINAL:
            return
        self._budget += AMPLIFICATION_FACTOR * nbytes
        self._answers_due += 1
        self._repeat_first_answer(now)

    def abort(self, error: SockferryError, code: ErrorCode, now: float) -> None:
        """Stop for a local reason (a disk error, a cancel): tell the peer with ERROR.

        A transfer that is only dallying has succeeded already; it just stops."""
        if self.state is TransferState.DALLYING:
            self.state = TransferState.DONE
            self._deadline = None
        elif self.state not in TERMINAL:
            self._fail(error, now, code, str(error))

    # -- shared machinery ---------------------------------------------------------------

    def _max_rto(self, options: TransferOptions) -> float:
        return float(options.timeout_s) if options.timeout_s else self.timing.timeout_s

    def _agree(self, options: TransferOptions) -> None:
        self.options = options
        self._rto.set_max(self._max_rto(options))
        self._events.append(OptionsAgreed(options))

    def _adopt_peer(self, addr: PeerAddress, now: float) -> bool:
        """Only clients start without a peer TID; servers override this."""
        raise NotImplementedError

    def _guard(self, received: int, unconfirmed_s: float, now: float) -> None:
        """A server's transfer: its peer is unconfirmed until it answers on the TID."""
        self._confirmed = False
        self._budget = AMPLIFICATION_FACTOR * received
        self._answers_due = 1
        self._started_at = now
        self._expires_at = now + unconfirmed_s

    def _confirm(self) -> None:
        self._confirmed = True
        self._expires_at = None

    def _charge(self, out: list[tuple[bytes, PeerAddress]]) -> list[tuple[bytes, PeerAddress]]:
        """What may go to an unconfirmed peer (strangers' ERROR 5 are capped apart)."""
        kept = []
        for item in out:
            if item[1] == self.peer:
                size = len(item[0])
                if self._answers_due > 0:
                    self._answers_due -= 1
                elif self.sent_unconfirmed + size > self._budget:
                    self.withheld += 1
                    continue
                self.sent_unconfirmed += size
            kept.append(item)
        return kept

    def _repeat_first_answer(self, now: float) -> None:
        """Queue the first answer again (servers override this)."""

    def _send(self, data: bytes) -> None:
        assert self.peer is not None
        self._out.append((data, self.peer))

    def _arm(self, now: float) -> None:
        self._deadline = now + self._rto.rto_s

    def _heard(self, now: float) -> None:
        self._heard_at = now
        self._timeouts = 0
        self._rto.progressed()
        if not self._confirmed:
            self._confirm()

    def _may_retry(self, now: float) -> bool:
        """Count a timeout; False (and FAILED) once the retries are spent."""
        self._timeouts += 1
        silent_s = now - self._heard_at
        if self._timeouts > self.timing.retries and silent_s >= self._rto.max_s:
            tries = f"{self._timeouts - 1} retransmissions over {silent_s:.1f} s"
            if self.state is TransferState.REQUESTING:
                text = f"no answer to the request after {tries} — is a TFTP server running there?"
            else:
                text = f"the peer stopped answering: no reply after {tries}"
            self._fail(TransferTimeout(text), now)
            return False
        self._rto.back_off()
        self.retransmissions += 1
        return True

    def _answer_stranger(self, data: bytes, addr: PeerAddress, now: float) -> None:
        """RFC 1350 §4: a packet from a wrong TID gets ERROR 5 and disturbs nothing; an
        ERROR gets nothing."""
        if data[:2] == _ERROR_OPCODE:
            return
        started, count = self._stranger_window
        if now - started >= 1.0:
            started, count = now, 0
        if count < MAX_WRONG_TID_REPLIES_PER_S:
            self._out.append((encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"),
                              addr))
            count += 1
        self._stranger_window = (started, count)

    def _on_error(self, packet: Error, now: float) -> None:
        if self.state in (TransferState.STORING, TransferState.DALLYING):
            return  # the file is already complete; nothing the peer says changes that
        self._fail(peer_refusal(packet), now)

    def _unexpected(self, packet: Packet, now: float) -> None:
        if self.state in (TransferState.STORING, TransferState.DALLYING):
            return
        name = opcode_of(packet).name
        self._fail(RemoteProtocolError(f"the peer sent an unexpected {name} packet",
                                       code=ErrorCode.ILLEGAL_OPERATION),
                   now, ErrorCode.ILLEGAL_OPERATION, f"unexpected {name} packet")

    def _fail(self, error: SockferryError, now: float, code: ErrorCode | None = None,
              message: str = "") -> None:
        if code is not None and self.peer is not None:
            self._send(encode_error(code, message))
        self.state = TransferState.FAILED
        self._deadline = self._expires_at = None
        self._events.append(TransferFailed(error))

    def _on_timeout(self, now: float) -> None:
        raise NotImplementedError


class _ClientMixin(Transfer):
    """A client sends its request to the server's port and adopts the TID that answers."""

    server: PeerAddress
    _request: bytes
    _requested: dict[str, str]
    _sent_at: float | None

    def _start_request(self, server: PeerAddress, request: TransferRequest, now: float) -> None:
        self.server = server
        self._requested = dict(request.options)
        self._request = encode_request(request.opcode, request.filename, request.mode,
                                       request.options)
        self._out.append((self._request, server))
        self._sent_at = now
        self._arm(now)

    def _adopt_peer(self, addr: PeerAddress, now: float) -> bool:
        # The answer comes from a fresh port (the server's TID) on the same host.
        if addr[0] != self.server[0]:
            return False  # a stranger
        self.peer = addr
        self._heard(now)
        if self._sent_at is not None:
            self._rto.sample(now - self._sent_at)
        return True

    def _accept_options(self, packet: OptionAck, now: float) -> bool:
        try:
            options = accept_oack(self._requested, packet.options)
        except RemoteProtocolError as exc:
            self._fail(exc, now, ErrorCode.OPTION_REFUSED, str(exc))
            return False
        self._agree(options)
        return True

    def _resend_request(self, now: float) -> None:
        if self._may_retry(now):
            self._sent_at = None  # Karn: no sample from a repeated request
            self._out.append((self._request, self.server))
            self._arm(now)


# ---------------------------------------------------------------------------------------
# Sending: the server answering RRQ, the client doing WRQ


class SendingTransfer(Transfer):
    """Sends a stream of blocks in windows and waits for ACKs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
        self._table[(TransferState.SENDING, Ack)] = self._on_ack

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
        self._table[(TransferState.OFFERING, Ack)] = self._on_oack_acked
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


class ClientWrite(_ClientMixin, SendingTransfer):
    """The client side of a WRQ: ACK 0 or an OACK from a new TID, then DATA."""

    def __init__(self, server: PeerAddress, request: TransferRequest, timing: Timing,
                 now: float) -> None:
        super().__init__(peer=None, options=TransferOptions(), timing=timing,
                         netascii_mode=request.mode == "netascii", now=now)
        self._table[(TransferState.REQUESTING, Ack)] = self._on_first_ack
        self._table[(TransferState.REQUESTING, OptionAck)] = self._on_oack
        # A repeated OACK means DATA 1 was lost; like a duplicate ACK it changes nothing.
        self._table[(TransferState.SENDING, OptionAck)] = _ignore
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


# ---------------------------------------------------------------------------------------
# Receiving: the server answering WRQ, the client doing RRQ


class ReceivingTransfer(Transfer):
    """Receives blocks in order, acknowledges each window, re-acknowledges duplicates."""

    def __init__(self, *, max_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
        self._table[(TransferState.RECEIVING, Data)] = self._on_data
        self._table[(TransferState.DALLYING, Data)] = self._on_data_while_dallying
        self._table[(TransferState.STORING, Data)] = _ignore

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


def _ignore(packet: Packet, now: float) -> None:
    """Input that is legal in a state but changes nothing."""


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


class ClientRead(_ClientMixin, ReceivingTransfer):
    """The client side of an RRQ: an OACK (answered by ACK 0) or DATA 1 from a new TID."""

    def __init__(self, server: PeerAddress, request: TransferRequest, timing: Timing,
                 now: float) -> None:
        super().__init__(peer=None, options=TransferOptions(), timing=timing,
                         netascii_mode=request.mode == "netascii", now=now)
        self._table[(TransferState.REQUESTING, OptionAck)] = self._on_oack
        self._table[(TransferState.REQUESTING, Data)] = self._on_first_data
        self._table[(TransferState.RECEIVING, OptionAck)] = self._on_repeated_oack
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

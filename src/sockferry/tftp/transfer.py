"""What every TFTP transfer state machine shares (sans-I/O): states, timing, events, the
dispatch table and the ``Transfer`` base; ``sending.py`` and ``receiving.py`` hold the
two directions, each with its server and client role.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, ClassVar, TypeVar, cast

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
from sockferry.tftp.options import TransferOptions, accept_oack
from sockferry.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    TransferRequest,
    decode_packet,
    encode_error,
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


# ---------------------------------------------------------------------------------------
# The dispatch table: (state, packet type) -> handler, one table per class

# What a transfer may be handed once it runs: requests go to the server's port.
PacketT = TypeVar("PacketT", Data, Ack, OptionAck, Error)
TransferT = TypeVar("TransferT", bound="Transfer")
# A handler as the dispatcher calls it: the transfer, the decoded packet, now.
Handler = Callable[["Transfer", Packet, float], None]
HandlerTable = Mapping[tuple["TransferState", type[Packet]], Handler]


def on(state: TransferState, kind: type[PacketT],
       handler: Callable[[TransferT, PacketT, float], None],
       ) -> tuple[tuple[TransferState, type[Packet]], Handler]:
    """One entry of a class's handler table: in ``state``, a packet of type ``kind`` goes
    to ``handler`` (a function of the class, called with the transfer, the packet, now).

    The type checker sees that ``handler`` takes a ``kind`` packet and a transfer of its
    class; the dispatcher looks handlers up by the packet's exact type in the table of
    the transfer's own class (which holds its bases' entries), so that is what each
    handler gets, and the one cast below only forgets it for the table's value type."""
    return (state, kind), cast(Handler, handler)


def handler_table(base: HandlerTable,
                  *entries: tuple[tuple[TransferState, type[Packet]], Handler]) -> HandlerTable:
    """A subclass's table: its base's entries, and its own (``on``) over them."""
    return {**base, **dict(entries)}


def ignore_packet(transfer: Transfer, packet: Packet, now: float) -> None:
    """A handler for input that is legal in a state but changes nothing."""


class Transfer:
    """What every transfer shares: TIDs, the timer, retries, outgoing packets, events.

    A decoded packet from the peer goes to the handler its class's table (``handlers``)
    names for the current state and the packet's type, as h2 drives its streams.  Unlike
    h2's, an entry names no next state: where a packet leads depends on its contents (the
    ACK of the last block ends a transfer, any other moves the window), so the handler
    sets it.  A packet the table does not name is an ERROR (the peer gave up) or fails the
    transfer as unexpected.  Subclasses extend their bases' tables (``on``)."""

    handlers: ClassVar[HandlerTable] = {}

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
        handler = self.handlers.get((self.state, type(packet)))
        if handler is not None:
            handler(self, packet, now)
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


class ClientTransfer(Transfer):
    """A client's part, mixed into either direction: it sends its request to the
    server's port and adopts the TID that answers."""

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

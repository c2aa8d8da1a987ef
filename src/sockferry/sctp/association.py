"""One SCTP association as a pure state machine (RFC 9260).

Packets and ``now`` go in; encoded packets, ``UserMessage`` / ``AssociationChange`` events and
one deadline come out.  The ``Stack`` (``stack.py``) owns the port, the stateless half of
the handshake and the choice of association; everything from the first INIT we send, or
the first valid COOKIE ECHO we receive, to the last SHUTDOWN COMPLETE or ABORT is here.

TSNs are kept as unbounded integers inside and only wrapped to 32 bits on the wire, so
no comparison here needs serial-number arithmetic (RFC 1982) except when unwrapping.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar

from sockferry.addresses import SockAddr, format_sockaddr
from sockferry.errors import NetworkError, UsageError
from sockferry.rto import RetransmitTimer
from sockferry.sctp import chunks as c
from sockferry.sctp.checksum import crc32c
from sockferry.sctp.config import Config
from sockferry.sctp.cookie import CookieState
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    UserMessage,
)
from sockferry.serial import unwrap

log = logging.getLogger("sockferry.sctp")

Event = UserMessage | AssociationChange
Random = Callable[[int], bytes]

# A SACK reports at most this many gaps and duplicates; the rest wait for the next one.
CLOCK_GRANULARITY_S = 0.001  # G of RFC 9260 §6.3.1: RTO is at least SRTT + 1 ms
MAX_GAP_BLOCKS = 128
MAX_DUPLICATES = 32
# How far ahead of the cumulative TSN a DATA chunk may be and still be kept.
MAX_TSN_AHEAD = 1 << 16
# Below this many bytes in flight, a send() transmits at once; above, SACKs clock it.
APP_LIMITED_FLIGHT = 4 * 1500
_HEARTBEAT_INFO = struct.Struct("!dQ")
_U16_PAIR = struct.Struct("!HH")


class AssociationState(Enum):
    """RFC 9260 §4."""

    CLOSED = "CLOSED"
    COOKIE_WAIT = "COOKIE-WAIT"
    COOKIE_ECHOED = "COOKIE-ECHOED"
    ESTABLISHED = "ESTABLISHED"
    SHUTDOWN_PENDING = "SHUTDOWN-PENDING"
    SHUTDOWN_SENT = "SHUTDOWN-SENT"
    SHUTDOWN_RECEIVED = "SHUTDOWN-RECEIVED"
    SHUTDOWN_ACK_SENT = "SHUTDOWN-ACK-SENT"


_ALONE = frozenset({c.InitChunk, c.InitAckChunk, c.ShutdownCompleteChunk})
_SENDING_STATES = {AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED,
                   AssociationState.ESTABLISHED}
_DATA_STATES = {AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING,
                AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_RECEIVED}
_NEW_DATA_STATES = (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING,
                    AssociationState.SHUTDOWN_RECEIVED)
_SETUP_STATES = (AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED)


class _Outgoing:
    """A DATA chunk from the moment it gets its TSN until it is cumulatively acked."""

    __slots__ = ("acked", "fast_retransmitted", "header", "in_flight", "marked", "misses",
                 "payload", "sent_at", "sent_count", "size", "tsn")

    def __init__(self, tsn: int, header: bytes, payload: memoryview, now: float) -> None:
        self.tsn = tsn
        self.header = header
        self.payload = payload
        self.size = len(payload)
        self.sent_at = now
        self.sent_count = 1
        self.acked = False
        self.in_flight = True
        self.marked = False
        self.fast_retransmitted = False
        self.misses = 0


class _Pending:
    """A queued message; cut into DATA chunks only when it is sent (lazy fragmentation)."""

    __slots__ = ("data", "offset", "ppid", "ssn", "stream", "unordered")

    def __init__(self, data: memoryview, stream: int, ssn: int, ppid: int,
                 unordered: bool) -> None:
        self.data = data
        self.offset = 0
        self.stream = stream
        self.ssn = ssn
        self.ppid = ppid
        self.unordered = unordered


def cause_text(causes: tuple[c.Cause, ...]) -> str:
    """Error causes in words, for logs and ``AssociationChange.reason``."""
    words = []
    for cause in causes:
        try:
            name = c.CauseCode(cause.code).name.replace("_", " ").lower()
        except ValueError:
            name = f"cause {cause.code}"
        if cause.code == c.CauseCode.USER_INITIATED_ABORT and cause.body:
            name += f" ({cause.body.decode(errors='replace')[:200]})"
        words.append(name)
    return ", ".join(words) or "no cause given"


class Association:
    """An association's state, timers, send and receive paths."""

    def __init__(self, assoc_id: AssocId, peer: SockAddr, *, local_port: int,
                 peer_port: int, config: Config, rng: Random, max_packet_size: int) -> None:
        self.assoc_id = assoc_id
        self.peer = peer
        self.local_port = local_port
        self.peer_port = peer_port
        self.config = config
        self._rng = rng
        self.state = AssociationState.CLOSED
        self.my_tag = 0
        self.peer_tag = 0
        self.outbound_streams = 0
        self.inbound_streams = 0
        self._events: deque[Event] = deque()
        self._outbox: list[bytes] = []
        self._control: list[bytes] = []
        self.set_max_packet_size(max_packet_size)
        self._reset_transfer_state(0, 0, 0)
        self._rtx = RetransmitTimer(max_s=config.rto_max_s, min_s=config.rto_min_s,
                                    initial_s=config.rto_initial_s,
                                    granularity_s=CLOCK_GRANULARITY_S)
        self._errors = 0
        self._init_chunk = b""
        self._init_retransmits = 0
        self._t1_at: float | None = None
        self._t2_at: float | None = None
        self._t3_at: float | None = None
        self._sack_at: float | None = None
        self._hb_at: float | None = None
        self._hb_nonce: int | None = None
        self._cookie_sent_at = 0.0
        self._cookie_echo = b""
        self._established_once = False

    # -----------------------------------------------------------------------------------
    # Set-up

    def set_max_packet_size(self, size: int) -> None:
        """The largest SCTP packet the path carries (its MTU less IP and UDP headers)."""
        self.max_packet_size = max(size, 508)
        # Payload per chunk, kept a multiple of 4 so that no padding is wasted.
        self._max_payload = (self.max_packet_size - c.COMMON_HEADER_SIZE
                             - c.DATA_HEADER_SIZE) & ~3

    def _reset_transfer_state(self, my_tsn: int, peer_tsn: int, peer_rwnd: int) -> None:
        mtu = self.max_packet_size
        self._next_tsn = my_tsn
        self._cum_acked = my_tsn - 1
        self._sent: list[_Outgoing] = []
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._next_ssn = [0] * max(self.outbound_streams, 1)
        self._flight = 0
        self._marked = 0
        # §7.2.1: initial cwnd; ssthresh starts at the peer's window.
        self._cwnd = min(4 * mtu, max(2 * mtu, 4404))
        self._ssthresh = max(peer_rwnd, 4 * mtu)
        self._partial_bytes_acked = 0
        self._peer_rwnd = peer_rwnd
        self._fast_recovery_exit: int | None = None
        self._fast_pending = False
        self._gap_acked = False
        self._sent_bytes = 0
        self._rtt_tsn: int | None = None
        self._rtt_sent_at = 0.0
        # Receive side
        self._peer_cum = peer_tsn - 1
        self._highest_received = peer_tsn - 1
        self._received_above: set[int] = set()
        self._duplicates: list[int] = []
        self._fragments: dict[int, c.DataChunk] = {}
        self._fragment_bytes = 0
        self._expected_ssn = [0] * max(self.inbound_streams, 1)
        self._reorder: list[dict[int, UserMessage]] = [{} for _ in self._expected_ssn]
        self._held = 0
        self._advertised_rwnd = self.config.receive_buffer
        self._data_packets_unacked = 0
        self._sack_now = False

    def start(self, now: float) -> None:
        """Send INIT (§5.1 A) and wait for INIT ACK in COOKIE-WAIT."""
        self.my_tag = self._random_tag()
        self.my_initial_tsn = self._random_tag()
        self.state = AssociationState.COOKIE_WAIT
        self._reset_transfer_state(self.my_initial_tsn, 0, 0)
        self._init_chunk = self._encode_init(())
        self._send_init(now)

    def _encode_init(self, extra: tuple[c.Param, ...]) -> bytes:
        streams = self.config.streams
        params = (c.Param(c.ParamType.SUPPORTED_ADDRESS_TYPES,
                          _U16_PAIR.pack(c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS)),
                  *extra)
        return c.encode_chunk(c.InitChunk(self.my_tag, self.config.receive_buffer,
                                          streams.outbound, streams.max_inbound,
                                          self.my_initial_tsn, params))

    def _send_init(self, now: float) -> None:
        # §8.5.1: an INIT goes out with verification tag 0, alone in its packet.
        self._outbox.append(c.encode_packet(self.local_port, self.peer_port, 0,
                                            [self._init_chunk]))
        self._t1_at = now + self._rtx.rto_s

    def accept_cookie(self, cookie: CookieState, now: float) -> None:
        """Create the association from a valid COOKIE ECHO (§5.1 D) and go ESTABLISHED."""
        self._adopt(cookie, now)
        self._queue_control(c.CookieAckChunk())
        self._establish(AssocState.COMM_UP)

    def _adopt(self, cookie: CookieState, now: float) -> None:
        self.my_tag = cookie.my_tag
        self.peer_tag = cookie.peer_tag
        self.outbound_streams = cookie.outbound_streams
        self.inbound_streams = cookie.inbound_streams
        self._reset_transfer_state(cookie.my_initial_tsn, cookie.peer_initial_tsn,
                                   cookie.peer_a_rwnd)
        self._errors = 0
        self._t1_at = self._t2_at = self._t3_at = self._sack_at = None
        self._hb_nonce = None
        self._hb_at = now + self._heartbeat_interval()

    def _establish(self, change: AssocState) -> None:
        self.state = AssociationState.ESTABLISHED
        self._t1_at = None
        self._established_once = True
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams))

    # -----------------------------------------------------------------------------------
    # Collisions and restarts (§5.2), driven by the stack once the cookie is verified

    def tie_tags(self) -> tuple[int, int]:
        """(local, peer) Tie-Tags to put in a cookie answering an unexpected INIT."""
        if self.state == AssociationState.COOKIE_WAIT:
            return self.my_tag, 0
        return self.my_tag, self.peer_tag

    def handle_cookie_echo(self, cookie: CookieState, now: float) -> None:
        """A valid COOKIE ECHO for this association: the table of §5.2.4."""
        my_tag_matches = cookie.my_tag == self.my_tag
        peer_tag_matches = cookie.peer_tag == self.peer_tag
        if not my_tag_matches and not peer_tag_matches:
            if (cookie.local_tie_tag, cookie.peer_tie_tag) != (self.my_tag, self.peer_tag):
                return
            self._restart(cookie, now)  # case A: the peer restarted
        elif my_tag_matches and not peer_tag_matches:
            self._collision(cookie, now)  # case B: both sides sent INIT
        elif my_tag_matches and peer_tag_matches:
            if self.state in _SETUP_STATES:  # case D
                self._establish(AssocState.COMM_UP)
            self._queue_control(c.CookieAckChunk())
        # case C (only the peer's tag matches): a stale cookie of a collision; discard.

    def _restart(self, cookie: CookieState, now: float) -> None:
        if self.state == AssociationState.SHUTDOWN_ACK_SENT:
            self._queue_control(c.ShutdownAckChunk())
            self._queue_control(c.ErrorChunk((c.Cause(
                c.CauseCode.COOKIE_RECEIVED_WHILE_SHUTTING_DOWN),)))
            return
        log.info("association %d: %s restarted", self.assoc_id, format_sockaddr(self.peer))
        self._adopt(cookie, now)
        self._queue_control(c.CookieAckChunk())
        self._establish(AssocState.RESTART)

    def _collision(self, cookie: CookieState, now: float) -> None:
        was_up = self.state not in _SETUP_STATES
        pending = list(self._pending)
        self._adopt(cookie, now)
        for message in pending:  # keep what the user queued while we were connecting
            self._requeue(message)
        self._queue_control(c.CookieAckChunk())
        if not was_up:
            self._establish(AssocState.COMM_UP)

    def _requeue(self, message: _Pending) -> None:
        if message.stream < self.outbound_streams:
            self._enqueue(message.data, message.stream, message.ppid, message.unordered)

    # -----------------------------------------------------------------------------------
    # Public interface used by the stack and the driver

    @property
    def closed(self) -> bool:
        return self.state == AssociationState.CLOSED

    @property
    def buffered_amount(self) -> int:
        """Bytes queued or in flight, not yet acknowledged by the peer."""
        return self._pending_bytes + self._sent_bytes

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def packets_to_send(self) -> list[bytes]:
        packets, self._outbox = self._outbox, []
        return packets

    def next_deadline(self) -> float | None:
        times = [t for t in (self._t1_at, self._t2_at, self._t3_at, self._sack_at,
                             self._hb_at) if t is not None]
        return min(times) if times else None

    def send(self, data: bytes, stream: int, ppid: int, unordered: bool, now: float) -> None:
        """Queue one message (sent whole, in order per stream unless ``unordered``)."""
        if self.state not in _SENDING_STATES:
            raise NetworkError(f"association {self.assoc_id} with "
                               f"{format_sockaddr(self.peer)} is {self.state.value.lower()}"
                               " — no more messages can be sent on it")
        limit = self.outbound_streams or self.config.streams.outbound
        if not 0 <= stream < limit:
            raise UsageError(f"stream {stream} is not open on association {self.assoc_id}: "
                             f"it has {limit} outbound streams (0 to {limit - 1})")
        if not 0 <= ppid <= 0xFFFFFFFF:
            raise UsageError(f"payload protocol identifier {ppid} does not fit 32 bits")
        if not data:
            raise UsageError("SCTP cannot send an empty message (RFC 9260 §6.2)")
        if len(data) > self.config.max_message_size:
            raise UsageError(f"a message of {len(data)} bytes is over the limit of "
                             f"{self.config.max_message_size} bytes")
        self._enqueue(memoryview(data), stream, ppid, unordered)
        # With little in flight a new message goes out at once (no Nagle delay); in bulk
        # the SACKs clock the sending, so that a burst of writes does not become a burst
        # of packets that a receiver's small UDP buffer would drop (§6.1 D, Max.Burst).
        if self.state == AssociationState.ESTABLISHED and self._flight < APP_LIMITED_FLIGHT:
            self._transmit(now)

    def _enqueue(self, data: memoryview, stream: int, ppid: int, unordered: bool) -> None:
        ssn = 0
        if not unordered:
            if stream >= len(self._next_ssn):
                self._next_ssn.extend([0] * (stream + 1 - len(self._next_ssn)))
            ssn = self._next_ssn[stream]
            self._next_ssn[stream] = (ssn + 1) & 0xFFFF
        self._pending.append(_Pending(data, stream, ssn, ppid, unordered))
        self._pending_bytes += len(data)

    def release(self, nbytes: int, now: float) -> None:
        """The application consumed ``nbytes`` of delivered messages: reopen the window."""
        self._held -= nbytes
        rwnd = self._rwnd()
        if (self.state in _DATA_STATES
                and rwnd - self._advertised_rwnd >= max(2 * self.max_packet_size,
                                                         self.config.receive_buffer // 4)):
            self._sack_now = True  # §6.2: tell a blocked sender the window opened
            self._transmit(now)

    def shutdown(self, now: float) -> None:
        """Graceful close (§9.2): send what is queued, then SHUTDOWN."""
        if self.state in _SETUP_STATES:
            self.abort("shut down before the association was up", now)
            return
        if self.state != AssociationState.ESTABLISHED:
            return
        self.state = AssociationState.SHUTDOWN_PENDING
        self._transmit(now)

    def unreachable(self, quoted: bytes, reason: str) -> bool:
        """An ICMP error quoted ``quoted``, a packet sent to this peer.  RFC 6951 §5.5
        treats Port Unreachable as Protocol Unreachable; RFC 9260 Appendix C (ICMP6)
        accepts it only with our verification tag in it, or with tag 0 and the INIT
        carrying our Initiate Tag.  Only a setup is given up: an established association
        leaves a dead peer to heartbeats and retransmissions.  True if it closed."""
        if self.state not in _SETUP_STATES or len(quoted) < 8:
            return False
        tag = int.from_bytes(quoted[4:8], "big")
        if tag == 0:
            if (len(quoted) < 20 or quoted[12] != c.ChunkType.INIT
                    or int.from_bytes(quoted[16:20], "big") != self.my_tag):
                return False
        elif tag != self.peer_tag:
            return False
        self._close(AssocState.CANT_STR_ASSOC, reason)
        return True

    def abort(self, reason: str, now: float) -> None:
        """Send ABORT with a User-Initiated Abort cause (§9.1) and close."""
        if self.state == AssociationState.CLOSED:
            return
        cause = c.Cause(c.CauseCode.USER_INITIATED_ABORT, reason.encode()[:256])
        tag = self.peer_tag if self.state != AssociationState.COOKIE_WAIT else 0
        if self.state != AssociationState.COOKIE_WAIT:
            self._outbox.append(self._packet([c.encode_chunk(c.AbortChunk((cause,)))], tag))
        lost = AssocState.COMM_LOST if self._established_once else AssocState.CANT_STR_ASSOC
        self._close(lost, f"aborted locally: {reason}" if reason else "aborted locally")

    def _close(self, change: AssocState, reason: str = "") -> None:
        self.state = AssociationState.CLOSED
        self._t1_at = self._t2_at = self._t3_at = self._sack_at = self._hb_at = None
        self._pending.clear()
        self._sent.clear()
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams,
                                              reason))

    # -----------------------------------------------------------------------------------
    # Incoming packets

    def receive_packet(self, packet: c.Packet, now: float) -> bool:
        """A decoded packet for this association; False when its tag refuses it (§8.5)."""
        if not self._tag_acceptable(packet):
            return False  # a blind or stale packet; say nothing
        had_data = False
        for chunk in packet.chunks:
            if self.state == AssociationState.CLOSED:
                break
            if isinstance(chunk, c.DataChunk):
                had_data = True
                self._receive_data(chunk)
            elif isinstance(chunk, c.UnknownChunk):
                if not self._unknown_chunk(chunk):
                    break
            else:
                self._HANDLERS[type(chunk)](self, chunk, now)
        if had_data and self.state in _DATA_STATES:
            self._after_data(now)
        self._transmit(now)
        return True

    def flush(self, now: float) -> None:
        """Build whatever packets are due now."""
        self._transmit(now)

    def resend_shutdown_ack(self, now: float) -> None:
        """§9.2: in SHUTDOWN-ACK-SENT an INIT is answered with the SHUTDOWN ACK again."""
        if self.state == AssociationState.SHUTDOWN_ACK_SENT:
            self._queue_control(c.ShutdownAckChunk())
            self._transmit(now)

    def _tag_acceptable(self, packet: c.Packet) -> bool:
        """Verification tag rules of §8.5 and §8.5.1."""
        first = packet.chunks[0] if packet.chunks else None
        if isinstance(first, c.AbortChunk | c.ShutdownCompleteChunk) and first.reflected:
            return packet.verification_tag == self.peer_tag and self.peer_tag != 0
        if len(packet.chunks) > 1 and any(type(ch) in _ALONE for ch in packet.chunks):
            return False  # §6.10: these must be alone in their packet
        return packet.verification_tag == self.my_tag

    def _unknown_chunk(self, chunk: c.UnknownChunk) -> bool:
        """§3.2: the upper two bits of the type say what to do; True to go on."""
        if chunk.type & 0x40:
            body = c.encode_chunk(chunk)
            self._queue_control(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_CHUNK_TYPE,
                                                       body[:512]),)))
        return bool(chunk.type & 0x80)

    def _on_init_ack(self, chunk: c.InitAckChunk, now: float) -> None:
        if self.state != AssociationState.COOKIE_WAIT:
            return  # §5.2.3: an unexpected INIT ACK is discarded
        cookie, problems, unrecognized = _inspect_params(chunk.params)
        if chunk.initiate_tag == 0 or chunk.outbound_streams == 0 or chunk.inbound_streams == 0:
            self._abort_with(c.Cause(c.CauseCode.INVALID_MANDATORY_PARAMETER),
                             "the peer's INIT ACK has a zero tag or stream count")
            return
        if cookie is None:
            body = struct.pack("!IH", 1, c.ParamType.STATE_COOKIE)
            self._abort_with(c.Cause(c.CauseCode.MISSING_MANDATORY_PARAMETER, body),
                             "the peer's INIT ACK has no state cookie")
            return
        if problems:
            self._abort_with(problems[0], "the peer's INIT ACK is not acceptable")
            return
        self.peer_tag = chunk.initiate_tag
        streams = self.config.streams
        self.outbound_streams = min(streams.outbound, chunk.inbound_streams)
        self.inbound_streams = min(streams.max_inbound, chunk.outbound_streams)
        pending = list(self._pending)
        self._reset_transfer_state(self.my_initial_tsn, chunk.initial_tsn, chunk.a_rwnd)
        for message in pending:
            self._requeue(message)
        self._cookie_echo = c.encode_chunk(c.CookieEchoChunk(cookie))
        extra = [c.encode_chunk(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_PARAMETERS,
                                                      unrecognized),)))] if unrecognized else []
        self.state = AssociationState.COOKIE_ECHOED
        self._init_retransmits = 0
        self._send_cookie_echo(now, extra)

    def _send_cookie_echo(self, now: float, extra: list[bytes] | None = None) -> None:
        # §5.1 C: COOKIE ECHO must be the first chunk of its packet.
        self._outbox.append(self._packet([self._cookie_echo, *(extra or [])]))
        self._cookie_sent_at = now
        self._t1_at = now + self._rtx.rto_s

    def _on_cookie_ack(self, chunk: c.CookieAckChunk, now: float) -> None:
        if self.state != AssociationState.COOKIE_ECHOED:
            return  # §5.2.5
        if self._init_retransmits == 0:
            self._measure_rtt(now - self._cookie_sent_at)
        self._hb_at = now + self._heartbeat_interval()
        self._establish(AssocState.COMM_UP)

    def _on_sack(self, chunk: c.SackChunk, now: float) -> None:
        if self.state in _DATA_STATES:
            self._process_sack(chunk, now)

    def _on_heartbeat(self, chunk: c.HeartbeatChunk, now: float) -> None:
        self._queue_control(c.HeartbeatAckChunk(chunk.info))

    def _on_heartbeat_ack(self, chunk: c.HeartbeatAckChunk, now: float) -> None:
        if len(chunk.info) != _HEARTBEAT_INFO.size:
            return
        sent_at, nonce = _HEARTBEAT_INFO.unpack(chunk.info)
        if nonce != self._hb_nonce:
            return  # not the heartbeat we are waiting for (or forged)
        self._hb_nonce = None
        self._errors = 0  # §8.3: an acknowledged HEARTBEAT clears the error counter
        self._measure_rtt(now - sent_at)
        self._hb_at = now + self._heartbeat_interval()

    def _on_abort(self, chunk: c.AbortChunk, now: float) -> None:
        lost = AssocState.COMM_LOST if self._established_once else AssocState.CANT_STR_ASSOC
        self._close(lost, f"the peer aborted the association: {cause_text(chunk.causes)}")

    def _on_error(self, chunk: c.ErrorChunk, now: float) -> None:
        for cause in chunk.causes:
            if (cause.code == c.CauseCode.STALE_COOKIE
                    and self.state == AssociationState.COOKIE_ECHOED):
                self._stale_cookie(cause, now)
                return
        log.info("association %d: %s reported an error: %s", self.assoc_id,
                 format_sockaddr(self.peer), cause_text(chunk.causes))

    def _stale_cookie(self, cause: c.Cause, now: float) -> None:
        """§5.2.6: ask again with a Cookie Preservative for twice the staleness."""
        self._init_retransmits += 1
        if self._init_retransmits > self.config.max_init_retransmits:
            self._close(AssocState.CANT_STR_ASSOC, "the peer kept finding our cookie stale")
            return
        staleness_us = struct.unpack("!I", cause.body[:4])[0] if len(cause.body) >= 4 else 0
        extra_ms = min(2 * staleness_us // 1000 + 1, 0xFFFFFFFF)
        self._init_chunk = self._encode_init((c.Param(c.ParamType.COOKIE_PRESERVATIVE,
                                                      struct.pack("!I", extra_ms)),))
        self.state = AssociationState.COOKIE_WAIT
        self._send_init(now)

    def _on_shutdown(self, chunk: c.ShutdownChunk, now: float) -> None:
        if self.state not in _DATA_STATES and self.state != AssociationState.SHUTDOWN_ACK_SENT:
            return
        cum = self._unwrap(chunk.cumulative_tsn, self._cum_acked)
        if cum > self._cum_acked:
            self._process_sack(c.SackChunk(chunk.cumulative_tsn, self._peer_rwnd + self._flight),
                               now)
        if self.state in (AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_ACK_SENT):
            self._send_shutdown_ack(now)  # §9.2: both sides shut down, or our ACK was lost
        elif self.state in (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING):
            self.state = AssociationState.SHUTDOWN_RECEIVED

    def _on_shutdown_ack(self, chunk: c.ShutdownAckChunk, now: float) -> None:
        if self.state in (AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_ACK_SENT):
            self._outbox.append(self._packet([c.encode_chunk(c.ShutdownCompleteChunk())]))
            self._close(AssocState.SHUTDOWN_COMP)

    def _on_shutdown_complete(self, chunk: c.ShutdownCompleteChunk, now: float) -> None:
        if self.state == AssociationState.SHUTDOWN_ACK_SENT:
            self._close(AssocState.SHUTDOWN_COMP)

    def _ignore(self, chunk: c.Chunk, now: float) -> None:
        """INIT and COOKIE ECHO are the stack's; anything else here is out of place."""

    _HANDLERS: ClassVar[dict[type, Callable[[Association, Any, float], None]]] = {
        c.InitChunk: _ignore,
        c.CookieEchoChunk: _ignore,
        c.InitAckChunk: _on_init_ack,
        c.CookieAckChunk: _on_cookie_ack,
        c.SackChunk: _on_sack,
        c.HeartbeatChunk: _on_heartbeat,
        c.HeartbeatAckChunk: _on_heartbeat_ack,
        c.AbortChunk: _on_abort,
        c.ErrorChunk: _on_error,
        c.ShutdownChunk: _on_shutdown,
        c.ShutdownAckChunk: _on_shutdown_ack,
        c.ShutdownCompleteChunk: _on_shutdown_complete,
    }

    def _abort_with(self, cause: c.Cause, reason: str) -> None:
        tag = self.peer_tag
        reflected = tag == 0
        self._outbox.append(self._packet(
            [c.encode_chunk(c.AbortChunk((cause,), reflected=reflected))],
            tag if tag else self.my_tag))
        lost = AssocState.COMM_LOST if self._established_once else AssocState.CANT_STR_ASSOC
        self._close(lost, reason)

    # -----------------------------------------------------------------------------------
    # Receiving DATA (§6.2, §6.5, §6.6, §6.9)

    def _receive_data(self, chunk: c.DataChunk) -> None:
        if self.state not in _DATA_STATES:
            return
        tsn = self._unwrap(chunk.tsn, self._peer_cum)
        if tsn <= self._peer_cum or tsn in self._received_above:
            if len(self._duplicates) < MAX_DUPLICATES:
                self._duplicates.append(tsn)
            self._sack_now = True
            return
        if not chunk.payload:
            self._abort_with(c.Cause(c.CauseCode.NO_USER_DATA, struct.pack("!I", chunk.tsn)),
                             "the peer sent a DATA chunk without data")
            return
        size = len(chunk.payload)
        over = self._held + self._fragment_bytes + size > self.config.receive_buffer
        if tsn > self._peer_cum + MAX_TSN_AHEAD or (over and tsn > self._highest_received):
            self._sack_now = True  # §6.2: no room: drop it and say where we are
            return
        if chunk.immediate:
            self._sack_now = True
        self._mark_received(tsn)
        if chunk.stream >= self.inbound_streams:
            # §6.5: report it and drop the data (its TSN is still acknowledged).
            self._queue_control(c.ErrorChunk((c.Cause(
                c.CauseCode.INVALID_STREAM_IDENTIFIER, _U16_PAIR.pack(chunk.stream, 0)),)))
            return
        if chunk.beginning and chunk.end:
            self._complete(chunk.stream, chunk.ssn, chunk.ppid, chunk.unordered,
                           chunk.payload)
        else:
            self._fragments[tsn] = chunk
            self._fragment_bytes += size
            # A message completes with its last missing fragment: the E fragment or one
            # whose successor is already here; only then is a walk worth it.
            if chunk.end or tsn + 1 in self._fragments:
                self._reassemble(tsn)
            else:
                self._check_fragment_limit()

    def _mark_received(self, tsn: int) -> None:
        self._highest_received = max(self._highest_received, tsn)
        if tsn != self._peer_cum + 1:
            self._received_above.add(tsn)
            self._sack_now = True  # §6.7: a gap appeared: report it at once
            return
        self._peer_cum = tsn
        above = self._received_above
        if above:
            while self._peer_cum + 1 in above:
                self._peer_cum += 1
                above.discard(self._peer_cum)
            if above:
                self._sack_now = True

    def _reassemble(self, tsn: int) -> None:
        """Join the fragments around ``tsn`` once B..E are all here (consecutive TSNs)."""
        fragments = self._fragments
        first = tsn
        while not fragments[first].beginning:
            if first - 1 not in fragments:
                return self._check_fragment_limit()
            first -= 1
        last = tsn
        while not fragments[last].end:
            if last + 1 not in fragments:
                return self._check_fragment_limit()
            last += 1
        parts = [fragments.pop(t) for t in range(first, last + 1)]
        head = parts[0]
        data = b"".join(p.payload for p in parts)
        self._fragment_bytes -= len(data)
        if any(p.stream != head.stream or p.unordered != head.unordered for p in parts):
            self._abort_with(c.Cause(c.CauseCode.PROTOCOL_VIOLATION, b"fragments disagree"),
                             "the peer sent fragments of one message on different streams")
            return None
        self._complete(head.stream, head.ssn, head.ppid, head.unordered, data)
        return None

    def _check_fragment_limit(self) -> None:
        if self._fragment_bytes > self.config.max_message_size:
            self._abort_with(c.Cause(c.CauseCode.OUT_OF_RESOURCE),
                             f"the peer sent a message over {self.config.max_message_size}"
                             " bytes")

    def _complete(self, stream: int, ssn: int, ppid: int, unordered: bool,
                  data: bytes) -> None:
        message = UserMessage(data, self.assoc_id, stream, ppid, self.peer, unordered)
        self._held += len(data)
        if unordered:
            self._events.append(message)
            return
        expected = self._expected_ssn[stream]
        if ssn != expected:
            self._reorder[stream][ssn] = message  # §6.6: wait for the earlier ones
            return
        self._events.append(message)
        waiting = self._reorder[stream]
        expected = (expected + 1) & 0xFFFF
        while expected in waiting:
            self._events.append(waiting.pop(expected))
            expected = (expected + 1) & 0xFFFF
        self._expected_ssn[stream] = expected

    def _after_data(self, now: float) -> None:
        """§6.2: SACK every second packet with DATA, at once on gaps, else after a delay."""
        self._data_packets_unacked += 1
        if self.state == AssociationState.SHUTDOWN_SENT:
            self._queue_control(c.ShutdownChunk(self._peer_cum))  # §9.2
            self._sack_now = True
            self._t2_at = now + self._rtx.rto_s
        if self._data_packets_unacked >= 2:
            self._sack_now = True
        elif self._sack_at is None and not self._sack_now:
            self._sack_at = now + self.config.sack_delay_s

    def _rwnd(self) -> int:
        return max(0, self.config.receive_buffer - self._held - self._fragment_bytes)

    def _build_sack(self) -> bytes:
        base = self._peer_cum
        gaps: list[tuple[int, int]] = []
        for tsn in sorted(self._received_above):
            offset = tsn - base
            if gaps and gaps[-1][1] + 1 == offset:
                gaps[-1] = (gaps[-1][0], offset)
            elif len(gaps) < MAX_GAP_BLOCKS:
                gaps.append((offset, offset))
            else:
                break
        duplicates = tuple(self._duplicates)
        self._duplicates.clear()
        rwnd = self._rwnd()
        self._advertised_rwnd = rwnd
        self._data_packets_unacked = 0
        self._sack_now = False
        self._sack_at = None
        return c.encode_chunk(c.SackChunk(base, rwnd, tuple(gaps), duplicates))

    # -----------------------------------------------------------------------------------
    # Processing SACK (§6.2.1), congestion control (§7.2)

    def _process_sack(self, sack: c.SackChunk, now: float) -> None:
        cum = self._unwrap(sack.cumulative_tsn, self._cum_acked)
        if cum < self._cum_acked:
            return  # an old SACK, overtaken by a newer one
        if cum >= self._next_tsn:
            self._abort_with(c.Cause(c.CauseCode.PROTOCOL_VIOLATION, b"SACK beyond sent"),
                             "the peer acknowledged data that was never sent")
            return
        flight_before = self._flight
        newly_acked, highest_new = self._ack_cumulative(cum, now)
        gap_bytes, gap_highest = self._ack_gaps(cum, sack.gaps)
        highest_new = max(highest_new, gap_highest)
        if newly_acked or gap_bytes:
            self._errors = 0
        self._count_misses(highest_new)
        if cum > self._cum_acked:
            self._cum_acked = cum
            if self._fast_recovery_exit is not None and cum >= self._fast_recovery_exit:
                self._fast_recovery_exit = None
            self._grow_cwnd(newly_acked, flight_before)
            self._t3_at = now + self._rtx.rto_s if self._sent else None  # §6.3.2 R2/R3
        self._peer_rwnd = max(0, sack.a_rwnd - self._flight)
        if not self._sent:
            self._t3_at = None
        self._maybe_finish_shutdown(now)

    def _ack_cumulative(self, cum: int, now: float) -> tuple[int, int]:
        sent = self._sent
        count = 0
        acked_bytes = 0
        for chunk in sent:
            if chunk.tsn > cum:
                break
            count += 1
            if chunk.in_flight:
                self._flight -= chunk.size
            if not chunk.acked:
                acked_bytes += chunk.size
            if chunk.marked:
                self._marked -= 1
            self._sent_bytes -= chunk.size
        if count == 0:
            return 0, -1
        if self._rtt_tsn is not None and self._rtt_tsn <= cum:
            self._measure_rtt(now - self._rtt_sent_at)
            self._rtt_tsn = None
        del sent[:count]
        return acked_bytes, cum

    def _ack_gaps(self, cum: int, gaps: tuple[tuple[int, int], ...]) -> tuple[int, int]:
        """Mark chunks in Gap Ack Blocks; a chunk left out again was reneged on."""
        sent = self._sent
        if not sent or not (gaps or self._gap_acked):
            return 0, -1
        # Everything up to cum is gone, so sent[i] has TSN cum + 1 + i.
        acked_now: set[int] = set()
        for start, end in gaps:
            acked_now.update(range(max(start - 1, 0), min(end, len(sent))))
        self._gap_acked = bool(acked_now)
        newly = 0
        highest = -1
        for index, chunk in enumerate(sent):
            if index in acked_now:
                if not chunk.acked:
                    chunk.acked = True
                    newly += chunk.size
                    highest = chunk.tsn
                    if chunk.in_flight:
                        chunk.in_flight = False
                        self._flight -= chunk.size
                    if chunk.marked:
                        chunk.marked = False
                        self._marked -= 1
            elif chunk.acked:
                chunk.acked = False  # reneged: the T3 timer will resend it
        return newly, highest

    def _count_misses(self, highest_new: int) -> None:
        """§7.2.4: three miss reports mark a chunk for fast retransmit."""
        if highest_new < 0:
            return
        mtu = self.max_packet_size
        for chunk in self._sent:
            if chunk.tsn >= highest_new:
                break
            if chunk.acked or chunk.fast_retransmitted:
                continue
            chunk.misses += 1
            if chunk.misses >= 3:
                chunk.fast_retransmitted = True
                self._mark(chunk)
                if self._fast_recovery_exit is None:
                    self._ssthresh = max(self._cwnd // 2, 4 * mtu)
                    self._cwnd = self._ssthresh
                    self._partial_bytes_acked = 0
                    self._fast_recovery_exit = self._next_tsn - 1
                self._fast_pending = True

    def _mark(self, chunk: _Outgoing) -> None:
        if not chunk.marked:
            chunk.marked = True
            self._marked += 1
        if chunk.in_flight:
            chunk.in_flight = False
            self._flight -= chunk.size

    def _grow_cwnd(self, acked: int, flight_before: int) -> None:
        if self._fast_recovery_exit is not None or acked == 0:
            return
        mtu = self.max_packet_size
        if flight_before < self._cwnd:
            return  # §7.2.1: only when the window was in use
        if self._cwnd <= self._ssthresh:
            self._cwnd += min(acked, mtu)  # slow start
        else:
            self._partial_bytes_acked += acked  # congestion avoidance (§7.2.2)
            if self._partial_bytes_acked >= self._cwnd:
                self._partial_bytes_acked -= self._cwnd
                self._cwnd += mtu

    def _measure_rtt(self, rtt: float) -> None:
        """§6.3.1: SRTT, RTTVAR and RTO from one measurement."""
        self._rtx.sample(rtt)

    def _maybe_finish_shutdown(self, now: float) -> None:
        if self._sent or self._pending:
            return
        if self.state == AssociationState.SHUTDOWN_PENDING:
            self.state = AssociationState.SHUTDOWN_SENT
            self._queue_control(c.ShutdownChunk(self._peer_cum))
            self._t2_at = now + self._rtx.rto_s
        elif self.state == AssociationState.SHUTDOWN_RECEIVED:
            self._send_shutdown_ack(now)

    def _send_shutdown_ack(self, now: float) -> None:
        self.state = AssociationState.SHUTDOWN_ACK_SENT
        self._queue_control(c.ShutdownAckChunk())
        self._t2_at = now + self._rtx.rto_s

    # -----------------------------------------------------------------------------------
    # Timers (§6.3.3, §8.3, §9.2)

    def handle_timeout(self, now: float) -> None:
        if self._t1_at is not None and now >= self._t1_at:
            self._on_t1(now)
        if self._t2_at is not None and now >= self._t2_at:
            self._on_t2(now)
        if self._t3_at is not None and now >= self._t3_at:
            self._on_t3(now)
        if self._hb_at is not None and now >= self._hb_at:
            self._on_heartbeat_timer(now)
        if self._sack_at is not None and now >= self._sack_at:
            self._sack_at = None  # every timer that fires is cleared or moved on
            self._sack_now = self.state in _DATA_STATES
        if self.state != AssociationState.CLOSED:
            self._transmit(now)

    def _back_off(self) -> None:
        self._rtx.back_off()

    def _count_error(self, what: str) -> bool:
        """§8.1: count an unanswered retransmission; True when the peer is given up."""
        self._errors += 1
        if self._errors > self.config.association_max_retrans:
            self._close(AssocState.COMM_LOST, f"the peer stopped answering ({what} "
                        f"unanswered {self._errors} times)")
            return True
        return False

    def _on_t1(self, now: float) -> None:
        self._init_retransmits += 1
        self._back_off()
        if self._init_retransmits > self.config.max_init_retransmits:
            what = "INIT" if self.state == AssociationState.COOKIE_WAIT else "COOKIE ECHO"
            self._close(AssocState.CANT_STR_ASSOC,
                        f"no answer to {what} after {self._init_retransmits} tries")
            return
        if self.state == AssociationState.COOKIE_WAIT:
            self._send_init(now)
        elif self.state == AssociationState.COOKIE_ECHOED:
            self._send_cookie_echo(now)
        else:
            self._t1_at = None

    def _on_t2(self, now: float) -> None:
        self._back_off()
        if self._count_error("SHUTDOWN"):
            return
        if self.state == AssociationState.SHUTDOWN_SENT:
            self._queue_control(c.ShutdownChunk(self._peer_cum))
        elif self.state == AssociationState.SHUTDOWN_ACK_SENT:
            self._queue_control(c.ShutdownAckChunk())
        else:
            self._t2_at = None
            return
        self._t2_at = now + self._rtx.rto_s

    def _on_t3(self, now: float) -> None:
        mtu = self.max_packet_size
        self._ssthresh = max(self._cwnd // 2, 4 * mtu)  # §7.2.3
        self._cwnd = mtu
        self._partial_bytes_acked = 0
        self._fast_recovery_exit = None
        self._back_off()
        if self._count_error("data"):
            return
        for chunk in self._sent:  # §6.3.3 E3
            if not chunk.acked:
                self._mark(chunk)
        self._rtt_tsn = None
        self._t3_at = now + self._rtx.rto_s

    def _heartbeat_interval(self) -> float:
        jitter = int.from_bytes(self._rng(2), "big") / 65535 - 0.5  # §8.3: ±50% of RTO
        return self.config.hb_interval_s + self._rtx.rto_s * (1 + jitter)

    def _on_heartbeat_timer(self, now: float) -> None:
        if self.state not in _DATA_STATES:
            self._hb_at = None
            return
        if self._hb_nonce is not None:  # the last one went unanswered
            self._back_off()
            if self._count_error("HEARTBEAT"):
                return
        if self._sent:
            # Data in flight probes the path already (T3 counts its errors).
            self._hb_nonce = None
            self._hb_at = now + self._heartbeat_interval()
            return
        self._hb_nonce = int.from_bytes(self._rng(8), "big")
        self._queue_control(c.HeartbeatChunk(_HEARTBEAT_INFO.pack(now, self._hb_nonce)))
        self._hb_at = now + self._rtx.rto_s  # unanswered by then counts as an error

    # -----------------------------------------------------------------------------------
    # Sending: control chunks, SACK, retransmissions, then new DATA (§6.1, §6.10)

    def _queue_control(self, chunk: c.Chunk) -> None:
        self._control.append(c.encode_chunk(chunk))

    def _packet(self, chunks: list[bytes], tag: int | None = None) -> bytes:
        return c.encode_packet(self.local_port, self.peer_port,
                               self.peer_tag if tag is None else tag, chunks)

    def _transmit(self, now: float) -> None:
        if self.state in (AssociationState.CLOSED, AssociationState.COOKIE_WAIT):
            self._control.clear()
            return
        builder = _PacketBuilder(self, now)
        for chunk in self._control:
            builder.add_control(chunk)
        self._control.clear()
        if self.state in _DATA_STATES:
            if self._marked:
                self._send_retransmissions(builder, now)
            if self._pending and self.state in _NEW_DATA_STATES:
                self._send_new_data(builder, now)
            if self._sack_now or (self._sack_at is not None and builder.has_data):
                builder.add_control_first(self._build_sack())
            self._maybe_finish_shutdown(now)
            for chunk in self._control:  # a SHUTDOWN that the data just cleared the way for
                builder.add_control(chunk)
            self._control.clear()
        builder.finish()
        if builder.has_data and self._t3_at is None:
            self._t3_at = now + self._rtx.rto_s  # §6.3.2 R1

    def _send_retransmissions(self, builder: _PacketBuilder, now: float) -> None:
        # §7.2.4: the first packet of a fast retransmission ignores cwnd.
        ignore_cwnd = self._fast_pending
        self._fast_pending = False
        for chunk in self._sent:
            if not self._marked:
                break
            if not chunk.marked:
                continue
            if self._flight >= self._cwnd and not (ignore_cwnd and builder.packets == 0):
                break
            chunk.marked = False
            self._marked -= 1
            chunk.in_flight = True
            chunk.sent_count += 1
            chunk.misses = 0
            self._flight += chunk.size
            builder.add_data(chunk.header, chunk.payload)
            if chunk.tsn == self._rtt_tsn:
                self._rtt_tsn = None  # Karn: no RTT from a retransmitted chunk

    def _send_new_data(self, builder: _PacketBuilder, now: float) -> None:
        max_payload = self._max_payload
        burst_end = builder.packets + self.config.max_burst
        while self._pending and self._flight < self._cwnd and builder.packets < burst_end:
            message = self._pending[0]
            remaining = len(message.data) - message.offset
            size = min(remaining, builder.room(), max_payload)
            if size < remaining:
                size &= ~3  # keep middle fragments free of padding
            if size < min(remaining, max_payload // 4):
                builder.close_packet()  # too little room left: start a fresh packet
                continue
            if self._flight and size > self._peer_rwnd:  # §6.1 A
                size = self._peer_rwnd & ~3
                if size < min(remaining, max_payload // 4):
                    break
            self._send_fragment(message, size, builder, now)

    def _send_fragment(self, message: _Pending, size: int, builder: _PacketBuilder,
                       now: float) -> None:
        start = message.offset
        payload = message.data[start:start + size]
        message.offset += size
        end = message.offset == len(message.data)
        flags = ((c.FLAG_END if end else 0) | (c.FLAG_BEGINNING if start == 0 else 0)
                 | (c.FLAG_UNORDERED if message.unordered else 0))
        tsn = self._next_tsn
        self._next_tsn += 1
        header = c.DATA_HEADER.pack(c.ChunkType.DATA, flags, c.DATA_HEADER_SIZE + size,
                                    tsn & 0xFFFFFFFF, message.stream, message.ssn,
                                    message.ppid)
        self._sent.append(_Outgoing(tsn, header, payload, now))
        self._sent_bytes += size
        self._flight += size
        self._peer_rwnd = max(0, self._peer_rwnd - size)
        self._pending_bytes -= size
        if end:
            self._pending.popleft()
        if self._rtt_tsn is None:
            self._rtt_tsn = tsn
            self._rtt_sent_at = now
        builder.add_data(header, payload)

    # -----------------------------------------------------------------------------------
    # Helpers

    def _random_tag(self) -> int:
        while True:
            tag = int.from_bytes(self._rng(4), "big")
            if tag:
                return tag

    @staticmethod
    def _unwrap(wire: int, reference: int) -> int:
        """The unbounded TSN nearest ``reference`` whose low 32 bits are ``wire``."""
        return unwrap(wire, reference, 32)


class _PacketBuilder:
    """Packs chunks into packets of at most the path's size, CRC computed per packet."""

    __slots__ = ("_assoc", "_parts", "_size", "has_data", "packets")

    def __init__(self, assoc: Association, now: float) -> None:
        self._assoc = assoc
        self._parts: list[bytes | memoryview] = []
        self._size = c.COMMON_HEADER_SIZE
        self.packets = 0
        self.has_data = False

    def room(self) -> int:
        """Payload bytes that still fit in the current packet after a DATA header."""
        return self._assoc.max_packet_size - self._size - c.DATA_HEADER_SIZE

    def _make_room(self, length: int) -> None:
        if self._size + length > self._assoc.max_packet_size and self._parts:
            self.close_packet()

    def add_control(self, chunk: bytes) -> None:
        self._make_room(len(chunk))
        self._parts.append(chunk)
        self._size += len(chunk)

    def add_control_first(self, chunk: bytes) -> None:
        """A SACK goes ahead of the DATA it would otherwise wait behind."""
        if self.packets and not self._parts:
            self.add_control(chunk)
            return
        if self._size + len(chunk) > self._assoc.max_packet_size:
            self.close_packet()
            self.add_control(chunk)
            return
        self._parts.insert(0, chunk)
        self._size += len(chunk)

    def add_data(self, header: bytes, payload: memoryview) -> None:
        length = c.DATA_HEADER_SIZE + len(payload)
        self._make_room(length)
        self._parts.append(header)
        self._parts.append(payload)
        padding = -len(payload) & 3
        if padding:
            self._parts.append(bytes(padding))
        self._size += length + padding
        self.has_data = True

    def close_packet(self) -> None:
        if not self._parts:
            return
        assoc = self._assoc
        tag = assoc.peer_tag
        header = c.COMMON_HEADER.pack(assoc.local_port, assoc.peer_port, tag, 0)
        crc = crc32c(header, 0)
        for part in self._parts:
            crc = crc32c(part, crc)
        header = header[:8] + c.CHECKSUM.pack(crc)
        assoc._outbox.append(b"".join([header, *self._parts]))
        self._parts = []
        self._size = c.COMMON_HEADER_SIZE
        self.packets += 1

    def finish(self) -> None:
        self.close_packet()


def _inspect_params(params: tuple[c.Param, ...]) -> tuple[bytes | None, list[c.Cause], bytes]:
    """INIT ACK parameters: the cookie, fatal problems, and unrecognized ones to report."""
    cookie = None
    problems: list[c.Cause] = []
    unrecognized = b""
    for param in params:
        if param.type == c.ParamType.STATE_COOKIE:
            cookie = param.value
        elif param.type == c.ParamType.HOST_NAME_ADDRESS:
            problems.append(c.Cause(c.CauseCode.UNRESOLVABLE_ADDRESS, c.encode_param(param)))
        elif param.type in KNOWN_PARAMS:
            continue
        else:
            if param.type & 0x4000:
                unrecognized += c.encode_param(param)
            if not param.type & 0x8000:
                break  # §3.2.1: stop processing this chunk's parameters
    return cookie, problems, unrecognized


KNOWN_PARAMS = frozenset({c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS,
                          c.ParamType.STATE_COOKIE, c.ParamType.UNRECOGNIZED_PARAMETER,
                          c.ParamType.COOKIE_PRESERVATIVE,
                          c.ParamType.SUPPORTED_ADDRESS_TYPES, c.ParamType.HEARTBEAT_INFO})


"""One SCTP association as a pure state machine (RFC 9260).

Packets and ``now`` go in; encoded packets, ``UserMessage`` / ``AssociationChange``
events and one deadline come out.  The ``Stack`` (``stack.py``) owns the port, the
stateless half of the handshake and the choice of association; everything from the first
INIT we send, or the first valid COOKIE ECHO we receive, to the last SHUTDOWN COMPLETE or
ABORT is here.

This module keeps the states of §4 (``states.py``) and what its parts share: the tags
and streams, adopting a cookie, abort, the error count (§8.1), the timers and packet
building.  The parts it is composed of do the rest: ``handshake.Handshake`` (INIT to
ESTABLISHED, T1-init, the restarts and collisions of §5.2), ``shutdown.Shutdown`` (§9.2,
T2-shutdown), ``heartbeat.Heartbeat`` (§8.3), ``sending.Sender`` (queue, chunks in
flight, packets), ``receiving.Receiver`` (TSNs, reassembly, ordering, SACK content) and
``congestion.CongestionControl`` (cwnd, RTO, T3-rtx).  The first three drive the
association back through a protocol of their own (``HandshakeHost``, ``ShutdownHost``,
``HeartbeatHost``).  Each chunk goes to its handler, the association's or a part's,
through one table of (state, chunk type), ``_CHUNK_HANDLERS``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar, cast

from sockferry.addresses import SockAddr, format_sockaddr
from sockferry.errors import NetworkError
from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.congestion import CongestionControl
from sockferry.sctp.cookie import CookieState
from sockferry.sctp.endpoint import AssociationChange, AssocId, AssocState, UserMessage
from sockferry.sctp.handshake import Handshake
from sockferry.sctp.heartbeat import Heartbeat
from sockferry.sctp.receiving import Receiver
from sockferry.sctp.sending import PacketBuilder, Sender
from sockferry.sctp.shutdown import Shutdown
from sockferry.sctp.states import (
    DATA_STATES,
    NEW_DATA_STATES,
    OPEN_STATES,
    SENDING_STATES,
    AssociationState,
)

log = logging.getLogger("sockferry.sctp")

Event = UserMessage | AssociationChange
Random = Callable[[int], bytes]

# Below this many bytes in flight, a send() transmits at once; above, SACKs clock it.
APP_LIMITED_FLIGHT = 4 * 1500

S = AssociationState
_CLOSED = S.CLOSED
_ALONE = frozenset({c.InitChunk, c.InitAckChunk, c.ShutdownCompleteChunk})


class Association:
    """An association's state, tags and timers, composed of its handshake, shutdown,
    heartbeat, send, receive and congestion parts.  Besides the stack's interface it
    offers its parts what ``HandshakeHost``, ``ShutdownHost`` and ``HeartbeatHost``
    name."""

    def __init__(self, assoc_id: AssocId, peer: SockAddr, *, local_port: int,
                 peer_port: int, config: Config, rng: Random, max_packet_size: int) -> None:
        self.assoc_id = assoc_id
        self.peer = peer
        self.local_port = local_port
        self.peer_port = peer_port
        self.config = config
        self.enter(S.CLOSED)
        self.my_tag = 0
        self.peer_tag = 0
        self.my_initial_tsn = 0
        self.outbound_streams = 0
        self.inbound_streams = 0
        self._events: deque[Event] = deque()
        self._outbox: list[bytes] = []
        self._control: list[bytes] = []
        # The largest SCTP packet the path carries (its MTU less IP and UDP headers).
        self.max_packet_size = max(max_packet_size, 508)
        self.congestion = CongestionControl(
            rto_initial_s=config.rto_initial_s, rto_min_s=config.rto_min_s,
            rto_max_s=config.rto_max_s, mtu=self.max_packet_size)
        self.reset_transfer_state(0, 0, 0)
        rtx = self.congestion.rtx
        self._heartbeat = Heartbeat(self, config.hb_interval_s, rtx, rng)
        self._handshake = Handshake(self, config, rtx, self._heartbeat, rng)
        self._shutdown = Shutdown(self, rtx)
        self.error_count = 0  # §8.1: consecutive unanswered retransmissions and heartbeats
        self._data_in_packet = False
        self._established_once = False

    # -----------------------------------------------------------------------------------
    # State, set-up and adopting a cookie (what the handshake drives)

    def enter(self, state: AssociationState) -> None:
        self.state = state
        self._handlers = _HANDLERS_BY_STATE[state]

    def reset_transfer_state(self, my_tsn: int, peer_tsn: int, peer_rwnd: int) -> None:
        config = self.config
        # Payload per chunk, kept a multiple of 4 so that no padding is wasted.
        max_payload = (self.max_packet_size - c.COMMON_HEADER_SIZE - c.DATA_HEADER_SIZE) & ~3
        self.sender = Sender(my_tsn, peer_rwnd, outbound_streams=self.outbound_streams,
                             max_payload=max_payload, max_burst=config.max_burst,
                             measure_rtt=self.congestion.rtx.sample)
        self.receiver = Receiver(self._events, self.assoc_id, self.peer, initial_tsn=peer_tsn,
                                 inbound_streams=self.inbound_streams,
                                 receive_buffer=config.receive_buffer,
                                 max_message_size=config.max_message_size)
        self.congestion.reset(peer_rwnd)

    def adopt(self, cookie: CookieState, now: float) -> None:
        """The parameters of a verified cookie, on a fresh transfer state (§5.1 D, §5.2)."""
        self.my_tag = cookie.my_tag
        self.peer_tag = cookie.peer_tag
        self.outbound_streams = cookie.outbound_streams
        self.inbound_streams = cookie.inbound_streams
        self.reset_transfer_state(cookie.my_initial_tsn, cookie.peer_initial_tsn,
                                  cookie.peer_a_rwnd)
        self.error_count = 0
        self._handshake.t1_at = self._shutdown.t2_at = self.congestion.t3_at = None
        self._heartbeat.schedule(now, self.congestion.rtx.rto_s)

    def establish(self, change: AssocState) -> None:
        self.enter(S.ESTABLISHED)
        self._handshake.t1_at = None
        self._established_once = True
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams))

    # -----------------------------------------------------------------------------------
    # Public interface used by the stack and the driver

    def start(self, now: float) -> None:
        """Send INIT (§5.1 A) and wait for INIT ACK in COOKIE-WAIT."""
        self._handshake.start(now)

    def accept_cookie(self, cookie: CookieState, now: float) -> None:
        """Create the association from a valid COOKIE ECHO (§5.1 D) and go ESTABLISHED."""
        self._handshake.accept_cookie(cookie, now)

    def tie_tags(self) -> tuple[int, int]:
        """(local, peer) Tie-Tags to put in a cookie answering an unexpected INIT."""
        return self._handshake.tie_tags()

    def handle_cookie_echo(self, cookie: CookieState, now: float) -> None:
        """A valid COOKIE ECHO for this association: the table of §5.2.4."""
        self._handshake.cookie_echo(cookie, now)

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    @property
    def buffered_amount(self) -> int:
        """Bytes queued or in flight, not yet acknowledged by the peer."""
        return self.sender.buffered_amount

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def packets_to_send(self) -> list[bytes]:
        packets, self._outbox = self._outbox, []
        return packets

    def next_deadline(self) -> float | None:
        times = [t for t in (self._handshake.t1_at, self._shutdown.t2_at,
                             self.congestion.t3_at, self.receiver.sack_at, self._heartbeat.at)
                 if t is not None]
        return min(times) if times else None

    def send(self, data: bytes, stream: int, ppid: int, unordered: bool, now: float) -> None:
        """Queue one message (sent whole, in order per stream unless ``unordered``).

        Arguments out of range are a caller's bug (``LocalProtocolError``); an
        association that can no longer send is ``NetworkError``: the peer may have
        ended it at any moment."""
        if self.state not in SENDING_STATES:
            raise NetworkError(f"association {self.assoc_id} with "
                               f"{format_sockaddr(self.peer)} is {self.state.value.lower()}"
                               " — no more messages can be sent on it")
        self.sender.enqueue_message(
            data, stream, ppid, unordered, max_message_size=self.config.max_message_size,
            streams=self.outbound_streams or self.config.streams.outbound)
        # With little in flight a new message goes out at once (no Nagle delay); in bulk
        # the SACKs clock the sending, so that a burst of writes does not become a burst
        # of packets that a receiver's small UDP buffer would drop (§6.1 D, Max.Burst).
        if self.state is S.ESTABLISHED and self.sender.flight < APP_LIMITED_FLIGHT:
            self.transmit(now)

    def release(self, nbytes: int, now: float) -> None:
        """The application consumed ``nbytes`` of delivered messages: reopen the window."""
        threshold = max(2 * self.max_packet_size, self.config.receive_buffer // 4)
        if self.receiver.release(nbytes, threshold) and self.state in DATA_STATES:
            self.receiver.sack_now = True  # §6.2: tell a blocked sender the window opened
            self.transmit(now)

    def shutdown(self, now: float) -> None:
        """Graceful close (§9.2): send what is queued, then SHUTDOWN."""
        self._shutdown.start(now)

    def resend_shutdown_ack(self, now: float) -> None:
        """§9.2: in SHUTDOWN-ACK-SENT an INIT is answered with the SHUTDOWN ACK again."""
        self._shutdown.resend_ack(now)

    def unreachable(self, quoted: bytes, reason: str) -> bool:
        """An ICMP error quoted ``quoted``, a packet sent to this peer: a setup it
        belongs to ends (``Handshake.unreachable``).  True if it closed."""
        return self._handshake.unreachable(quoted, reason)

    def abort(self, reason: str, now: float) -> None:
        """Send ABORT with a User-Initiated Abort cause (§9.1) and close."""
        if self.state is _CLOSED:
            return
        cause = c.Cause(c.CauseCode.USER_INITIATED_ABORT, reason.encode()[:256])
        if self.state is not S.COOKIE_WAIT:
            self.send_packet([c.encode_chunk(c.AbortChunk((cause,)))], self.peer_tag)
        self.close(self._lost(), f"aborted locally: {reason}" if reason
                   else "aborted locally")

    def abort_with(self, cause: c.Cause, reason: str) -> None:
        tag = self.peer_tag
        self.send_packet([c.encode_chunk(c.AbortChunk((cause,), reflected=tag == 0))],
                         tag if tag else self.my_tag)
        self.close(self._lost(), reason)

    def _lost(self) -> AssocState:
        return AssocState.COMM_LOST if self._established_once else AssocState.CANT_STR_ASSOC

    def close(self, change: AssocState, reason: str = "") -> None:
        self.enter(S.CLOSED)
        self._handshake.t1_at = self._shutdown.t2_at = None
        self.congestion.t3_at = self._heartbeat.at = None
        self.receiver.sack_at = None
        self.sender.clear()
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams,
                                              reason))

    def flush(self, now: float) -> None:
        """Build whatever packets are due now."""
        self.transmit(now)

    # -----------------------------------------------------------------------------------
    # Incoming packets

    def receive_packet(self, packet: c.Packet, now: float) -> bool:
        """A decoded packet for this association; False when its tag refuses it (§8.5)."""
        if not self._tag_acceptable(packet):
            return False  # a blind or stale packet; say nothing
        self._data_in_packet = False
        for chunk in packet.chunks:
            if self.state is _CLOSED:
                break
            # Looked up per chunk: a chunk may change the state for the next one.
            handler = self._handlers.get(type(chunk))
            if handler is not None:
                handler(self, chunk, now)
            elif isinstance(chunk, c.UnknownChunk) and not self._unknown_chunk(chunk):
                break
            # Otherwise a known chunk out of place in this state: discarded.
        if self._data_in_packet and self.state in DATA_STATES:
            if self.state is S.SHUTDOWN_SENT:
                self._shutdown.answer_data(now)  # §9.2
            self.receiver.after_packet(now, self.config.sack_delay_s)
        self.transmit(now)
        return True

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
            self.queue_control(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_CHUNK_TYPE,
                                                      body[:512]),)))
        return bool(chunk.type & 0x80)

    def _on_data(self, chunk: c.DataChunk, now: float) -> None:
        self._data_in_packet = True
        problem = self.receiver.receive_data(chunk)
        if problem is None:
            return
        if isinstance(problem, c.Violation):
            self.abort_with(problem.cause, problem.reason)
        else:
            self.queue_control(c.ErrorChunk((problem,)))

    def _on_data_out_of_place(self, chunk: c.DataChunk, now: float) -> None:
        # Dropped; the packet still counts as one with DATA should it take us into a
        # state that accepts DATA (a COOKIE ACK bundled after it).
        self._data_in_packet = True

    def on_sack(self, chunk: c.SackChunk, now: float) -> None:
        progress = self.sender.process_sack(chunk, self.congestion, now)
        if isinstance(progress, c.Violation):
            self.abort_with(progress.cause, progress.reason)
            return
        if progress:
            self.error_count = 0
        self._shutdown.maybe_finish(now)

    def _on_abort(self, chunk: c.AbortChunk, now: float) -> None:
        self.close(self._lost(), f"the peer aborted the association: "
                   f"{c.cause_text(chunk.causes)}")

    def on_error(self, chunk: c.ErrorChunk, now: float) -> None:
        log.info("association %d: %s reported an error: %s", self.assoc_id,
                 format_sockaddr(self.peer), c.cause_text(chunk.causes))

    # -----------------------------------------------------------------------------------
    # Timers (§6.3.3; T1-init, T2-shutdown and heartbeats are their parts')

    def handle_timeout(self, now: float) -> None:
        handshake, shutdown = self._handshake, self._shutdown
        if handshake.t1_at is not None and now >= handshake.t1_at:
            handshake.on_t1(now)
        if shutdown.t2_at is not None and now >= shutdown.t2_at:
            shutdown.on_t2(now)
        t3_at = self.congestion.t3_at
        if t3_at is not None and now >= t3_at:
            self._on_t3(now)
        heartbeat = self._heartbeat
        if heartbeat.at is not None and now >= heartbeat.at:
            heartbeat.on_timer(now)
        receiver = self.receiver
        if receiver.sack_at is not None and now >= receiver.sack_at:
            receiver.sack_at = None  # every timer that fires is cleared or moved on
            receiver.sack_now = self.state in DATA_STATES
        if self.state is not _CLOSED:
            self.transmit(now)

    def count_error(self, what: str) -> bool:
        """§8.1: count an unanswered retransmission; True when the peer is given up."""
        self.error_count += 1
        if self.error_count > self.config.association_max_retrans:
            self.close(AssocState.COMM_LOST, f"the peer stopped answering ({what} "
                       f"unanswered {self.error_count} times)")
            return True
        return False

    def _on_t3(self, now: float) -> None:
        congestion = self.congestion
        congestion.on_t3_expired()
        if self.count_error("data"):
            return
        self.sender.mark_all_unacked()
        congestion.t3_at = now + congestion.rtx.rto_s

    # -----------------------------------------------------------------------------------
    # Sending: control chunks, SACK, retransmissions, then new DATA (§6.1, §6.10)

    def queue_control(self, chunk: c.Chunk) -> None:
        self._control.append(c.encode_chunk(chunk))

    def send_packet(self, chunks: list[bytes], tag: int | None = None) -> None:
        """One packet of encoded chunks, now, ahead of what is queued."""
        self._outbox.append(c.encode_packet(self.local_port, self.peer_port,
                                            self.peer_tag if tag is None else tag, chunks))

    def transmit(self, now: float) -> None:
        state = self.state
        if state is _CLOSED or state is S.COOKIE_WAIT:
            self._control.clear()
            return
        builder = PacketBuilder(self._outbox, self.local_port, self.peer_port, self.peer_tag,
                                self.max_packet_size)
        for chunk in self._control:
            builder.add_control(chunk)
        self._control.clear()
        congestion = self.congestion
        if state in DATA_STATES:
            sender = self.sender
            if sender.marked:
                fast = congestion.fast_pending
                congestion.fast_pending = False
                sender.send_retransmissions(builder, congestion.cwnd, fast)
            if sender.pending and state in NEW_DATA_STATES:
                sender.send_new_data(builder, congestion.cwnd, now)
            receiver = self.receiver
            if receiver.sack_now or (receiver.sack_at is not None and builder.has_data):
                builder.add_control_first(receiver.build_sack())
            self._shutdown.maybe_finish(now)
            for chunk in self._control:  # a SHUTDOWN that the data just cleared the way for
                builder.add_control(chunk)
            self._control.clear()
        builder.close_packet()
        if builder.has_data and congestion.t3_at is None:
            congestion.t3_at = now + congestion.rtx.rto_s  # §6.3.2 R1


# ---------------------------------------------------------------------------------------
# Chunk dispatch: (state, chunk type) -> handler.  A pair missing here is a chunk out of
# place in that state and is discarded (§5.2.3, §5.2.5, §6, §9.2); INIT and COOKIE ECHO
# are the stack's, never an association's; unrecognized types follow §3.2.

ChunkHandler = Callable[[Association, c.Chunk, float], None]
_Chunk = TypeVar("_Chunk", bound=c.Chunk)
_Part = TypeVar("_Part")


def _rows(states: Iterable[AssociationState], chunk_type: type[_Chunk],
          handler: Callable[[Association, _Chunk, float], None],
          ) -> dict[tuple[AssociationState, type[c.Chunk]], ChunkHandler]:
    # The key's chunk type is the one the handler takes: the only place that is widened.
    key_type = cast("type[c.Chunk]", chunk_type)
    return {(state, key_type): cast(ChunkHandler, handler) for state in states}


def _via(part: Callable[[Association], _Part], handler: Callable[[_Part, _Chunk, float], None],
         ) -> Callable[[Association, _Chunk, float], None]:
    """A part's handler, called on the part that the association holds."""
    def call(assoc: Association, chunk: _Chunk, now: float) -> None:
        handler(part(assoc), chunk, now)
    return call


def _handshake(assoc: Association) -> Handshake:
    return assoc._handshake


def _shutdown(assoc: Association) -> Shutdown:
    return assoc._shutdown


def _heartbeat(assoc: Association) -> Heartbeat:
    return assoc._heartbeat


A, H, D, B = Association, Handshake, Shutdown, Heartbeat
_CHUNK_HANDLERS: dict[tuple[AssociationState, type[c.Chunk]], ChunkHandler] = {
    **_rows(DATA_STATES, c.DataChunk, A._on_data),
    **_rows(OPEN_STATES - DATA_STATES, c.DataChunk, A._on_data_out_of_place),
    **_rows([S.COOKIE_WAIT], c.InitAckChunk, _via(_handshake, H.on_init_ack)),
    **_rows([S.COOKIE_ECHOED], c.CookieAckChunk, _via(_handshake, H.on_cookie_ack)),
    **_rows(DATA_STATES, c.SackChunk, A.on_sack),
    **_rows(OPEN_STATES, c.HeartbeatChunk, _via(_heartbeat, B.on_heartbeat)),
    **_rows(OPEN_STATES, c.HeartbeatAckChunk, _via(_heartbeat, B.on_heartbeat_ack)),
    **_rows(OPEN_STATES, c.AbortChunk, A._on_abort),
    **_rows(OPEN_STATES - {S.COOKIE_ECHOED}, c.ErrorChunk, A.on_error),
    **_rows([S.COOKIE_ECHOED], c.ErrorChunk, _via(_handshake, H.on_error)),
    **_rows(DATA_STATES | {S.SHUTDOWN_ACK_SENT}, c.ShutdownChunk,
            _via(_shutdown, D.on_shutdown)),
    **_rows([S.SHUTDOWN_SENT, S.SHUTDOWN_ACK_SENT], c.ShutdownAckChunk,
            _via(_shutdown, D.on_shutdown_ack)),
    **_rows([S.SHUTDOWN_ACK_SENT], c.ShutdownCompleteChunk,
            _via(_shutdown, D.on_shutdown_complete)),
}
# The same table by state, so that a chunk costs one dict lookup on the hot path.
_HANDLERS_BY_STATE: dict[AssociationState, dict[type[c.Chunk], ChunkHandler]] = {
    state: {chunk_type: handler for (in_state, chunk_type), handler in _CHUNK_HANDLERS.items()
            if in_state is state}
    for state in AssociationState
}

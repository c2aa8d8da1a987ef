"""One SCTP association as a pure state machine (RFC 9260).

Packets and ``now`` go in; encoded packets, ``UserMessage`` / ``AssociationChange``
events and one deadline come out.  The ``Stack`` (``stack.py``) owns the port, the
stateless half of the handshake and the choice of association; everything from the first
INIT we send, or the first valid COOKIE ECHO we receive, to the last SHUTDOWN COMPLETE or
ABORT is here.

This module keeps the states of §4 and what moves between them: the tail of the
handshake, collisions and restarts, shutdown, abort, heartbeats and the error count.
The parts it is composed of do the data transfer: ``sending.Sender`` (queue, chunks in
flight, packets), ``receiving.Receiver`` (TSNs, reassembly, ordering, SACK content) and
``congestion.CongestionControl`` (cwnd, RTO, T3-rtx).  Each chunk goes to its handler
through one table of (state, chunk type), ``_CHUNK_HANDLERS``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TypeVar, cast

from sockferry.addresses import SockAddr, format_sockaddr
from sockferry.errors import NetworkError
from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.congestion import CongestionControl
from sockferry.sctp.cookie import CookieState
from sockferry.sctp.endpoint import AssociationChange, AssocId, AssocState, UserMessage
from sockferry.sctp.handshake import Initiation
from sockferry.sctp.heartbeat import Heartbeat
from sockferry.sctp.receiving import Receiver
from sockferry.sctp.sending import PacketBuilder, Sender
from sockferry.serial import unwrap

log = logging.getLogger("sockferry.sctp")

Event = UserMessage | AssociationChange
Random = Callable[[int], bytes]

# Below this many bytes in flight, a send() transmits at once; above, SACKs clock it.
APP_LIMITED_FLIGHT = 4 * 1500


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


S = AssociationState
_CLOSED = S.CLOSED
_ALONE = frozenset({c.InitChunk, c.InitAckChunk, c.ShutdownCompleteChunk})
_SETUP_STATES = frozenset({S.COOKIE_WAIT, S.COOKIE_ECHOED})
_SENDING_STATES = frozenset({S.COOKIE_WAIT, S.COOKIE_ECHOED, S.ESTABLISHED})
# DATA is accepted and SACKs exchanged (§6)
_DATA_STATES = frozenset({S.ESTABLISHED, S.SHUTDOWN_PENDING, S.SHUTDOWN_SENT,
                          S.SHUTDOWN_RECEIVED})
# new DATA may still go out (§9.2: not after our SHUTDOWN)
_NEW_DATA_STATES = frozenset({S.ESTABLISHED, S.SHUTDOWN_PENDING, S.SHUTDOWN_RECEIVED})
_OPEN_STATES = frozenset(S) - {S.CLOSED}



class Association:
    """An association's state and timers, composed of its send, receive and congestion
    parts."""

    def __init__(self, assoc_id: AssocId, peer: SockAddr, *, local_port: int,
                 peer_port: int, config: Config, rng: Random, max_packet_size: int) -> None:
        self.assoc_id = assoc_id
        self.peer = peer
        self.local_port = local_port
        self.peer_port = peer_port
        self.config = config
        self._rng = rng
        self._enter(S.CLOSED)
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
        self._reset_transfer_state(0, 0, 0)
        self._initiation = Initiation(config)
        self._heartbeat = Heartbeat(config.hb_interval_s, rng)
        self._errors = 0  # §8.1: consecutive unanswered retransmissions and heartbeats
        self._data_in_packet = False
        self._t1_at: float | None = None  # T1-init: INIT or COOKIE ECHO unanswered
        self._t2_at: float | None = None  # T2-shutdown
        self._established_once = False

    # -----------------------------------------------------------------------------------
    # Set-up

    def _enter(self, state: AssociationState) -> None:
        self.state = state
        self._handlers = _HANDLERS_BY_STATE[state]

    def _reset_transfer_state(self, my_tsn: int, peer_tsn: int, peer_rwnd: int) -> None:
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

    def start(self, now: float) -> None:
        """Send INIT (§5.1 A) and wait for INIT ACK in COOKIE-WAIT."""
        self.my_tag = self._random_tag()
        self.my_initial_tsn = self._random_tag()
        self._enter(S.COOKIE_WAIT)
        self._reset_transfer_state(self.my_initial_tsn, 0, 0)
        self._initiation.begin(self.my_tag, self.my_initial_tsn)
        self._send_init(now)

    def _send_init(self, now: float) -> None:
        # §8.5.1: an INIT goes out with verification tag 0, alone in its packet.
        self._outbox.append(c.encode_packet(self.local_port, self.peer_port, 0,
                                            [self._initiation.init_chunk]))
        self._t1_at = now + self.congestion.rtx.rto_s

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
        self._t1_at = self._t2_at = self.congestion.t3_at = None
        self._heartbeat.schedule(now, self.congestion.rtx.rto_s)

    def _establish(self, change: AssocState) -> None:
        self._enter(S.ESTABLISHED)
        self._t1_at = None
        self._established_once = True
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams))

    # -----------------------------------------------------------------------------------
    # Collisions and restarts (§5.2), driven by the stack once the cookie is verified

    def tie_tags(self) -> tuple[int, int]:
        """(local, peer) Tie-Tags to put in a cookie answering an unexpected INIT."""
        if self.state == S.COOKIE_WAIT:
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
        if self.state == S.SHUTDOWN_ACK_SENT:
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
        pending = list(self.sender.pending)
        self._adopt(cookie, now)
        # keep what the user queued while we were connecting
        self.sender.requeue(pending, self.outbound_streams)
        self._queue_control(c.CookieAckChunk())
        if not was_up:
            self._establish(AssocState.COMM_UP)

    # -----------------------------------------------------------------------------------
    # Public interface used by the stack and the driver

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
        times = [t for t in (self._t1_at, self._t2_at, self.congestion.t3_at,
                             self.receiver.sack_at, self._heartbeat.at) if t is not None]
        return min(times) if times else None

    def send(self, data: bytes, stream: int, ppid: int, unordered: bool, now: float) -> None:
        """Queue one message (sent whole, in order per stream unless ``unordered``).

        Arguments out of range are a caller's bug (``LocalProtocolError``); an
        association that can no longer send is ``NetworkError``: the peer may have
        ended it at any moment."""
        if self.state not in _SENDING_STATES:
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
            self._transmit(now)

    def release(self, nbytes: int, now: float) -> None:
        """The application consumed ``nbytes`` of delivered messages: reopen the window."""
        threshold = max(2 * self.max_packet_size, self.config.receive_buffer // 4)
        if self.receiver.release(nbytes, threshold) and self.state in _DATA_STATES:
            self.receiver.sack_now = True  # §6.2: tell a blocked sender the window opened
            self._transmit(now)

    def shutdown(self, now: float) -> None:
        """Graceful close (§9.2): send what is queued, then SHUTDOWN."""
        if self.state in _SETUP_STATES:
            self.abort("shut down before the association was up", now)
            return
        if self.state is not S.ESTABLISHED:
            return
        self._enter(S.SHUTDOWN_PENDING)
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
        if self.state is _CLOSED:
            return
        cause = c.Cause(c.CauseCode.USER_INITIATED_ABORT, reason.encode()[:256])
        if self.state is not S.COOKIE_WAIT:
            self._outbox.append(self._packet([c.encode_chunk(c.AbortChunk((cause,)))],
                                             self.peer_tag))
        self._close(self._lost(), f"aborted locally: {reason}" if reason
                    else "aborted locally")

    def _lost(self) -> AssocState:
        return AssocState.COMM_LOST if self._established_once else AssocState.CANT_STR_ASSOC

    def _close(self, change: AssocState, reason: str = "") -> None:
        self._enter(S.CLOSED)
        self._t1_at = self._t2_at = self.congestion.t3_at = self._heartbeat.at = None
        self.receiver.sack_at = None
        self.sender.clear()
        self._events.append(AssociationChange(change, self.assoc_id, self.peer,
                                              self.outbound_streams, self.inbound_streams,
                                              reason))

    def flush(self, now: float) -> None:
        """Build whatever packets are due now."""
        self._transmit(now)

    def resend_shutdown_ack(self, now: float) -> None:
        """§9.2: in SHUTDOWN-ACK-SENT an INIT is answered with the SHUTDOWN ACK again."""
        if self.state is S.SHUTDOWN_ACK_SENT:
            self._queue_control(c.ShutdownAckChunk())
            self._transmit(now)

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
        if self._data_in_packet and self.state in _DATA_STATES:
            self._after_data(now)
        self._transmit(now)
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
            self._queue_control(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_CHUNK_TYPE,
                                                       body[:512]),)))
        return bool(chunk.type & 0x80)

    def _on_data(self, chunk: c.DataChunk, now: float) -> None:
        self._data_in_packet = True
        problem = self.receiver.receive_data(chunk)
        if problem is None:
            return
        if isinstance(problem, c.Violation):
            self._abort_with(problem.cause, problem.reason)
        else:
            self._queue_control(c.ErrorChunk((problem,)))

    def _on_data_out_of_place(self, chunk: c.DataChunk, now: float) -> None:
        # Dropped; the packet still counts as one with DATA should it take us into a
        # state that accepts DATA (a COOKIE ACK bundled after it).
        self._data_in_packet = True

    def _on_init_ack(self, chunk: c.InitAckChunk, now: float) -> None:
        extra = self._initiation.accept_init_ack(chunk)
        if isinstance(extra, c.Violation):
            self._abort_with(extra.cause, extra.reason)
            return
        self.peer_tag = chunk.initiate_tag
        streams = self.config.streams
        self.outbound_streams = min(streams.outbound, chunk.inbound_streams)
        self.inbound_streams = min(streams.max_inbound, chunk.outbound_streams)
        pending = list(self.sender.pending)
        self._reset_transfer_state(self.my_initial_tsn, chunk.initial_tsn, chunk.a_rwnd)
        self.sender.requeue(pending, self.outbound_streams)
        self._enter(S.COOKIE_ECHOED)
        self._send_cookie_echo(now, extra)

    def _send_cookie_echo(self, now: float, extra: list[bytes] | None = None) -> None:
        # §5.1 C: COOKIE ECHO must be the first chunk of its packet.
        self._outbox.append(self._packet([self._initiation.cookie_echo, *(extra or [])]))
        self._initiation.cookie_sent_at = now
        self._t1_at = now + self.congestion.rtx.rto_s

    def _on_cookie_ack(self, chunk: c.CookieAckChunk, now: float) -> None:
        rtt = self._initiation.rtt_sample(now)
        if rtt is not None:
            self.congestion.rtx.sample(rtt)
        self._heartbeat.schedule(now, self.congestion.rtx.rto_s)
        self._establish(AssocState.COMM_UP)

    def _on_sack(self, chunk: c.SackChunk, now: float) -> None:
        progress = self.sender.process_sack(chunk, self.congestion, now)
        if isinstance(progress, c.Violation):
            self._abort_with(progress.cause, progress.reason)
            return
        if progress:
            self._errors = 0
        self._maybe_finish_shutdown(now)

    def _on_heartbeat(self, chunk: c.HeartbeatChunk, now: float) -> None:
        self._queue_control(c.HeartbeatAckChunk(chunk.info))

    def _on_heartbeat_ack(self, chunk: c.HeartbeatAckChunk, now: float) -> None:
        sent_at = self._heartbeat.answered(chunk.info)
        if sent_at is None:
            return
        self._errors = 0  # §8.3: an acknowledged HEARTBEAT clears the error counter
        rtx = self.congestion.rtx
        rtx.sample(now - sent_at)
        self._heartbeat.schedule(now, rtx.rto_s)

    def _on_abort(self, chunk: c.AbortChunk, now: float) -> None:
        self._close(self._lost(), f"the peer aborted the association: "
                    f"{c.cause_text(chunk.causes)}")

    def _on_error(self, chunk: c.ErrorChunk, now: float) -> None:
        log.info("association %d: %s reported an error: %s", self.assoc_id,
                 format_sockaddr(self.peer), c.cause_text(chunk.causes))

    def _on_error_cookie_echoed(self, chunk: c.ErrorChunk, now: float) -> None:
        for cause in chunk.causes:
            if cause.code == c.CauseCode.STALE_COOKIE:
                self._stale_cookie(cause, now)
                return
        self._on_error(chunk, now)

    def _stale_cookie(self, cause: c.Cause, now: float) -> None:
        """§5.2.6: ask again with a Cookie Preservative for twice the staleness."""
        if not self._initiation.retry():
            self._close(AssocState.CANT_STR_ASSOC, "the peer kept finding our cookie stale")
            return
        self._initiation.preserve_cookie(cause)
        self._enter(S.COOKIE_WAIT)
        self._send_init(now)

    def _on_shutdown(self, chunk: c.ShutdownChunk, now: float) -> None:
        sender = self.sender
        cum = unwrap(chunk.cumulative_tsn, sender.cumulative_ack, 32)
        if cum > sender.cumulative_ack:
            self._on_sack(c.SackChunk(chunk.cumulative_tsn, sender.peer_rwnd + sender.flight),
                          now)
        if self.state in (S.SHUTDOWN_SENT, S.SHUTDOWN_ACK_SENT):
            self._send_shutdown_ack(now)  # §9.2: both sides shut down, or our ACK was lost
        elif self.state in (S.ESTABLISHED, S.SHUTDOWN_PENDING):
            self._enter(S.SHUTDOWN_RECEIVED)

    def _on_shutdown_ack(self, chunk: c.ShutdownAckChunk, now: float) -> None:
        self._outbox.append(self._packet([c.encode_chunk(c.ShutdownCompleteChunk())]))
        self._close(AssocState.SHUTDOWN_COMP)

    def _on_shutdown_complete(self, chunk: c.ShutdownCompleteChunk, now: float) -> None:
        self._close(AssocState.SHUTDOWN_COMP)

    def _abort_with(self, cause: c.Cause, reason: str) -> None:
        tag = self.peer_tag
        self._outbox.append(self._packet(
            [c.encode_chunk(c.AbortChunk((cause,), reflected=tag == 0))],
            tag if tag else self.my_tag))
        self._close(self._lost(), reason)

    def _after_data(self, now: float) -> None:
        if self.state is S.SHUTDOWN_SENT:
            self._queue_control(c.ShutdownChunk(self.receiver.cumulative_tsn))  # §9.2
            self.receiver.sack_now = True
            self._t2_at = now + self.congestion.rtx.rto_s
        self.receiver.after_packet(now, self.config.sack_delay_s)

    # -----------------------------------------------------------------------------------
    # Shutdown (§9.2)

    def _maybe_finish_shutdown(self, now: float) -> None:
        if not self.sender.idle:
            return
        if self.state is S.SHUTDOWN_PENDING:
            self._enter(S.SHUTDOWN_SENT)
            self._queue_control(c.ShutdownChunk(self.receiver.cumulative_tsn))
            self._t2_at = now + self.congestion.rtx.rto_s
        elif self.state is S.SHUTDOWN_RECEIVED:
            self._send_shutdown_ack(now)

    def _send_shutdown_ack(self, now: float) -> None:
        self._enter(S.SHUTDOWN_ACK_SENT)
        self._queue_control(c.ShutdownAckChunk())
        self._t2_at = now + self.congestion.rtx.rto_s

    # -----------------------------------------------------------------------------------
    # Timers (§6.3.3, §8.3, §9.2)

    def handle_timeout(self, now: float) -> None:
        if self._t1_at is not None and now >= self._t1_at:
            self._on_t1(now)
        if self._t2_at is not None and now >= self._t2_at:
            self._on_t2(now)
        t3_at = self.congestion.t3_at
        if t3_at is not None and now >= t3_at:
            self._on_t3(now)
        if self._heartbeat.at is not None and now >= self._heartbeat.at:
            self._on_heartbeat_timer(now)
        receiver = self.receiver
        if receiver.sack_at is not None and now >= receiver.sack_at:
            receiver.sack_at = None  # every timer that fires is cleared or moved on
            receiver.sack_now = self.state in _DATA_STATES
        if self.state is not _CLOSED:
            self._transmit(now)

    def _count_error(self, what: str) -> bool:
        """§8.1: count an unanswered retransmission; True when the peer is given up."""
        self._errors += 1
        if self._errors > self.config.association_max_retrans:
            self._close(AssocState.COMM_LOST, f"the peer stopped answering ({what} "
                        f"unanswered {self._errors} times)")
            return True
        return False

    def _on_t1(self, now: float) -> None:
        initiation = self._initiation
        self.congestion.rtx.back_off()
        if not initiation.retry():
            what = "INIT" if self.state is S.COOKIE_WAIT else "COOKIE ECHO"
            self._close(AssocState.CANT_STR_ASSOC,
                        f"no answer to {what} after {initiation.retransmits} tries")
            return
        if self.state is S.COOKIE_WAIT:
            self._send_init(now)
        elif self.state is S.COOKIE_ECHOED:
            self._send_cookie_echo(now)
        else:
            self._t1_at = None

    def _on_t2(self, now: float) -> None:
        self.congestion.rtx.back_off()
        if self._count_error("SHUTDOWN"):
            return
        if self.state is S.SHUTDOWN_SENT:
            self._queue_control(c.ShutdownChunk(self.receiver.cumulative_tsn))
        elif self.state is S.SHUTDOWN_ACK_SENT:
            self._queue_control(c.ShutdownAckChunk())
        else:
            self._t2_at = None
            return
        self._t2_at = now + self.congestion.rtx.rto_s

    def _on_t3(self, now: float) -> None:
        congestion = self.congestion
        congestion.on_t3_expired()
        if self._count_error("data"):
            return
        self.sender.mark_all_unacked()
        congestion.t3_at = now + congestion.rtx.rto_s

    def _on_heartbeat_timer(self, now: float) -> None:
        heartbeat = self._heartbeat
        if self.state not in _DATA_STATES:
            heartbeat.at = None
            return
        rtx = self.congestion.rtx
        if heartbeat.nonce is not None:  # the last one went unanswered
            rtx.back_off()
            if self._count_error("HEARTBEAT"):
                return
        if self.sender.sent:
            heartbeat.schedule(now, rtx.rto_s)  # data in flight probes the path already
        else:
            self._queue_control(heartbeat.probe(now, rtx.rto_s))

    # -----------------------------------------------------------------------------------
    # Sending: control chunks, SACK, retransmissions, then new DATA (§6.1, §6.10)

    def _queue_control(self, chunk: c.Chunk) -> None:
        self._control.append(c.encode_chunk(chunk))

    def _packet(self, chunks: list[bytes], tag: int | None = None) -> bytes:
        return c.encode_packet(self.local_port, self.peer_port,
                               self.peer_tag if tag is None else tag, chunks)

    def _transmit(self, now: float) -> None:
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
        if state in _DATA_STATES:
            sender = self.sender
            if sender.marked:
                fast = congestion.fast_pending
                congestion.fast_pending = False
                sender.send_retransmissions(builder, congestion.cwnd, fast)
            if sender.pending and state in _NEW_DATA_STATES:
                sender.send_new_data(builder, congestion.cwnd, now)
            receiver = self.receiver
            if receiver.sack_now or (receiver.sack_at is not None and builder.has_data):
                builder.add_control_first(receiver.build_sack())
            self._maybe_finish_shutdown(now)
            for chunk in self._control:  # a SHUTDOWN that the data just cleared the way for
                builder.add_control(chunk)
            self._control.clear()
        builder.close_packet()
        if builder.has_data and congestion.t3_at is None:
            congestion.t3_at = now + congestion.rtx.rto_s  # §6.3.2 R1

    def _random_tag(self) -> int:
        while True:
            tag = int.from_bytes(self._rng(4), "big")
            if tag:
                return tag


# ---------------------------------------------------------------------------------------
# Chunk dispatch: (state, chunk type) -> handler.  A pair missing here is a chunk out of
# place in that state and is discarded (§5.2.3, §5.2.5, §6, §9.2); INIT and COOKIE ECHO
# are the stack's, never an association's; unrecognized types follow §3.2.

ChunkHandler = Callable[[Association, c.Chunk, float], None]
_Chunk = TypeVar("_Chunk", bound=c.Chunk)


def _rows(states: Iterable[AssociationState], chunk_type: type[_Chunk],
          handler: Callable[[Association, _Chunk, float], None],
          ) -> dict[tuple[AssociationState, type[c.Chunk]], ChunkHandler]:
    # The key's chunk type is the one the handler takes: the only place that is widened.
    key_type = cast("type[c.Chunk]", chunk_type)
    return {(state, key_type): cast(ChunkHandler, handler) for state in states}


A = Association
_CHUNK_HANDLERS: dict[tuple[AssociationState, type[c.Chunk]], ChunkHandler] = {
    **_rows(_DATA_STATES, c.DataChunk, A._on_data),
    **_rows(_OPEN_STATES - _DATA_STATES, c.DataChunk, A._on_data_out_of_place),
    **_rows([S.COOKIE_WAIT], c.InitAckChunk, A._on_init_ack),
    **_rows([S.COOKIE_ECHOED], c.CookieAckChunk, A._on_cookie_ack),
    **_rows(_DATA_STATES, c.SackChunk, A._on_sack),
    **_rows(_OPEN_STATES, c.HeartbeatChunk, A._on_heartbeat),
    **_rows(_OPEN_STATES, c.HeartbeatAckChunk, A._on_heartbeat_ack),
    **_rows(_OPEN_STATES, c.AbortChunk, A._on_abort),
    **_rows(_OPEN_STATES - {S.COOKIE_ECHOED}, c.ErrorChunk, A._on_error),
    **_rows([S.COOKIE_ECHOED], c.ErrorChunk, A._on_error_cookie_echoed),
    **_rows(_DATA_STATES | {S.SHUTDOWN_ACK_SENT}, c.ShutdownChunk, A._on_shutdown),
    **_rows([S.SHUTDOWN_SENT, S.SHUTDOWN_ACK_SENT], c.ShutdownAckChunk, A._on_shutdown_ack),
    **_rows([S.SHUTDOWN_ACK_SENT], c.ShutdownCompleteChunk, A._on_shutdown_complete),
}
# The same table by state, so that a chunk costs one dict lookup on the hot path.
_HANDLERS_BY_STATE: dict[AssociationState, dict[type[c.Chunk], ChunkHandler]] = {
    state: {chunk_type: handler for (in_state, chunk_type), handler in _CHUNK_HANDLERS.items()
            if in_state is state}
    for state in AssociationState
}


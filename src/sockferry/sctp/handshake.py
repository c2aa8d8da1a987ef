"""The handshake of one association, from INIT to ESTABLISHED, and §5.2 (pure).

RFC 9260 §5.1 A–E: the INIT we send and resend under T1-init, the peer's INIT ACK judged
(a cookie, no zero tag or stream count, parameters by the rules of their upper two bits,
§3.2.1), the COOKIE ECHO we resend, and §5.2.6: a stale cookie asked for again with a
Cookie Preservative (``Initiation`` keeps what is sent and how often it has been).  On
the other side, a verified COOKIE ECHO creates the association (§5.1 D) or, for one that
exists, is judged by the table of §5.2.4: the peer restarted, both sides sent INIT, or a
stale cookie of a collision.  An ICMP error quoting our packets ends only a setup.
``Handshake`` keeps T1-init and drives its association through ``HandshakeHost``; the
association keeps the states, its tags and streams, and what adopting a cookie resets.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Protocol

from sockferry.addresses import SockAddr, format_sockaddr
from sockferry.rto import RetransmitTimer
from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.cookie import CookieState
from sockferry.sctp.endpoint import AssocId, AssocState
from sockferry.sctp.heartbeat import Heartbeat
from sockferry.sctp.sending import Sender
from sockferry.sctp.states import SETUP_STATES, AssociationState

log = logging.getLogger("sockferry.sctp")
S = AssociationState

_U16_PAIR = struct.Struct("!HH")

# Parameters of INIT and INIT ACK this stack understands (the rest follow §3.2.1).
KNOWN_PARAMS = frozenset({c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS,
                          c.ParamType.STATE_COOKIE, c.ParamType.UNRECOGNIZED_PARAMETER,
                          c.ParamType.COOKIE_PRESERVATIVE,
                          c.ParamType.SUPPORTED_ADDRESS_TYPES, c.ParamType.HEARTBEAT_INFO})


class Initiation:
    """The INIT and COOKIE ECHO we send, how often we have, and when the last COOKIE
    ECHO left (the handshake's round trip is an RTT sample if it was sent once)."""

    __slots__ = ("_config", "_initial_tsn", "_tag", "cookie_echo", "cookie_sent_at",
                 "init_chunk", "retransmits")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tag = 0
        self._initial_tsn = 0
        self.init_chunk = b""
        self.cookie_echo = b""
        self.cookie_sent_at = 0.0
        self.retransmits = 0

    def begin(self, my_tag: int, my_initial_tsn: int) -> None:
        """§5.1 A: the INIT for a new association."""
        self._tag = my_tag
        self._initial_tsn = my_initial_tsn
        self.init_chunk = self._encode_init(())
        self.retransmits = 0

    def _encode_init(self, extra: tuple[c.Param, ...]) -> bytes:
        config = self._config
        params = (c.Param(c.ParamType.SUPPORTED_ADDRESS_TYPES,
                          _U16_PAIR.pack(c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS)),
                  *extra)
        return c.encode_chunk(c.InitChunk(self._tag, config.receive_buffer,
                                          config.streams.outbound, config.streams.max_inbound,
                                          self._initial_tsn, params))

    def retry(self) -> bool:
        """One more INIT or COOKIE ECHO; False once Max.Init.Retransmits are spent."""
        self.retransmits += 1
        return self.retransmits <= self._config.max_init_retransmits

    def accept_init_ack(self, chunk: c.InitAckChunk) -> c.Violation | list[bytes]:
        """§5.1 C: the COOKIE ECHO to send (kept in ``cookie_echo``) and the chunks to
        bundle after it (an ERROR reporting unrecognized parameters), or why not."""
        cookie, problems, unrecognized = inspect_init_ack_params(chunk.params)
        if chunk.initiate_tag == 0 or chunk.outbound_streams == 0 or chunk.inbound_streams == 0:
            return c.Violation(c.Cause(c.CauseCode.INVALID_MANDATORY_PARAMETER),
                               "the peer's INIT ACK has a zero tag or stream count")
        if cookie is None:
            body = struct.pack("!IH", 1, c.ParamType.STATE_COOKIE)
            return c.Violation(c.Cause(c.CauseCode.MISSING_MANDATORY_PARAMETER, body),
                               "the peer's INIT ACK has no state cookie")
        if problems:
            return c.Violation(problems[0], "the peer's INIT ACK is not acceptable")
        self.cookie_echo = c.encode_chunk(c.CookieEchoChunk(cookie))
        self.retransmits = 0
        if not unrecognized:
            return []
        return [c.encode_chunk(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_PARAMETERS,
                                                     unrecognized),)))]

    def rtt_sample(self, now: float) -> float | None:
        """The COOKIE ECHO's round trip, unless it was resent (Karn's rule)."""
        return now - self.cookie_sent_at if self.retransmits == 0 else None

    def preserve_cookie(self, stale: c.Cause) -> None:
        """§5.2.6: the next INIT asks for twice the staleness the peer reported."""
        body = stale.body
        staleness_us = struct.unpack("!I", body[:4])[0] if len(body) >= 4 else 0
        extra_ms = min(2 * staleness_us // 1000 + 1, 0xFFFFFFFF)
        self.init_chunk = self._encode_init((c.Param(c.ParamType.COOKIE_PRESERVATIVE,
                                                     struct.pack("!I", extra_ms)),))


class HandshakeHost(Protocol):
    """What the handshake reads and drives in its association: its tags and streams,
    its state, its send queue, and how it sends, adopts a cookie and ends."""

    my_tag: int
    peer_tag: int
    my_initial_tsn: int
    outbound_streams: int
    inbound_streams: int

    @property
    def assoc_id(self) -> AssocId: ...
    @property
    def peer(self) -> SockAddr: ...
    @property
    def state(self) -> AssociationState: ...
    @property
    def sender(self) -> Sender: ...
    def enter(self, state: AssociationState) -> None: ...
    def reset_transfer_state(self, my_tsn: int, peer_tsn: int, peer_rwnd: int) -> None: ...
    def adopt(self, cookie: CookieState, now: float) -> None: ...
    def establish(self, change: AssocState) -> None: ...
    def queue_control(self, chunk: c.Chunk) -> None: ...
    def send_packet(self, chunks: list[bytes], tag: int | None = None) -> None: ...
    def close(self, change: AssocState, reason: str = "") -> None: ...
    def abort_with(self, cause: c.Cause, reason: str) -> None: ...
    def on_error(self, chunk: c.ErrorChunk, now: float) -> None: ...


class Handshake:
    """Setting one association up, either side, and T1-init (INIT or COOKIE ECHO
    unanswered)."""

    __slots__ = ("_heartbeat", "_host", "_initiation", "_rng", "_rtx", "_streams", "t1_at")

    def __init__(self, host: HandshakeHost, config: Config, rtx: RetransmitTimer,
                 heartbeat: Heartbeat, rng: Callable[[int], bytes]) -> None:
        self._host = host
        self._initiation = Initiation(config)
        self._streams = config.streams
        self._rtx = rtx
        self._heartbeat = heartbeat
        self._rng = rng
        self.t1_at: float | None = None

    # -----------------------------------------------------------------------------------
    # Our INIT (§5.1 A, C, E)

    def start(self, now: float) -> None:
        """Send INIT and wait for INIT ACK in COOKIE-WAIT."""
        host = self._host
        host.my_tag = self._random_tag()
        host.my_initial_tsn = self._random_tag()
        host.enter(S.COOKIE_WAIT)
        host.reset_transfer_state(host.my_initial_tsn, 0, 0)
        self._initiation.begin(host.my_tag, host.my_initial_tsn)
        self._send_init(now)

    def _random_tag(self) -> int:
        while True:
            tag = int.from_bytes(self._rng(4), "big")
            if tag:
                return tag

    def _send_init(self, now: float) -> None:
        # §8.5.1: an INIT goes out with verification tag 0, alone in its packet.
        self._host.send_packet([self._initiation.init_chunk], 0)
        self.t1_at = now + self._rtx.rto_s

    def on_init_ack(self, chunk: c.InitAckChunk, now: float) -> None:
        host = self._host
        extra = self._initiation.accept_init_ack(chunk)
        if isinstance(extra, c.Violation):
            host.abort_with(extra.cause, extra.reason)
            return
        host.peer_tag = chunk.initiate_tag
        streams = self._streams
        host.outbound_streams = min(streams.outbound, chunk.inbound_streams)
        host.inbound_streams = min(streams.max_inbound, chunk.outbound_streams)
        pending = list(host.sender.pending)
        host.reset_transfer_state(host.my_initial_tsn, chunk.initial_tsn, chunk.a_rwnd)
        host.sender.requeue(pending, host.outbound_streams)
        host.enter(S.COOKIE_ECHOED)
        self._send_cookie_echo(now, extra)

    def _send_cookie_echo(self, now: float, extra: list[bytes] | None = None) -> None:
        # §5.1 C: COOKIE ECHO must be the first chunk of its packet.
        initiation = self._initiation
        self._host.send_packet([initiation.cookie_echo, *(extra or [])])
        initiation.cookie_sent_at = now
        self.t1_at = now + self._rtx.rto_s

    def on_cookie_ack(self, chunk: c.CookieAckChunk, now: float) -> None:
        rtt = self._initiation.rtt_sample(now)
        if rtt is not None:
            self._rtx.sample(rtt)
        self._heartbeat.schedule(now, self._rtx.rto_s)
        self._host.establish(AssocState.COMM_UP)

    def on_error(self, chunk: c.ErrorChunk, now: float) -> None:
        """An ERROR in COOKIE-ECHOED: §5.2.6 for a Stale Cookie, else only logged."""
        for cause in chunk.causes:
            if cause.code == c.CauseCode.STALE_COOKIE:
                self._stale_cookie(cause, now)
                return
        self._host.on_error(chunk, now)

    def _stale_cookie(self, cause: c.Cause, now: float) -> None:
        """§5.2.6: ask again with a Cookie Preservative for twice the staleness."""
        if not self._initiation.retry():
            self._host.close(AssocState.CANT_STR_ASSOC,
                             "the peer kept finding our cookie stale")
            return
        self._initiation.preserve_cookie(cause)
        self._host.enter(S.COOKIE_WAIT)
        self._send_init(now)

    def on_t1(self, now: float) -> None:
        initiation = self._initiation
        host = self._host
        self._rtx.back_off()
        if not initiation.retry():
            what = "INIT" if host.state is S.COOKIE_WAIT else "COOKIE ECHO"
            host.close(AssocState.CANT_STR_ASSOC,
                       f"no answer to {what} after {initiation.retransmits} tries")
            return
        if host.state is S.COOKIE_WAIT:
            self._send_init(now)
        elif host.state is S.COOKIE_ECHOED:
            self._send_cookie_echo(now)
        else:
            self.t1_at = None

    def unreachable(self, quoted: bytes, reason: str) -> bool:
        """An ICMP error quoted ``quoted``, a packet sent to this peer.  RFC 6951 §5.5
        treats Port Unreachable as Protocol Unreachable; RFC 9260 Appendix C (ICMP6)
        accepts it only with our verification tag in it, or with tag 0 and the INIT
        carrying our Initiate Tag.  Only a setup is given up: an established association
        leaves a dead peer to heartbeats and retransmissions.  True if it closed."""
        host = self._host
        if host.state not in SETUP_STATES or len(quoted) < 8:
            return False
        tag = int.from_bytes(quoted[4:8], "big")
        if tag == 0:
            if (len(quoted) < 20 or quoted[12] != c.ChunkType.INIT
                    or int.from_bytes(quoted[16:20], "big") != host.my_tag):
                return False
        elif tag != host.peer_tag:
            return False
        host.close(AssocState.CANT_STR_ASSOC, reason)
        return True

    # -----------------------------------------------------------------------------------
    # A verified COOKIE ECHO (§5.1 D, §5.2), handed over by the stack

    def accept_cookie(self, cookie: CookieState, now: float) -> None:
        """Create the association from a valid COOKIE ECHO and go ESTABLISHED."""
        host = self._host
        host.adopt(cookie, now)
        host.queue_control(c.CookieAckChunk())
        host.establish(AssocState.COMM_UP)

    def tie_tags(self) -> tuple[int, int]:
        """(local, peer) Tie-Tags to put in a cookie answering an unexpected INIT."""
        host = self._host
        if host.state == S.COOKIE_WAIT:
            return host.my_tag, 0
        return host.my_tag, host.peer_tag

    def cookie_echo(self, cookie: CookieState, now: float) -> None:
        """A valid COOKIE ECHO for an association that exists: the table of §5.2.4."""
        host = self._host
        my_tag_matches = cookie.my_tag == host.my_tag
        peer_tag_matches = cookie.peer_tag == host.peer_tag
        if not my_tag_matches and not peer_tag_matches:
            if (cookie.local_tie_tag, cookie.peer_tie_tag) != (host.my_tag, host.peer_tag):
                return
            self._restart(cookie, now)  # case A: the peer restarted
        elif my_tag_matches and not peer_tag_matches:
            self._collision(cookie, now)  # case B: both sides sent INIT
        elif my_tag_matches and peer_tag_matches:
            if host.state in SETUP_STATES:  # case D: up now, as a COOKIE ACK would bring it
                self._heartbeat.schedule(now, self._rtx.rto_s)
                host.establish(AssocState.COMM_UP)
            host.queue_control(c.CookieAckChunk())
        # case C (only the peer's tag matches): a stale cookie of a collision; discard.

    def _restart(self, cookie: CookieState, now: float) -> None:
        host = self._host
        if host.state == S.SHUTDOWN_ACK_SENT:
            host.queue_control(c.ShutdownAckChunk())
            host.queue_control(c.ErrorChunk((c.Cause(
                c.CauseCode.COOKIE_RECEIVED_WHILE_SHUTTING_DOWN),)))
            return
        log.info("association %d: %s restarted", host.assoc_id, format_sockaddr(host.peer))
        host.adopt(cookie, now)
        host.queue_control(c.CookieAckChunk())
        host.establish(AssocState.RESTART)

    def _collision(self, cookie: CookieState, now: float) -> None:
        host = self._host
        was_up = host.state not in SETUP_STATES
        pending = list(host.sender.pending)
        host.adopt(cookie, now)
        # keep what the user queued while we were connecting
        host.sender.requeue(pending, host.outbound_streams)
        host.queue_control(c.CookieAckChunk())
        if not was_up:
            host.establish(AssocState.COMM_UP)


def inspect_init_ack_params(params: tuple[c.Param, ...],
                            ) -> tuple[bytes | None, list[c.Cause], bytes]:
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

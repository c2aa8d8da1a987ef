"""An SCTP endpoint in the RFC's sense: one port, many associations (pure).

Datagrams and ``now`` go in; (datagram, address) pairs, events and one deadline come
out.  Here live the parts of RFC 9260 that come before an association exists or decide
which one a packet belongs to: the stateless answer to INIT with a signed State Cookie
(§5.1), COOKIE ECHO checks and the collision table (§5.2), out-of-the-blue packets
(§8.4) and the verification tag exceptions for INIT and COOKIE ECHO (§8.5.1).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from sockferry.addresses import SockAddr, format_sockaddr
from sockferry.errors import MalformedPacket, NetworkError
from sockferry.sctp import chunks as c
from sockferry.sctp.association import Association, Event, Random
from sockferry.sctp.config import Config
from sockferry.sctp.cookie import CookieRefused, CookieState, open_cookie, sign_cookie
from sockferry.sctp.endpoint import AssocId
from sockferry.sctp.handshake import KNOWN_PARAMS
from sockferry.sctp.states import AssociationState

log = logging.getLogger("sockferry.sctp")

# Associations one endpoint keeps at once; an INIT beyond it is refused (Out of Resource).
MAX_ASSOCIATIONS = 4096
# Replies to out-of-the-blue packets per second, so we cannot be used as a reflector.
MAX_OOTB_REPLIES_PER_S = 100
# A Cookie Preservative may ask for at most this much more cookie life (§5.2.6).
MAX_COOKIE_EXTENSION_S = 60.0

PeerKey = tuple[str, int]  # (host, SCTP port): what names an association's peer here


class Stack:
    """Associations of one local SCTP port, fed with datagrams from any number of peers."""

    def __init__(self, local_port: int, config: Config, *, secret: bytes, rng: Random,
                 packet_size: Callable[[SockAddr], int]) -> None:
        self.local_port = local_port
        self.config = config
        self._secret = secret
        self._rng = rng
        self._packet_size = packet_size
        self._associations: dict[AssocId, Association] = {}
        self._by_peer: dict[PeerKey, AssocId] = {}
        self._udp_address: dict[AssocId, SockAddr] = {}
        self._deadlines: dict[AssocId, float] = {}
        self._outbox: list[tuple[bytes, SockAddr]] = []
        self._events: list[Event] = []
        self._next_id = 1
        self._ootb_window = (0.0, 0)

    # -----------------------------------------------------------------------------------
    # Outputs

    def datagrams_to_send(self) -> list[tuple[bytes, SockAddr]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def events(self) -> list[Event]:
        """Every pending event at once (cheaper than next_event in a loop)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def association(self, assoc_id: AssocId) -> Association | None:
        return self._associations.get(assoc_id)

    def association_for(self, host: str, port: int) -> AssocId | None:
        return self._by_peer.get((host, port))

    @property
    def association_ids(self) -> list[AssocId]:
        return list(self._associations)

    # -----------------------------------------------------------------------------------
    # User requests

    def connect(self, host: str, port: int, udp_address: SockAddr, now: float) -> AssocId:
        """Start an association to SCTP ``host:port`` reached at ``udp_address``."""
        existing = self._by_peer.get((host, port))
        if existing is not None:
            return existing
        assoc = self._new_association(host, port, udp_address)
        assoc.start(now)
        self._collect(assoc)
        return assoc.assoc_id

    def send(self, assoc_id: AssocId, data: bytes, *, stream: int, ppid: int,
             unordered: bool, now: float) -> None:
        assoc = self._get(assoc_id)
        try:
            assoc.send(data, stream, ppid, unordered, now)
        finally:
            self._collect(assoc)

    def release(self, assoc_id: AssocId, nbytes: int, now: float) -> None:
        """The application has read ``nbytes`` of the association's messages."""
        assoc = self._associations.get(assoc_id)
        if assoc is not None:
            assoc.release(nbytes, now)
            self._collect(assoc)

    def shutdown(self, assoc_id: AssocId, now: float) -> None:
        assoc = self._get(assoc_id)
        assoc.shutdown(now)
        self._collect(assoc)

    def abort(self, assoc_id: AssocId, reason: str, now: float) -> None:
        assoc = self._associations.get(assoc_id)
        if assoc is not None:
            assoc.abort(reason, now)
            self._collect(assoc)

    def unreachable(self, quoted: bytes, udp_address: SockAddr, reason: str) -> None:
        """An ICMP destination-unreachable error about a packet we sent to
        ``udp_address`` (``quoted`` is that packet): associations still being set up
        with that address end with CANT_STR_ASSOC and ``reason``."""
        for assoc_id, address in list(self._udp_address.items()):
            assoc = self._associations[assoc_id]
            if address == udp_address and assoc.unreachable(quoted, reason):
                self._collect(assoc)

    def handle_timeout(self, now: float) -> None:
        due = [i for i, at in self._deadlines.items() if at <= now]
        for assoc_id in due:
            assoc = self._associations[assoc_id]
            assoc.handle_timeout(now)
            self._collect(assoc)

    def _get(self, assoc_id: AssocId) -> Association:
        assoc = self._associations.get(assoc_id)
        if assoc is None:
            raise NetworkError(f"association {assoc_id} does not exist or has ended")
        return assoc

    def _new_association(self, host: str, port: int, udp_address: SockAddr) -> Association:
        assoc_id = AssocId(self._next_id)
        self._next_id += 1
        assoc = Association(assoc_id, (host, port), local_port=self.local_port,
                            peer_port=port, config=self.config, rng=self._rng,
                            max_packet_size=self._packet_size(udp_address))
        self._associations[assoc_id] = assoc
        self._by_peer[(host, port)] = assoc_id
        self._udp_address[assoc_id] = udp_address
        return assoc

    def _collect(self, assoc: Association) -> None:
        """Move an association's packets and events out; forget it once it has closed."""
        assoc_id = assoc.assoc_id
        address = self._udp_address[assoc_id]
        for packet in assoc.packets_to_send():
            self._outbox.append((packet, address))
        while (event := assoc.next_event()) is not None:
            self._events.append(event)
        if assoc.closed:
            del self._associations[assoc_id]
            del self._udp_address[assoc_id]
            self._deadlines.pop(assoc_id, None)
            key = (str(assoc.peer[0]), assoc.peer_port)
            if self._by_peer.get(key) == assoc_id:
                del self._by_peer[key]
            return
        deadline = assoc.next_deadline()
        if deadline is None:
            self._deadlines.pop(assoc_id, None)
        else:
            self._deadlines[assoc_id] = deadline

    # -----------------------------------------------------------------------------------
    # Incoming datagrams

    def receive_datagram(self, data: bytes, address: SockAddr, now: float) -> None:
        """One UDP payload from ``address``: an SCTP packet, or garbage to drop."""
        if isinstance(address, str) or not c.checksum_ok(data):
            return  # §6.8: a bad checksum is dropped silently
        try:
            packet = c.decode_packet(data)
        except MalformedPacket as exc:
            log.debug("dropped a malformed packet from %s: %s", format_sockaddr(address), exc)
            return
        if not packet.chunks:
            return
        key = (address[0], packet.source_port)
        assoc_id = self._by_peer.get(key)
        assoc = self._associations.get(assoc_id) if assoc_id is not None else None
        first = packet.chunks[0]
        if packet.destination_port != self.local_port:
            self._out_of_the_blue(packet, address, now)
        elif isinstance(first, c.InitChunk):
            self._on_init(packet, first, assoc, address, now)
        elif isinstance(first, c.CookieEchoChunk):
            self._on_cookie_echo(packet, first, assoc, address, now)
        elif assoc is None:
            self._out_of_the_blue(packet, address, now)
        else:
            if assoc.receive_packet(packet, now):
                # RFC 6951 §5.4: replies go to the UDP port the peer last sent from.
                self._udp_address[assoc.assoc_id] = address
            self._collect(assoc)

    def _reply(self, address: SockAddr, port: int, tag: int, chunk: c.Chunk) -> None:
        self._outbox.append((c.encode_packet(self.local_port, port, tag,
                                             [c.encode_chunk(chunk)]), address))

    def _on_init(self, packet: c.Packet, init: c.InitChunk, assoc: Association | None,
                 address: SockAddr, now: float) -> None:
        """§5.1 B: answer with INIT ACK and a cookie, keeping no state; §5.2.1, §5.2.2."""
        if len(packet.chunks) > 1 or packet.verification_tag != 0 or init.initiate_tag == 0:
            return  # §6.10, §8.5.1 A, §3.3.2: silently discarded
        port = packet.source_port
        if init.outbound_streams == 0 or init.inbound_streams == 0:
            self._reply(address, port, init.initiate_tag, c.AbortChunk((c.Cause(
                c.CauseCode.INVALID_MANDATORY_PARAMETER),)))
            return
        extension_s, unrecognized, problem = _init_params(init.params)
        if problem is not None:
            self._reply(address, port, init.initiate_tag, c.AbortChunk((problem,)))
            return
        if assoc is not None and assoc.state == AssociationState.SHUTDOWN_ACK_SENT:
            assoc.resend_shutdown_ack(now)  # §9.2: an INIT now is answered so
            self._collect(assoc)
            return
        if assoc is None and len(self._associations) >= MAX_ASSOCIATIONS:
            self._reply(address, port, init.initiate_tag, c.AbortChunk((c.Cause(
                c.CauseCode.OUT_OF_RESOURCE),)))
            return
        if assoc is not None and assoc.state in (AssociationState.COOKIE_WAIT,
                                                 AssociationState.COOKIE_ECHOED):
            my_tag, my_tsn = assoc.my_tag, assoc.my_initial_tsn  # §5.2.1: same as our INIT
        else:
            my_tag, my_tsn = self._random_u32(), self._random_u32()
        local_tie, peer_tie = assoc.tie_tags() if assoc is not None else (0, 0)
        streams = self.config.streams
        outbound = min(streams.outbound, init.inbound_streams)
        state = CookieState(my_tag, init.initiate_tag, my_tsn, init.initial_tsn, init.a_rwnd,
                            outbound, min(streams.max_inbound, init.outbound_streams),
                            local_tie, peer_tie, self.local_port, port, now,
                            self.config.valid_cookie_life_s + extension_s, str(address[0]))
        params = [c.Param(c.ParamType.STATE_COOKIE, sign_cookie(state, self._secret))]
        params += [c.Param(c.ParamType.UNRECOGNIZED_PARAMETER, p) for p in unrecognized]
        self._reply(address, port, init.initiate_tag, c.InitAckChunk(
            my_tag, self.config.receive_buffer, outbound, streams.max_inbound, my_tsn,
            tuple(params)))

    def _on_cookie_echo(self, packet: c.Packet, echo: c.CookieEchoChunk,
                        assoc: Association | None, address: SockAddr, now: float) -> None:
        """§5.1 D and §5.2.4: a valid cookie creates or updates an association."""
        host = str(address[0])
        try:
            cookie = open_cookie(echo.cookie, self._secret, host, now)
        except CookieRefused as refusal:
            self._refuse_cookie(packet, refusal, address)
            return
        if (packet.verification_tag != cookie.my_tag or cookie.local_port != self.local_port
                or cookie.peer_port != packet.source_port):
            return
        if assoc is None:
            if len(self._associations) >= MAX_ASSOCIATIONS:
                return
            assoc = self._new_association(host, packet.source_port, address)
            assoc.accept_cookie(cookie, now)
        else:
            assoc.handle_cookie_echo(cookie, now)
        self._udp_address[assoc.assoc_id] = address
        if len(packet.chunks) > 1 and not assoc.closed:
            rest = c.Packet(packet.source_port, packet.destination_port,
                            packet.verification_tag, packet.chunks[1:])
            assoc.receive_packet(rest, now)
        else:
            assoc.flush(now)
        self._collect(assoc)

    def _refuse_cookie(self, packet: c.Packet, refusal: CookieRefused,
                       address: SockAddr) -> None:
        log.debug("refused a COOKIE ECHO from %s: %s", format_sockaddr(address), refusal)
        if refusal.stale is not None and packet.verification_tag == refusal.stale.my_tag:
            # §5.1.5 3): an expired but genuine cookie gets a Stale Cookie error.
            body = struct.pack("!I", refusal.staleness_us)
            self._reply(address, packet.source_port, refusal.stale.peer_tag,
                        c.ErrorChunk((c.Cause(c.CauseCode.STALE_COOKIE, body),)))

    def _out_of_the_blue(self, packet: c.Packet, address: SockAddr, now: float) -> None:
        """§8.4: answer a packet that belongs to no association, or stay quiet."""
        kinds = {type(chunk) for chunk in packet.chunks}
        if kinds & {c.AbortChunk, c.ShutdownCompleteChunk, c.CookieAckChunk}:
            return
        if any(isinstance(ch, c.ErrorChunk) and any(
                cause.code == c.CauseCode.STALE_COOKIE for cause in ch.causes)
               for ch in packet.chunks):
            return
        if not self._ootb_budget(now):
            return
        first = packet.chunks[0]
        if isinstance(first, c.ShutdownAckChunk):
            reply: c.Chunk = c.ShutdownCompleteChunk(reflected=True)
            tag = packet.verification_tag
        elif isinstance(first, c.InitChunk):
            reply, tag = c.AbortChunk(), first.initiate_tag
        else:
            reply, tag = c.AbortChunk(reflected=True), packet.verification_tag
        self._reply(address, packet.source_port, tag, reply)

    def _ootb_budget(self, now: float) -> bool:
        second, used = self._ootb_window
        if int(now) != second:
            second, used = int(now), 0
        self._ootb_window = (second, used + 1)
        return used < MAX_OOTB_REPLIES_PER_S

    def _random_u32(self) -> int:
        while True:
            value = int.from_bytes(self._rng(4), "big")
            if value:
                return value


def _init_params(params: tuple[c.Param, ...]) -> tuple[float, list[bytes], c.Cause | None]:
    """An INIT's parameters: cookie life asked for, unrecognized ones to report (§3.2.2),
    and a problem that refuses the INIT."""
    extension_s = 0.0
    unrecognized: list[bytes] = []
    for param in params:
        if param.type == c.ParamType.COOKIE_PRESERVATIVE and len(param.value) == 4:
            extension_s = min(struct.unpack("!I", param.value)[0] / 1000,
                              MAX_COOKIE_EXTENSION_S)
        elif param.type == c.ParamType.HOST_NAME_ADDRESS:
            # RFC 9260 §3.3.2.1: host names are no longer resolved.
            return 0.0, [], c.Cause(c.CauseCode.UNRESOLVABLE_ADDRESS, c.encode_param(param))
        elif param.type not in KNOWN_PARAMS:
            if param.type & 0x4000:
                unrecognized.append(c.encode_param(param))
            if not param.type & 0x8000:
                break  # §3.2.1: stop processing this chunk's parameters
    return extension_s, unrecognized, None


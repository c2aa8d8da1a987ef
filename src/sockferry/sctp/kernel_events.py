"""What a Linux SCTP one-to-many socket reads, turned into endpoint events (pure).

Each ``recvmsg`` result — bytes, ancillary data, flags and the peer's address — goes in;
whole ``UserMessage`` and ``AssociationChange`` objects come out, the same as the userspace
stack's.  On the way:

- pieces of one message (partial delivery, RFC 6458 §8.1.20: no MSG_EOR yet) are
  joined, up to the same message size limit as the userspace stack;
- notifications (MSG_NOTIFICATION, RFC 6458 §6.1) are decoded; association changes keep
  the table of live associations, with their peer and negotiated stream counts;
- an association's end gets a reason in the userspace stack's words.

No sockets here: ``kernel.py`` reads the socket and feeds this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sockferry.addresses import SockAddr
from sockferry.errors import MalformedPacket
from sockferry.sctp import chunks
from sockferry.sctp import linux_abi as abi
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    Received,
    UserMessage,
)

log = logging.getLogger("sockferry.sctp")

def plain_address(address: Any) -> SockAddr:
    """A peer address as users read it: IPv4-mapped IPv6 back to IPv4, no flow info."""
    host, port = str(address[0]), int(address[1])
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    if ":" in host:
        return host, port, 0, int(address[3]) if len(address) > 3 else 0
    return host, port


def address_key(address: SockAddr) -> tuple[str, int]:
    """(host, port): what identifies a peer, whatever the tuple's length."""
    assert not isinstance(address, str)
    return str(address[0]), int(address[1])


@dataclass(slots=True)
class KernelAssociation:
    """An association as the kernel reported it: its peer and negotiated (outbound,
    inbound) stream counts."""

    peer: SockAddr | None
    outbound: int
    inbound: int


@dataclass(frozen=True, slots=True)
class MessageTooLarge:
    """A message grew past the limit: its association is to be aborted."""

    assoc_id: AssocId
    limit: int


Output = Received | MessageTooLarge


class KernelEvents:
    """The receive side of one socket: pieces in, whole events out."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.associations: dict[AssocId, KernelAssociation] = {}
        self._aborted: dict[AssocId, str] = {}
        self._parts: list[bytes] = []
        self._size = 0
        self._notification = False
        self._info: abi.RcvInfo | None = None
        self._peer: Any = None
        self._discarding = False

    def by_peer(self, key: tuple[str, int]) -> AssocId | None:
        for assoc_id, known in self.associations.items():
            if known.peer is not None and address_key(known.peer) == key:
                return assoc_id
        return None

    def aborted_locally(self, assoc_id: AssocId, reason: str) -> None:
        """We sent ABORT: its COMM_LOST says so, in the userspace stack's words."""
        self._aborted[assoc_id] = reason

    # -----------------------------------------------------------------------------------

    def receive(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int,
                address: Any) -> Output | None:
        """One recvmsg result; an event when it completes one (MSG_EOR)."""
        notification = bool(flags & abi.MSG_NOTIFICATION)
        if self._parts and self._notification != notification:
            # A partial delivery was aborted (this notification says so): drop its start.
            log.warning("an incomplete message of %d bytes was dropped", self._size)
            self._reset()
        if not self._parts and not self._discarding:
            self._notification, self._peer = notification, address
            self._info = _rcvinfo(ancdata)
        too_large = None
        if not self._discarding:
            self._parts.append(data)
            self._size += len(data)
            if not notification and self._size > self.max_message_size:
                too_large = self._refuse_large()
        if not flags & abi.MSG_EOR:
            return too_large
        whole = b"".join(self._parts)
        info, peer, discarded = self._info, self._peer, self._discarding
        self._reset()
        if discarded:
            return too_large
        if notification:
            return self._on_notification(whole, peer)
        if info is None:
            log.warning("a message without SCTP_RCVINFO was dropped")
            return None
        return UserMessage(whole, AssocId(info.assoc_id), info.stream, info.ppid,
                       plain_address(peer), bool(info.flags & abi.SendFlag.UNORDERED))

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._info = self._peer = None
        self._discarding = False

    def _refuse_large(self) -> MessageTooLarge | None:
        """Like the userspace stack: a message over the limit aborts its association."""
        self._parts = []
        self._discarding = True
        if self._info is None:
            return None
        log.warning("association %d: a message exceeds %d bytes; aborting it",
                    self._info.assoc_id, self.max_message_size)
        return MessageTooLarge(AssocId(self._info.assoc_id), self.max_message_size)

    def _on_notification(self, data: bytes, address: Any) -> AssociationChange | None:
        try:
            note = abi.decode_notification(data)
        except MalformedPacket as exc:
            log.warning("an SCTP notification was not understood: %s", exc)
            return None
        match note:
            case abi.AssocChangeNote():
                return self._on_assoc_change(note, plain_address(address) if address
                                             else None)
            case abi.ShutdownNote():
                log.debug("association %d: the peer is shutting down", note.assoc_id)
            case abi.SendFailedNote():
                log.warning("association %d: a message of %d bytes on stream %d was not "
                            "delivered", note.assoc_id, len(note.data), note.stream)
            case abi.RemoteErrorNote():
                log.info("association %d: the peer reported an error: %s", note.assoc_id,
                         chunks.cause_text((chunks.Cause(note.cause, note.data),)))
            case abi.PartialDeliveryNote():
                log.warning("association %d: delivery of a message on stream %d was "
                            "aborted", note.assoc_id, note.stream)
            case abi.OtherNote():
                log.debug("SCTP notification %#x ignored", note.type)
        return None

    def _on_assoc_change(self, note: abi.AssocChangeNote,
                         peer: SockAddr | None) -> AssociationChange:
        assoc_id = AssocId(note.assoc_id)
        state = AssocState[note.state.name]
        outbound, inbound = note.outbound_streams, note.inbound_streams
        if state in (AssocState.COMM_UP, AssocState.RESTART):
            self.associations[assoc_id] = KernelAssociation(peer, outbound, inbound)
            return AssociationChange(state, assoc_id, peer, outbound, inbound)
        known = self.associations.pop(assoc_id, None)
        if known is not None:
            peer = peer or known.peer
            outbound, inbound = known.outbound, known.inbound
        return AssociationChange(state, assoc_id, peer, outbound, inbound,
                                 self._reason(assoc_id, state, note.info))

    def _reason(self, assoc_id: AssocId, state: AssocState, info: bytes) -> str:
        """Why an association ended, in the userspace stack's words."""
        if assoc_id in self._aborted:
            reason = self._aborted.pop(assoc_id)
            return f"aborted locally: {reason}" if reason else "aborted locally"
        causes = abort_causes(info)
        if causes:
            return f"the peer aborted the association: {chunks.cause_text(causes)}"
        # Linux reports an ABORT without causes and exhausted retransmissions alike.
        if state == AssocState.COMM_LOST:
            return "the peer aborted or stopped answering"
        if state == AssocState.CANT_STR_ASSOC:
            return "the peer refused the association or did not answer INIT"
        return ""


def _rcvinfo(ancdata: list[tuple[int, int, bytes]]) -> abi.RcvInfo | None:
    for level, kind, data in ancdata:
        if level == abi.IPPROTO_SCTP and kind == abi.CmsgType.RCVINFO:
            try:
                return abi.decode_rcvinfo(data)
            except MalformedPacket:
                return None
    return None


def abort_causes(info: bytes) -> tuple[chunks.Cause, ...]:
    """The error causes of a received ABORT, which Linux puts in ``sac_info`` (RFC 6458
    §6.1.1 asks for the whole chunk; Linux gives its body, the chunk header stripped)."""
    if not info or len(info) > 0xFFFF - chunks.CHUNK_HEADER_SIZE:
        return ()
    header = chunks.CHUNK_HEADER.pack(chunks.ChunkType.ABORT, 0,
                                      chunks.CHUNK_HEADER_SIZE + len(info))
    try:
        decoded = chunks.decode_chunks(header + info, 0)
    except MalformedPacket:
        return ()
    first = decoded[0] if decoded else None
    return first.causes if isinstance(first, chunks.AbortChunk) else ()

"""The graceful close of one association (pure): RFC 9260 §9.2.

Our close waits in SHUTDOWN-PENDING until all we queued is acknowledged, then sends
SHUTDOWN (SHUTDOWN-SENT), again under T2-shutdown and with each packet of DATA that
still arrives.  The peer's SHUTDOWN acknowledges by its cumulative TSN and takes us to
SHUTDOWN-RECEIVED, where what we queued drains before our SHUTDOWN ACK
(SHUTDOWN-ACK-SENT), resent under T2 and to an INIT; SHUTDOWN ACK is answered with
SHUTDOWN COMPLETE, which ends the association on both sides.  ``Shutdown`` keeps T2 and
drives its association through ``ShutdownHost``; the association keeps the states.
"""

from __future__ import annotations

from typing import Protocol

from sockferry.rto import RetransmitTimer
from sockferry.sctp import chunks as c
from sockferry.sctp.endpoint import AssocState
from sockferry.sctp.receiving import Receiver
from sockferry.sctp.sending import Sender
from sockferry.sctp.states import SETUP_STATES, AssociationState
from sockferry.serial import unwrap

S = AssociationState


class ShutdownHost(Protocol):
    """What the shutdown reads and drives in its association."""

    @property
    def state(self) -> AssociationState: ...
    @property
    def sender(self) -> Sender: ...
    @property
    def receiver(self) -> Receiver: ...
    def enter(self, state: AssociationState) -> None: ...
    def queue_control(self, chunk: c.Chunk) -> None: ...
    def send_packet(self, chunks: list[bytes], tag: int | None = None) -> None: ...
    def transmit(self, now: float) -> None: ...
    def on_sack(self, chunk: c.SackChunk, now: float) -> None: ...
    def abort(self, reason: str, now: float) -> None: ...
    def close(self, change: AssocState, reason: str = "") -> None: ...
    def count_error(self, what: str) -> bool: ...


class Shutdown:
    """The SHUTDOWN sequence of one association and its T2-shutdown deadline."""

    __slots__ = ("_host", "_rtx", "t2_at")

    def __init__(self, host: ShutdownHost, rtx: RetransmitTimer) -> None:
        self._host = host
        self._rtx = rtx
        self.t2_at: float | None = None

    def start(self, now: float) -> None:
        """The user's close: send what is queued, then SHUTDOWN; before the association
        is up there is nothing to drain, so it is aborted."""
        host = self._host
        if host.state in SETUP_STATES:
            host.abort("shut down before the association was up", now)
            return
        if host.state is not S.ESTABLISHED:
            return
        host.enter(S.SHUTDOWN_PENDING)
        host.transmit(now)

    def maybe_finish(self, now: float) -> None:
        """Once nothing is queued or unacknowledged: our SHUTDOWN, or our SHUTDOWN ACK
        to the peer's."""
        host = self._host
        if not host.sender.idle:
            return
        if host.state is S.SHUTDOWN_PENDING:
            host.enter(S.SHUTDOWN_SENT)
            host.queue_control(c.ShutdownChunk(host.receiver.cumulative_tsn))
            self.t2_at = now + self._rtx.rto_s
        elif host.state is S.SHUTDOWN_RECEIVED:
            self._send_ack(now)

    def _send_ack(self, now: float) -> None:
        self._host.enter(S.SHUTDOWN_ACK_SENT)
        self._host.queue_control(c.ShutdownAckChunk())
        self.t2_at = now + self._rtx.rto_s

    def answer_data(self, now: float) -> None:
        """In SHUTDOWN-SENT, DATA that still arrives is answered with SHUTDOWN and a SACK."""
        host = self._host
        host.queue_control(c.ShutdownChunk(host.receiver.cumulative_tsn))
        host.receiver.sack_now = True
        self.t2_at = now + self._rtx.rto_s

    def resend_ack(self, now: float) -> None:
        """In SHUTDOWN-ACK-SENT an INIT is answered with the SHUTDOWN ACK again."""
        host = self._host
        if host.state is S.SHUTDOWN_ACK_SENT:
            host.queue_control(c.ShutdownAckChunk())
            host.transmit(now)

    def on_shutdown(self, chunk: c.ShutdownChunk, now: float) -> None:
        host = self._host
        sender = host.sender
        cum = unwrap(chunk.cumulative_tsn, sender.cumulative_ack, 32)
        if cum > sender.cumulative_ack:
            host.on_sack(c.SackChunk(chunk.cumulative_tsn, sender.peer_rwnd + sender.flight),
                         now)
        if host.state in (S.SHUTDOWN_SENT, S.SHUTDOWN_ACK_SENT):
            self._send_ack(now)  # both sides shut down, or our ACK was lost
        elif host.state in (S.ESTABLISHED, S.SHUTDOWN_PENDING):
            host.enter(S.SHUTDOWN_RECEIVED)

    def on_shutdown_ack(self, chunk: c.ShutdownAckChunk, now: float) -> None:
        self._host.send_packet([c.encode_chunk(c.ShutdownCompleteChunk())])
        self._host.close(AssocState.SHUTDOWN_COMP)

    def on_shutdown_complete(self, chunk: c.ShutdownCompleteChunk, now: float) -> None:
        self._host.close(AssocState.SHUTDOWN_COMP)

    def on_t2(self, now: float) -> None:
        """T2-shutdown expired: SHUTDOWN or SHUTDOWN ACK again, counted as an error."""
        host = self._host
        self._rtx.back_off()
        if host.count_error("SHUTDOWN"):
            return
        if host.state is S.SHUTDOWN_SENT:
            host.queue_control(c.ShutdownChunk(host.receiver.cumulative_tsn))
        elif host.state is S.SHUTDOWN_ACK_SENT:
            host.queue_control(c.ShutdownAckChunk())
        else:
            self.t2_at = None
            return
        self.t2_at = now + self._rtx.rto_s

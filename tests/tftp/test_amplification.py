"""The cores' anti-amplification rule (RFC 9000 §8's model), on virtual time."""

from __future__ import annotations

from sockferry.errors import TransferTimeout
from sockferry.tftp.options import TransferOptions
from sockferry.tftp.packets import encode_ack, encode_data, encode_oack
from sockferry.tftp.receiving import ServerWrite
from sockferry.tftp.sending import ServerRead
from sockferry.tftp.transfer import AMPLIFICATION_FACTOR, Timing, TransferFailed

PEER = ("192.0.2.1", 1069)
OACK = {"blksize": "512", "tsize": "2048"}


def bytes_sent_until(core: ServerRead | ServerWrite, end: float) -> int:
    """Run the core's timers up to ``end`` (never acknowledged); bytes it sent."""
    total, now = 0, 0.0
    for _ in range(1000):  # bounded
        if isinstance(core, ServerRead) and core.wants_data:
            core.send_data(b"d" * 2048, now, end=True)
        total += sum(len(data) for data, _ in core.datagrams_to_send())
        due = core.next_deadline()
        if due is None or due > end or core.finished:
            break
        now = due
        core.handle_timeout(now)
    return total


def test_an_unconfirmed_oack_is_repeated_within_three_times_the_request() -> None:
    core = ServerRead(PEER, TransferOptions(tsize=2048), OACK, Timing(retries=20), 0.0,
                      received=40, unconfirmed_s=60.0)
    sent = bytes_sent_until(core, 59.0)
    assert len(encode_oack(OACK)) < sent <= AMPLIFICATION_FACTOR * 40
    assert core.withheld > 0 and not core.confirmed


def test_plain_rrq_gets_data_1_once_and_again_only_when_asked_again() -> None:
    core = ServerRead(PEER, TransferOptions(), {}, Timing(retries=20), 0.0, received=16)
    assert bytes_sent_until(core, 9.0) == 516  # over 3 x 16, but the one answer it owes
    core.request_repeated(16, 5.0)
    assert [data for data, _ in core.datagrams_to_send()] == [encode_data(1, b"d" * 512)]


def test_an_unconfirmed_transfer_expires_silently() -> None:
    core = ServerWrite(PEER, TransferOptions(), {}, Timing(retries=50), 0.0, received=20,
                       unconfirmed_s=10.0)
    bytes_sent_until(core, 100.0)
    assert core.finished
    assert core.datagrams_to_send() == []  # no ERROR toward a peer that may be forged
    [failed] = [e for e in iter(core.next_event, None)]
    assert isinstance(failed, TransferFailed) and isinstance(failed.error, TransferTimeout)


def test_the_peers_answer_confirms_and_lifts_every_limit() -> None:
    core = ServerRead(PEER, TransferOptions(), {}, Timing(), 0.0, received=16)
    core.send_data(b"d" * 5000, 0.0, end=True)
    core.datagrams_to_send()
    assert not core.step_ready  # no one-step lane before the peer answered
    core.receive_datagram(encode_ack(1), PEER, 0.01)
    assert core.confirmed and core.next_deadline() is not None
    assert core.step_ready
    assert [data for data, _ in core.datagrams_to_send()] == [encode_data(2, b"d" * 512)]

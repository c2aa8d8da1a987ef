"""recvmsg results of a Linux SCTP socket into endpoint events, without a socket.

The inputs are laid out as the kernel lays them out (linux_abi, checked against
<linux/sctp.h>); the VM tests feed the same code from the real kernel.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given
from hypothesis import strategies as st

from sockferry.sctp import linux_abi as abi
from sockferry.sctp.endpoint import AssociationChange, AssocId, AssocState, UserMessage
from sockferry.sctp.kernel_events import KernelEvents, MessageTooLarge, plain_address

PEER = ("::ffff:10.0.0.5", 4000, 0, 0)  # how an IPv6 socket names an IPv4 peer
NOTIFICATION_EOR = abi.MSG_NOTIFICATION | abi.MSG_EOR


def rcvinfo(assoc_id: int, stream: int = 0, ppid: int = 0, unordered: bool = False,
            ) -> list[tuple[int, int, bytes]]:
    raw = bytearray(abi.RCVINFO.size)
    struct.pack_into("=HH", raw, 0, stream, 0)
    struct.pack_into("=H", raw, abi.RCVINFO.offsets["rcv_flags"],
                     abi.SendFlag.UNORDERED if unordered else 0)
    struct.pack_into("!I", raw, abi.RCVINFO.offsets["rcv_ppid"], ppid)  # network order
    struct.pack_into("=i", raw, abi.RCVINFO.offsets["rcv_assoc_id"], assoc_id)
    return [(abi.IPPROTO_SCTP, abi.CmsgType.RCVINFO, bytes(raw))]


def assoc_change(state: abi.SacState, assoc_id: int, outbound: int = 0, inbound: int = 0,
                 info: bytes = b"") -> bytes:
    return abi.ASSOC_CHANGE.pack(abi.NotificationType.ASSOC_CHANGE, 0,
                                 abi.ASSOC_CHANGE.size + len(info), state, 0, outbound,
                                 inbound, assoc_id) + info


def user_abort(text: bytes) -> bytes:
    """An ABORT's body as Linux puts it in sac_info: a User-Initiated Abort cause."""
    cause = struct.pack("!HH", 12, 4 + len(text)) + text
    return cause + b"\0" * (-len(cause) % 4)


def up(events: KernelEvents, assoc_id: int = 7) -> AssociationChange:
    change = events.receive(assoc_change(abi.SacState.COMM_UP, assoc_id, 5, 3), [],
                            NOTIFICATION_EOR, PEER)
    assert isinstance(change, AssociationChange)
    return change


def test_association_comes_up_with_its_peer_and_streams() -> None:
    events = KernelEvents(1 << 20)
    assert up(events) == AssociationChange(AssocState.COMM_UP, AssocId(7),
                                           ("10.0.0.5", 4000), 5, 3)
    assert events.by_peer(("10.0.0.5", 4000)) == 7
    assert events.associations[AssocId(7)].outbound == 5


def test_message_with_its_receive_information() -> None:
    events = KernelEvents(1 << 20)
    up(events)
    message = events.receive(b"hello", rcvinfo(7, stream=2, ppid=0xFFFFFFFE, unordered=True),
                             abi.MSG_EOR, PEER)
    assert message == UserMessage(b"hello", AssocId(7), 2, 0xFFFFFFFE, ("10.0.0.5", 4000), True)


@given(st.binary(min_size=1, max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_pieces_join_into_one_message(data: bytes, cuts: list[int]) -> None:
    events = KernelEvents(1 << 20)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    for piece in pieces[:-1]:
        assert events.receive(piece, rcvinfo(3, 1), 0, PEER) is None
    message = events.receive(pieces[-1], rcvinfo(3, 1), abi.MSG_EOR, PEER)
    assert isinstance(message, UserMessage) and message.data == data


def test_a_message_over_the_limit_aborts_its_association_once() -> None:
    events = KernelEvents(100)
    assert events.receive(b"x" * 60, rcvinfo(9), 0, PEER) is None
    assert events.receive(b"x" * 60, rcvinfo(9), 0, PEER) == MessageTooLarge(AssocId(9), 100)
    assert events.receive(b"x" * 60, rcvinfo(9), 0, PEER) is None
    assert events.receive(b"end", rcvinfo(9), abi.MSG_EOR, PEER) is None
    after = events.receive(b"next", rcvinfo(9), abi.MSG_EOR, PEER)
    assert isinstance(after, UserMessage) and after.data == b"next"


def test_an_interrupted_partial_delivery_is_dropped() -> None:
    events = KernelEvents(1 << 20)
    up(events)
    assert events.receive(b"start of a long", rcvinfo(7), 0, PEER) is None
    aborted = abi.PDAPI_EVENT.pack(abi.NotificationType.PARTIAL_DELIVERY_EVENT, 0,
                                   abi.PDAPI_EVENT.size, abi.PARTIAL_DELIVERY_ABORTED, 7, 1, 0)
    assert events.receive(aborted, [], NOTIFICATION_EOR, PEER) is None
    lost = events.receive(assoc_change(abi.SacState.COMM_LOST, 7), [], NOTIFICATION_EOR,
                          PEER)
    assert isinstance(lost, AssociationChange) and lost.state == AssocState.COMM_LOST


def test_reasons_in_the_userspace_stacks_words() -> None:
    events = KernelEvents(1 << 20)
    up(events, 1)
    peer_abort = events.receive(assoc_change(abi.SacState.COMM_LOST, 1,
                                             info=user_abort(b"bye")), [],
                                NOTIFICATION_EOR, PEER)
    assert isinstance(peer_abort, AssociationChange)
    assert peer_abort.reason == "the peer aborted the association: user initiated abort (bye)"
    assert (peer_abort.outbound_streams, peer_abort.inbound_streams) == (5, 3)
    assert events.associations == {}
    up(events, 2)
    events.aborted_locally(AssocId(2), "enough")
    mine = events.receive(assoc_change(abi.SacState.COMM_LOST, 2), [], NOTIFICATION_EOR, PEER)
    assert isinstance(mine, AssociationChange) and mine.reason == "aborted locally: enough"
    up(events, 3)
    silent = events.receive(assoc_change(abi.SacState.COMM_LOST, 3), [], NOTIFICATION_EOR,
                            PEER)
    assert isinstance(silent, AssociationChange)
    assert silent.reason == "the peer aborted or stopped answering"
    refused = events.receive(assoc_change(abi.SacState.CANT_STR_ASSOC, 0), [],
                             NOTIFICATION_EOR, ("127.0.0.1", 9))
    assert isinstance(refused, AssociationChange)
    assert (refused.state, refused.peer) == (AssocState.CANT_STR_ASSOC, ("127.0.0.1", 9))
    up(events, 4)
    done = events.receive(assoc_change(abi.SacState.SHUTDOWN_COMP, 4), [], NOTIFICATION_EOR,
                          PEER)
    assert isinstance(done, AssociationChange) and done.reason == ""


def test_data_without_receive_information_is_dropped() -> None:
    assert KernelEvents(100).receive(b"?", [], abi.MSG_EOR, PEER) is None


@given(st.binary(max_size=300), st.sampled_from([0, abi.MSG_EOR, NOTIFICATION_EOR,
                                                 abi.MSG_NOTIFICATION]))
def test_garbage_never_raises(data: bytes, flags: int) -> None:
    events = KernelEvents(1 << 10)
    events.receive(data, [(abi.IPPROTO_SCTP, abi.CmsgType.RCVINFO, data[:28])], flags, PEER)
    events.receive(data, [], flags | abi.MSG_EOR, PEER)


def test_plain_addresses() -> None:
    assert plain_address(("::ffff:127.0.0.1", 5, 0, 0)) == ("127.0.0.1", 5)
    assert plain_address(("::1", 5, 7, 2)) == ("::1", 5, 0, 2)
    assert plain_address(("127.0.0.1", 5)) == ("127.0.0.1", 5)

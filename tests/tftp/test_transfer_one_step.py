"""The one-step paths (``take_ack`` or ``take_block``, then ``finish_step``) against the
general path.

Two cores of the same kind get the same datagrams, timeouts and file bytes; one tries
the one-step path first, as the driver does, the other only ever uses
``receive_datagram``.  Everything either one shows the outside — datagrams, events,
deadline, state, sizes — must be the same after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.tftp.options import TransferOptions
from sockferry.tftp.packets import (
    Data,
    decode_packet,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
)
from sockferry.tftp.receiving import MAX_PENDING_BYTES, ReceivingTransfer, ServerWrite
from sockferry.tftp.sending import SendingTransfer, ServerRead
from sockferry.tftp.transfer import BlockReceived, Event, LastBlockReceived, Timing, Transfer
from tests.tftp.memlink import one_step

PEER = ("peer", 1)
BLKSIZE = 8
# Receivers here hand data over after this many blocks (MAX_PENDING_BYTES would take
# thousands of 8-byte blocks).
PENDING_BLOCKS = 64
CHUNK = 20  # file bytes handed over at a time: not a multiple of BLKSIZE

# Times between steps: the same instant, less than the sample spacing (the round trip
# goes untimed), more than it, and long enough for the timer to expire.
GAPS = st.sampled_from([0.0, 0.0001, 0.003, 0.007, 0.05, 1.5])


@dataclass
class Twin:
    """A core that takes the one-step path when it can, and one that never does."""

    fast: Transfer
    general: Transfer
    source: bytes = b""
    chunk: int = CHUNK
    steps: int = 0
    last_data: int = 0   # wire number of the last DATA sent
    blocks: int = 0      # DATA blocks the receivers took in order
    events: list[Event] = field(default_factory=list)

    def deliver(self, data: bytes, now: float) -> None:
        fast = self.fast
        reply = one_step(fast, data, now)
        if reply is None:
            fast.receive_datagram(data, PEER, now)
        self.general.receive_datagram(data, PEER, now)
        if reply is None:
            self.settle(now)
        else:  # as the driver does: nothing else happens after a one-step answer
            self.steps += 1
            assert self.general.datagrams_to_send() == [(reply, PEER)]
            self.note_sent(reply)
            self.compare()

    def timeout(self, now: float) -> None:
        self.fast.handle_timeout(now)
        self.general.handle_timeout(now)
        self.settle(now)

    def drain(self, now: float) -> None:
        """Collect the events of both, and store a complete file."""
        fast_events, general_events = self._events(self.fast, now), \
            self._events(self.general, now)
        assert repr(fast_events) == repr(general_events)  # errors compare by identity
        self.events += fast_events
        assert self.fast.datagrams_to_send() == self.general.datagrams_to_send()
        self.compare()

    def settle(self, now: float) -> None:
        """What the driver does after the general path: supply file bytes, send,
        collect events."""
        for core in (self.fast, self.general):
            if isinstance(core, SendingTransfer):
                feed(core, self.source, now, self.chunk)
        out = self.fast.datagrams_to_send()
        assert out == self.general.datagrams_to_send()
        for data, _ in out:
            self.note_sent(data)
        self.drain(now)

    def note_sent(self, data: bytes) -> None:
        if data[1] == 3:
            self.last_data = (data[2] << 8) | data[3]

    def compare(self) -> None:
        assert snapshot(self.fast) == snapshot(self.general)

    @staticmethod
    def _events(core: Transfer, now: float) -> list[Event]:
        events = []
        while (event := core.next_event()) is not None:
            events.append(event)
            if isinstance(event, LastBlockReceived) and not core.finished:
                assert isinstance(core, ReceivingTransfer)
                core.confirm_stored(now)
        return events


def snapshot(core: Transfer) -> dict[str, object]:
    """Everything a core holds, timer included: the same inputs must leave the same."""
    state = {name: value for name, value in vars(core).items()
             if name not in ("_rto", "_events", "_decoder")}
    state["_events"] = repr(list(core._events))  # errors compare by identity
    for name in ("_rto", "_decoder"):  # helpers, by their contents
        helper = getattr(core, name, None)
        slots = getattr(type(helper), "__slots__", ())
        state[name] = [getattr(helper, slot) for slot in slots] or getattr(
            helper, "__dict__", helper)
    return state


def feed(core: SendingTransfer, source: bytes, now: float, chunk: int = CHUNK) -> None:
    """Hand over file bytes as the driver does, while the window wants them."""
    while core.wants_data:
        offset = core.size
        piece = source[offset:offset + chunk]
        core.send_data(piece, now, end=offset + len(piece) >= len(source))


# A step is (what, offset, garbage, gap): "next" (the ACK of the last DATA sent, the
# steady state, so most steps), "ack" (the ACK of the last DATA sent plus offset),
# "garbage", "timeout" (at the current time) or "stall" (the peer is silent until the
# timer expires); the step comes after the gap.
SENDER_STEPS = st.lists(st.tuples(
    st.sampled_from(["next"] * 12 + ["ack", "garbage", "timeout", "stall"]),
    st.integers(-3, 1),
    st.sampled_from([b"", b"\x00\x04\x00", b"\x00\x04\x00\x01\x00", b"\x00\x09",
                     encode_oack({"blksize": "8"}), encode_data(1, b"x"),
                     encode_error(3, "disk full")]),
    GAPS), min_size=10, max_size=60)

Step = tuple[str, int, bytes, float]


@settings(max_examples=100, deadline=None)
@given(steps=SENDER_STEPS, size=st.integers(0, 400), windowsize=st.sampled_from([1, 1, 2]),
       oack=st.booleans(), netascii=st.booleans(), chunk=st.sampled_from([1, 7, 8, 9, 20]))
def test_take_ack_is_the_general_path(steps: list[Step], size: int, windowsize: int,
                                      oack: bool, netascii: bool, chunk: int) -> None:
    options = TransferOptions(blksize=BLKSIZE, windowsize=windowsize)
    offer = {"blksize": str(BLKSIZE)} if oack else {}
    fast, general = (ServerRead(PEER, options, offer, Timing(timeout_s=1.0, retries=4), 0.0,
                                netascii_mode=netascii) for _ in range(2))
    twin = Twin(fast, general, source=bytes(b"ab\nc"[i % 4] for i in range(size)),
                chunk=chunk)
    twin.settle(0.0)
    now = 0.0
    for what, offset, garbage, gap in steps:
        now += gap
        if what == "next":
            twin.deliver(encode_ack(twin.last_data), now)
        elif what == "ack":
            twin.deliver(encode_ack(max(twin.last_data + offset, 0)), now)
        elif what == "garbage":
            twin.deliver(garbage, now)
        else:
            now += 1.0 if what == "stall" else 0.0  # 1 s is the timeout bound
            twin.timeout(now)


# A step is (what, offset, length, garbage, gap): "next" (the next block, full: the
# steady state, so most steps), "data" (the block at offset from the next, of length
# bytes), "burst" (a run of full blocks in order, longer than PENDING_BLOCKS), "gap"
# (the block after the next, then the next), "garbage", "timeout", "stall" or "drain"
# (collect the events); the step comes after the gap.
RECEIVER_STEPS = st.lists(st.tuples(
    st.sampled_from(["next"] * 12 + ["data", "burst", "gap", "garbage", "timeout",
                                     "stall", "drain"]),
    st.integers(-2, 2),
    st.sampled_from([BLKSIZE, BLKSIZE + 1, 3, 0]),
    st.sampled_from([b"", b"\x00\x03\x00", b"\x00\x04\x00\x01", b"\x00\x09",
                     encode_error(0, "stop"), encode_oack({"blksize": "8"})]),
    GAPS), min_size=10, max_size=40)


@settings(max_examples=100, deadline=None)
@given(steps=RECEIVER_STEPS, windowsize=st.sampled_from([1, 1, 2]), oack=st.booleans(),
       netascii=st.booleans(), max_size=st.sampled_from([None, None, 95, 96, 800]))
def test_take_block_is_the_general_path(steps: list[tuple[str, int, int, bytes, float]],
                                        windowsize: int, oack: bool, netascii: bool,
                                        max_size: int | None) -> None:
    options = TransferOptions(blksize=BLKSIZE, windowsize=windowsize)
    offer = {"blksize": str(BLKSIZE)} if oack else {}
    fast, general = (ServerWrite(PEER, options, offer, Timing(timeout_s=1.0, retries=4), 0.0,
                                 netascii_mode=netascii, max_size=max_size)
                     for _ in range(2))
    fast.max_pending_bytes = general.max_pending_bytes = PENDING_BLOCKS * BLKSIZE
    twin = Twin(fast, general)
    twin.settle(0.0)
    now = 0.0

    def send(number: int, length: int = BLKSIZE) -> None:
        # Each block ends in CR, which netascii holds back until the next block.
        payload = bytes([number % 256]) * (length - 1) + b"\r" if length else b""
        twin.deliver(encode_data(max(number, 0), payload), now)

    for what, offset, length, garbage, gap in steps:
        now += gap
        following = twin.general.size // BLKSIZE + 1  # the next block, roughly
        if what == "next":
            send(following)
        elif what == "data":
            send(following + offset, length)
        elif what == "burst":
            for number in range(following, following + PENDING_BLOCKS + 8):
                send(number)
        elif what == "gap":
            send(following + 1)
            send(following)
        elif what == "garbage":
            twin.deliver(garbage, now)
        elif what == "drain":
            twin.drain(now)
        else:
            now += 1.0 if what == "stall" else 0.0  # 1 s is the timeout bound
            twin.timeout(now)
    twin.drain(now)


def test_take_ack_and_take_block_carry_a_transfer_past_the_rollover() -> None:
    # 65536 full blocks of 8 bytes and a short one: block numbers wrap from 65535 to 0
    # on the one-step paths, which carry every block but the refills and the last.
    source = bytes(i % 251 for i in range(65536 * BLKSIZE + 5))
    options = TransferOptions(blksize=BLKSIZE)
    sender = ServerRead(PEER, options, {}, Timing(), 0.0)
    receiver = ServerWrite(PEER, options, {}, Timing(), 0.0)
    assert receiver.datagrams_to_send() == [(encode_ack(0), PEER)]
    feed(sender, source, 0.0, chunk=64 * 1024)
    in_flight = [data for data, _ in sender.datagrams_to_send()]
    received: list[bytes] = []
    wires: list[int] = []
    now, steps = 0.0, 0
    while not sender.finished:
        now += 0.00001
        [data] = in_flight
        packet = decode_packet(data)
        assert isinstance(packet, Data)
        wires.append(packet.block)
        ack = one_step(receiver, data, now)
        if ack is None:
            receiver.receive_datagram(data, PEER, now)
            received += collect(receiver, now)
            acks = [ack for ack, _ in receiver.datagrams_to_send()]
        else:
            steps += 1
            acks = [ack]
        [ack] = acks
        reply = one_step(sender, ack, now)
        if reply is None:
            sender.receive_datagram(ack, PEER, now)
            feed(sender, source, now, chunk=64 * 1024)
            in_flight = [data for data, _ in sender.datagrams_to_send()]
        else:
            steps += 1
            in_flight = [reply]
    received += collect(receiver, now)
    assert b"".join(received) == source
    assert wires == [number % 65536 for number in range(1, 65538)]
    assert steps > 2 * 65536 - 2 * 65536 * BLKSIZE // MAX_PENDING_BYTES - 20


def collect(core: ReceivingTransfer, now: float) -> list[bytes]:
    data = []
    while (event := core.next_event()) is not None:
        if isinstance(event, BlockReceived):
            data.append(event.data)
        elif isinstance(event, LastBlockReceived):
            core.confirm_stored(now)
    return data


def test_take_block_hands_over_data_in_batches() -> None:
    core = ServerWrite(PEER, TransferOptions(blksize=BLKSIZE), {}, Timing(), 0.0)
    core.max_pending_bytes = PENDING_BLOCKS * BLKSIZE
    core.datagrams_to_send()
    general = []
    for block in range(1, 2 * (PENDING_BLOCKS + 1) + 1):
        data = encode_data(block, bytes([block]) * BLKSIZE)
        reply = one_step(core, data, 0.001 * block)
        if reply is None:
            general.append(block)
            core.receive_datagram(data, PEER, 0.001 * block)
            [(reply, _)] = core.datagrams_to_send()
            event = core.next_event()
            assert event == BlockReceived(b"".join(
                bytes([n]) * BLKSIZE for n in range(block - PENDING_BLOCKS, block + 1)))
        assert reply == encode_ack(block)
    # One block in PENDING_BLOCKS + 1 takes the general path, and the driver then
    # collects what waits.
    assert general == [PENDING_BLOCKS + 1, 2 * (PENDING_BLOCKS + 1)]


def test_take_block_leaves_the_block_over_the_size_limit_to_the_general_path() -> None:
    core = ServerWrite(PEER, TransferOptions(blksize=BLKSIZE), {}, Timing(), 0.0,
                       max_size=3 * BLKSIZE - 1)
    core.datagrams_to_send()
    assert one_step(core, encode_data(1, b"a" * BLKSIZE), 0.01) == encode_ack(1)
    assert one_step(core, encode_data(2, b"b" * BLKSIZE), 0.02) == encode_ack(2)
    assert core.take_block(encode_data(3, b"c" * BLKSIZE)) is None
    assert core.size == 2 * BLKSIZE


def test_take_ack_leaves_a_block_not_yet_supplied_to_the_general_path() -> None:
    core = ServerRead(PEER, TransferOptions(blksize=BLKSIZE), {}, Timing(), 0.0)
    core.send_data(b"x" * (2 * BLKSIZE - 1), 0.0)  # block 2 lacks its last byte
    assert core.datagrams_to_send() == [(encode_data(1, b"x" * BLKSIZE), PEER)]
    assert core.take_ack(encode_ack(1)) is None


def test_take_block_leaves_the_last_block_to_the_general_path() -> None:
    core = ServerWrite(PEER, TransferOptions(blksize=BLKSIZE), {}, Timing(), 0.0)
    core.datagrams_to_send()
    assert core.take_block(encode_data(1, b"a" * (BLKSIZE - 1))) is None
    assert core.take_block(encode_data(1, b"")) is None

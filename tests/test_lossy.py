"""The tests' one lossy network (tests/lossy.py) does what the tests rely on."""

from __future__ import annotations

import random
import socket

from tests.conftest import wait_until
from tests.lossy import Impairment, LossyUdpRelay, lossy_link


def test_the_same_seed_gives_the_same_fates() -> None:
    def fates(seed: int) -> list[list[tuple[float, bool]]]:
        impairment = Impairment(random.Random(seed), loss=0.3, duplicate=0.2, reorder=0.2,
                                jitter_s=0.001)
        return [impairment.fates() for _ in range(200)]

    assert fates(5) == fates(5) != fates(6)
    drawn = fates(5)
    assert any(f == [] for f in drawn) and any(len(f) == 2 for f in drawn)


def _arrival_order(**impairment: float) -> list[int]:
    link = lossy_link(1, **impairment)
    for n in range(50):
        link.send(b"%d" % n, "a", "b", now=n * 0.0001)
    arrived = []
    while (datagram := link.pop_due(1.0)) is not None:
        arrived.append(int(datagram[0]))
    return arrived


def test_jitter_keeps_a_path_in_order_and_only_reordering_overtakes() -> None:
    assert _arrival_order(jitter_s=0.005) == list(range(50))
    overtaken = _arrival_order(reorder=0.5)
    assert sorted(overtaken) == list(range(50)) and overtaken != list(range(50))


def test_the_relay_is_a_nat_that_loses() -> None:
    """Answers from the server's address come back from the relay's port; answers
    from another server port (a TFTP TID) from a port of their own; loss is counted."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    tid = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tid.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    for sock in (server, tid, client):
        sock.settimeout(5)
    with server, tid, client, LossyUdpRelay(server.getsockname(),
                                            Impairment(random.Random(0))) as relay:
        client.sendto(b"hello", ("127.0.0.1", relay.port))
        data, outside = server.recvfrom(100)
        assert data == b"hello"
        server.sendto(b"from the port", outside)
        assert client.recvfrom(100) == (b"from the port", ("127.0.0.1", relay.port))
        tid.sendto(b"from a tid", outside)
        data, source = client.recvfrom(100)
        assert data == b"from a tid" and source[1] != relay.port
        client.sendto(b"to the tid", source)
        assert tid.recvfrom(100) == (b"to the tid", outside)
        assert (relay.forwarded, relay.dropped) == (4, 0)



def test_the_relay_loses_what_its_impairment_says() -> None:
    lost = LossyUdpRelay(("127.0.0.1", 9), Impairment(random.Random(0), loss=1.0))
    with lost, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(5):
            sender.sendto(b"x", ("127.0.0.1", lost.port))
        wait_until(lambda: lost.dropped == 5, 5, "the relay's thread to see all five")
        assert lost.forwarded == 0

"""Stacks joined by an in-memory lossy link (tests/lossy.py).

Time is virtual: when nothing is deliverable it jumps to the next delivery or deadline,
so a test of minutes of protocol time runs in milliseconds and never sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sockferry.addresses import SockAddr
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssociationChange, AssocId, AssocState, UserMessage
from sockferry.sctp.stack import Stack
from tests.lossy import LossyLink

Filter = Callable[[bytes, SockAddr, SockAddr], bool]


@dataclass
class Node:
    address: tuple[str, int]
    stack: Stack
    messages: list[UserMessage] = field(default_factory=list)
    changes: list[AssociationChange] = field(default_factory=list)
    read_messages: bool = True

    def states(self) -> list[AssocState]:
        return [change.state for change in self.changes]

    def up(self) -> AssocId | None:
        for change in self.changes:
            if change.state in (AssocState.COMM_UP, AssocState.RESTART):
                return change.assoc_id
        return None


class Network:
    """Nodes by address, a link between them, and a virtual clock."""

    def __init__(self, link: LossyLink[SockAddr], seed: int = 1) -> None:
        self.link = link
        self.nodes: dict[tuple[str, int], Node] = {}
        self.now = 0.0
        self._rng = random.Random(seed)

    def add(self, host: str, port: int, config: Config | None = None,
            packet_size: int = 1452) -> Node:
        rng = self._rng

        def random_bytes(n: int) -> bytes:
            return rng.randbytes(n)

        stack = Stack(port, config or Config(), secret=rng.randbytes(32), rng=random_bytes,
                      packet_size=lambda _address: packet_size)
        node = Node((host, port), stack)
        self.nodes[(host, port)] = node
        return node

    def replace(self, node: Node, config: Config | None = None,
                packet_size: int = 1452) -> Node:
        """The same address with a fresh stack: the host crashed and came back."""
        return self.add(node.address[0], node.address[1], config, packet_size)

    def connect(self, client: Node, server: Node) -> AssocId:
        host, port = server.address
        return client.stack.connect(host, port, server.address, self.now)

    def _pump(self) -> bool:
        moved = False
        for node in list(self.nodes.values()):
            for data, destination in node.stack.datagrams_to_send():
                assert isinstance(destination, tuple)
                self.link.send(data, node.address, destination, self.now)
                moved = True
            for event in node.stack.events():
                moved = True
                if isinstance(event, UserMessage):
                    node.messages.append(event)
                    if node.read_messages:
                        node.stack.release(event.assoc_id, len(event.data), self.now)
                else:
                    node.changes.append(event)
        return moved

    def _next_time(self) -> float | None:
        times = [t for t in [self.link.next_delivery(),
                             *(n.stack.next_deadline() for n in self.nodes.values())]
                 if t is not None]
        return min(times) if times else None

    def _step(self, now: float) -> None:
        self.now = max(self.now, now)
        while (datagram := self.link.pop_due(self.now)) is not None:
            data, source, destination = datagram
            node = self.nodes.get(destination)
            if node is not None:
                node.stack.receive_datagram(data, source, self.now)
        for node in self.nodes.values():
            deadline = node.stack.next_deadline()
            if deadline is not None and deadline <= self.now:
                node.stack.handle_timeout(self.now)
                after = node.stack.next_deadline()
                # A timer that fired and is still due would spin a real event loop.
                assert after is None or after > self.now, f"timer stuck at {after}"

    def run(self, until: Callable[[], bool], max_time_s: float = 3600.0,
            max_steps: int = 200_000) -> None:
        """Move packets and time until ``until()``; fail if it takes too long."""
        for _ in range(max_steps):
            while self._pump():
                pass
            if until():
                return
            next_time = self._next_time()
            if next_time is None:
                raise AssertionError("nothing left to happen, and the condition never held")
            if next_time > max_time_s:
                raise AssertionError(f"condition not met within {max_time_s} s of link time")
            self._step(next_time)
        raise AssertionError(f"condition not met within {max_steps} steps")

    def run_for(self, seconds: float, max_steps: int = 200_000) -> None:
        """Let ``seconds`` of link time pass, whatever happens in them."""
        end = self.now + seconds
        for _ in range(max_steps):
            while self._pump():
                pass
            next_time = self._next_time()
            if next_time is None or next_time > end:
                self.now = end
                return
            self._step(next_time)
        raise AssertionError(f"{seconds} s did not pass within {max_steps} steps")

"""A UDP relay that loses datagrams: SCTP over UDP through a bad network, for tests."""

from __future__ import annotations

import random
import selectors
import socket
import threading

MAX_DATAGRAM = 65536


class LossyRelay:
    """Forwards one client's datagrams to ``upstream`` and the answers back, dropping
    each with probability ``loss`` (seeded).  Listens on 127.0.0.1, port ``port``."""

    def __init__(self, upstream: tuple[str, int], loss: float, seed: int) -> None:
        self._rng = random.Random(seed)
        self._loss = loss
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.connect(upstream)
        self.port = int(self._front.getsockname()[1])
        self.forwarded = 0
        self.dropped = 0
        self._client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._front.close()
        self._back.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._front, selectors.EVENT_READ)
            selector.register(self._back, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    self._pass_on(key.fileobj is self._front)

    def _pass_on(self, from_client: bool) -> None:
        try:
            if from_client:
                data, self._client = self._front.recvfrom(MAX_DATAGRAM)
            else:
                data = self._back.recv(MAX_DATAGRAM)
        except OSError:  # ICMP from a closed port, reported on the next call
            return
        if self._rng.random() < self._loss:
            self.dropped += 1
            return
        self.forwarded += 1
        try:
            if from_client:
                self._back.send(data)
            elif self._client is not None:
                self._front.sendto(data, self._client)
        except OSError:
            pass

"""``--limit-rate``: a stream that moves at most so many bytes per second, both ways.

``Pacer`` is the arithmetic (a token bucket that may run into debt), ``PacedStream``
wraps any ``Stream`` and sleeps before it sends and after it receives as the bucket
says.  Sends are cut into bursts so that a 16 MiB DATA body does not leave at line
rate and then pause for seconds; receiving slowly is enough to slow the sender, since
TCP's flow control (or SCTP's) stops it once our buffer is full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence

from sockferry.streams import Hasher, Stream

MIN_BURST = 16 * 1024


class Pacer:
    """At most ``rate`` bytes per second on average, with bursts of ``burst`` bytes."""

    def __init__(self, rate: int, now: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("a rate is a positive number of bytes per second")
        self.rate = rate
        # A twentieth of a second's worth: smooth at any rate, few sleeps at high ones.
        self.burst = burst if burst is not None else max(MIN_BURST, rate // 20)
        self._tokens = float(self.burst)
        self._at = now

    def delay(self, count: int, now: float) -> float:
        """Take ``count`` bytes; the seconds to wait before they may move (0: at once).
        More than there is puts the bucket in debt, which the wait pays off."""
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= count
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class PacedStream:
    """``inner`` at most ``pacer.rate`` bytes per second in each direction."""

    def __init__(self, inner: Stream, rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._clock = clock
        self._out = Pacer(rate, clock())
        self._in = Pacer(rate, clock())

    def __getattr__(self, name: str) -> object:
        # transport, binding, ...: whatever the inner stream has.
        return getattr(self.inner, name)

    # The Stream attributes, the inner stream's (it counts the bytes).
    @property
    def peer(self) -> str:
        return self.inner.peer

    @peer.setter
    def peer(self, value: str) -> None:
        self.inner.peer = value

    @property
    def local(self) -> str:
        return self.inner.local

    @local.setter
    def local(self, value: str) -> None:
        self.inner.local = value

    @property
    def bytes_in(self) -> int:
        return self.inner.bytes_in

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:
        self.inner.bytes_in = value

    @property
    def bytes_out(self) -> int:
        return self.inner.bytes_out

    @bytes_out.setter
    def bytes_out(self, value: int) -> None:
        self.inner.bytes_out = value

    async def _wait(self, pacer: Pacer, count: int) -> None:
        pause = pacer.delay(count, self._clock())
        if pause > 0:
            await asyncio.sleep(pause)

    async def receive(self) -> memoryview:
        data = await self.inner.receive()
        await self._wait(self._in, len(data))  # the view stays ours until we return
        return data

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        await self._wait(self._out, sum(len(b) for b in buffers))
        await self.inner.send(buffers)

    async def send_file(self, fd: int, offset: int, count: int, hasher: Hasher) -> None:
        for start, length in self._bursts(offset, count):
            await self._wait(self._out, length)
            await self.inner.send_file(fd, start, length, hasher)

    async def receive_into_file(self, fd: int, count: int, hasher: Hasher | None,
                                ) -> tuple[int, OSError | None]:
        taken, error = await self.inner.receive_into_file(fd, min(count, self._in.burst),
                                                          hasher)
        await self._wait(self._in, taken)
        return taken, error

    def _bursts(self, offset: int, count: int) -> Iterator[tuple[int, int]]:
        step, end = self._out.burst, offset + count
        for start in range(offset, end, step):
            yield start, min(step, end - start)

    def shutdown_write(self) -> None:
        self.inner.shutdown_write()

    def close(self) -> None:
        self.inner.close()

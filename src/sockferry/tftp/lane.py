"""A lock-step transfer's steady state, run on a thread of its own.

In lock-step every block is a round trip, and the time one side takes to turn a datagram
into its answer is added to every one of them.  Through the event loop that turn costs
an epoll_wait, the loop's dispatch and a recv; here a blocking recv wakes straight into
the core's one-step path (``take_ack``/``take_block``, send, ``finish_step``) and goes
back to sleep: one syscall fewer and no dispatch per block.

The lane owns the core while it runs; the event loop does not touch it until the lane
hands back.  Between steps, when the core says ``service_due``, the lane runs the
driver's file I/O (supplying file bytes to a sender, storing a receiver's) on its own
thread, off the event loop.  It hands back, through ``call_soon_threadsafe``, on the
first thing that is not the steady state: a datagram the one-step path does not take
(given back to be handled the general way), a receive timeout (the core's deadline
passed: the loop runs the timeout), a socket error, or a service that left the steady
state (end of file, a storage error).  The socket is blocking with SO_RCVTIMEO set to
the time left until the core's deadline, so waiting costs the one recv.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sockferry.tftp.packets import MAX_DATAGRAM_BYTES

# SO_RCVTIMEO is moved when the time left differs from it by more than this fraction:
# an early wakeup only costs a hand-back, so the option need not follow every block.
TIMEOUT_SLACK = 0.25
# The shortest receive timeout set; 0 would mean "wait forever".
MIN_WAIT_S = 0.001


@dataclass(frozen=True, slots=True)
class LaneReturn:
    """Why the lane handed the core back: ``datagram`` to handle the general way, or
    ``error`` from a receive (``sending`` False) or a send, or ``fault``, or none of
    them (a timeout, a service that left the steady state, or the lane was stopped)."""

    datagram: bytes | None = None
    error: OSError | None = None
    sending: bool = False
    fault: Exception | None = None  # a bug: the transfer fails, and the log shows it


class SteppingCore(Protocol):
    """What the lane needs of a transfer core besides its ``take_*`` method."""

    service_due: bool

    def finish_step(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...


class LockStepLane:
    """Runs ``take`` / send / ``core.finish_step`` on ``sock`` (connected) until
    something else arrives; then calls ``on_return`` on the event loop's thread.
    ``service`` does the driver's file I/O when the core asks for it, and says whether
    the core is still in steady state."""

    def __init__(self, sock: socket.socket, core: SteppingCore,
                 take: Callable[[bytes], bytes | None], service: Callable[[], bool],
                 on_return: Callable[[LaneReturn], None]) -> None:
        self._sock = sock
        self._core = core
        self._take = take
        self._service = service
        self._on_return = on_return
        self._loop = asyncio.get_running_loop()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wait_s = 0.0  # SO_RCVTIMEO as last set; 0 = none

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Hand the core to the lane (call on the loop's thread, core in steady state)."""
        if self._thread is not None or self._stopping:
            return
        self._thread = threading.Thread(target=self._run, name="tftp-lane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take the core back for good, waiting for the lane to let go of it (a step at
        most: the lane's recv is woken by shutting down the socket's receive side)."""
        self._stopping = True
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)
        thread.join()
        self._thread = None

    def _returned(self, why: LaneReturn) -> None:
        # On the loop's thread, after the lane's thread let go of the core.
        if self._thread is None:
            return  # stopped meanwhile: stop() already took the core back
        self._thread.join()
        self._thread = None
        self._on_return(why)

    def _run(self) -> None:
        why = LaneReturn()
        try:
            why = self._steps()
        except Exception as exc:  # a bug: handed to the loop, which reports it
            why = LaneReturn(fault=exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(self._returned, why)

    def _steps(self) -> LaneReturn:
        sock, core, take, service = self._sock, self._core, self._take, self._service
        finish_step, deadline = core.finish_step, core.next_deadline
        recv, send, clock = sock.recv, sock.send, time.monotonic
        # The event loop's reader makes the descriptor non-blocking each time it is
        # added (libuv does); the lane waits in recv.
        sock.setblocking(True)
        self._set_wait(deadline(), clock())
        while not self._stopping:
            try:
                data = recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return LaneReturn()  # SO_RCVTIMEO: the deadline has come
            except OSError as exc:
                return LaneReturn(error=exc)
            if self._stopping:
                break
            reply = take(data)
            if reply is None:
                return LaneReturn(datagram=data)
            try:
                send(reply)
            except OSError as exc:
                finish_step(clock())
                return LaneReturn(error=exc, sending=True)
            now = clock()
            finish_step(now)
            if core.service_due and not service():
                break
            due = deadline()
            wait = self._wait_s
            if due is None or not (wait * (1 - TIMEOUT_SLACK) <= due - now <= wait):
                self._set_wait(due, now)
        return LaneReturn()

    def _set_wait(self, due: float | None, now: float) -> None:
        wait = 0.0 if due is None else max(due - now, MIN_WAIT_S)
        if wait == self._wait_s:
            return
        seconds = int(wait)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                              struct.pack("@ll", seconds, int((wait - seconds) * 1e6)))
        self._wait_s = wait

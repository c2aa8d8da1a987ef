"""The one timer a driver keeps for its core's next deadline.

Cores say when they next need the clock (``next_deadline()``); a driver arms one loop
timer for it.  Moving that timer on every packet would cost more than the timer: one set
for earlier than needed is left alone — it fires, the core finds nothing due, and it is
set again for the real deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class LazyTimer:
    """``arm(deadline)`` moves the timer only earlier; ``callback(due)`` gets the
    deadline it was armed for (never later than the loop's time at that point)."""

    __slots__ = ("_callback", "_handle", "_loop", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 callback: Callable[[float], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.at = math.inf  # when it fires; inf while it is not armed

    def arm(self, deadline: float | None) -> None:
        """Fire by ``deadline`` (None: the core needs no timer, so none is kept)."""
        if deadline is None:
            self.cancel()
            return
        if self._handle is not None:
            if self.at <= deadline:
                return  # fires early, finds nothing due, and is armed again
            self._handle.cancel()
        self.at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = math.inf

    def _fire(self) -> None:
        due, self.at, self._handle = self.at, math.inf, None
        self._callback(due)

"""``--retry``: connect again after losing the server, and go on where the copy stopped.

Only a lost, refused or silent connection is tried again (``NetworkError``,
``TransferTimeout``): a refused token, a bad path or a full disk would fail the same way
the next time.  The waits double from ``FIRST_WAIT_S`` up to ``MAX_WAIT_S``, so a server
that restarts, or a balancer that notices a dead backend after a few health checks, is
found again without hammering it.  Each attempt runs the whole copy with resume on, but
leaves alone the files the earlier ones saw confirmed: every other file continues from
what its receiver kept (proven by digest), so a retry moves only what is missing of the
files that were cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sockferry.errors import NetworkError, SockferryError, TransferTimeout

T = TypeVar("T")

FIRST_WAIT_S = 1.0
MAX_WAIT_S = 30.0
MAX_RETRIES = 100  # what --retry accepts: at the longest wait, well over 45 minutes


def waits(retries: int, first_s: float = FIRST_WAIT_S,
          cap_s: float = MAX_WAIT_S) -> Iterator[float]:
    """The pause before each of ``retries`` further attempts: 1, 2, 4, ... up to the cap."""
    wait = first_s
    for _ in range(retries):
        yield wait
        wait = min(wait * 2, cap_s)


def worth_retrying(error: BaseException | None) -> bool:
    """Whether ``error`` means the server was lost rather than that it said no."""
    return isinstance(error, (NetworkError, TransferTimeout))


async def with_retries(attempt: Callable[[], Awaitable[T]], retries: int,
                       on_retry: Callable[[SockferryError, float, int], None],
                       lost_in: Callable[[T], SockferryError | None] = lambda _result: None,
                       first_wait_s: float = FIRST_WAIT_S) -> T:
    """``attempt()``, run again up to ``retries`` times while it fails for want of a
    server — by raising, or by a result in which ``lost_in`` finds such an error (a copy
    reports each file's failure in its outcomes); ``on_retry(error, wait_s, number)`` is
    told before each pause.  The last attempt's result is returned whatever it holds."""
    for number, wait in enumerate(waits(retries, first_wait_s), start=1):
        try:
            result = await attempt()
        except SockferryError as exc:
            if not worth_retrying(exc):
                raise
            error = exc
        else:
            lost = lost_in(result)
            if lost is None or not worth_retrying(lost):
                return result
            error = lost
        on_retry(error, wait, number)
        await asyncio.sleep(wait)
    return await attempt()

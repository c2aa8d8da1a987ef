"""What every sub-command shares: exit codes and the event loop runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from sockferry import errors

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class ExitCode:
    """Documented in the README; stable across releases."""

    OK = 0
    FAILURE = 1          # an error that fits none of the classes below
    USAGE = 2            # bad command line or configuration
    NETWORK = 3          # could not resolve, connect, or the connection broke
    AUTH = 4             # authentication failed, or the server's TLS certificate is refused
    REFUSED = 5          # the peer refused a request (no such file, not allowed, ...)
    STORAGE = 6          # a local file could not be read or written
    PROTOCOL = 7         # the peer broke the protocol or failed a digest check
    TIMEOUT = 8          # the peer went silent; retries exhausted
    NOT_AVAILABLE = 9    # a needed facility is missing on this machine (kernel SCTP, ...)
    INTERRUPTED = 130    # Ctrl-C


_EXIT_CODES: tuple[tuple[type[errors.SockferryError], int], ...] = (
    (errors.UsageError, ExitCode.USAGE),
    (errors.AuthenticationFailed, ExitCode.AUTH),
    (errors.IdentityRefused, ExitCode.AUTH),
    (errors.PeerRefused, ExitCode.REFUSED),
    (errors.TransferTimeout, ExitCode.TIMEOUT),
    (errors.NetworkError, ExitCode.NETWORK),
    (errors.StorageError, ExitCode.STORAGE),
    (errors.ProtocolError, ExitCode.PROTOCOL),
    (errors.NotAvailable, ExitCode.NOT_AVAILABLE),
)


def exit_code_for(exc: errors.SockferryError) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILURE


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's own loop.

    ``SOCKFERRY_LOOP=asyncio`` forces the standard loop (for comparisons).
    """
    # asyncio costs ~40 ms to import: only commands that run a loop pay for it.
    import asyncio  # noqa: PLC0415

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get("SOCKFERRY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)

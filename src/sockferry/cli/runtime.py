"""What every sub-command shares: exit codes and the event loop runner."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from sockferry import errors

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class ExitCode:
    """Stable across releases; what each means is EXIT_CODE_MEANINGS (the README's table
    and the man page say the same)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NETWORK = 3
    AUTH = 4
    REFUSED = 5
    STORAGE = 6
    PROTOCOL = 7
    TIMEOUT = 8
    NOT_AVAILABLE = 9
    INTERRUPTED = 130


# One sentence per code: sockferry(1) lists them (cli/manual.py), and
# tests/cli/test_manual.py checks that every code has one and that the README's table
# has a row for each.
EXIT_CODE_MEANINGS: dict[int, str] = {
    ExitCode.OK: "Success.",
    ExitCode.FAILURE: "An error that fits none of the classes below, internal errors "
    "included.",
    ExitCode.USAGE: "Usage: bad arguments or configuration, a missing, unreadable, unsafe "
    "or guessable token file, or an unusable TLS certificate or key.",
    ExitCode.NETWORK: "Network: the name does not resolve, the connection was refused or "
    "reset, nothing answered (probe), or a server's address is already in use.",
    ExitCode.AUTH: "Authentication failed, or the server's TLS certificate is not trusted "
    "(not signed by --ca, not the pinned fingerprint, or changed since it was first "
    "trusted).",
    ExitCode.REFUSED: "The peer refused a request (no such file, outside the root, "
    "exists, ...).",
    ExitCode.STORAGE: "Local storage: a local file could not be read or written, or "
    "standard output was closed before get ... - wrote all of the file.",
    ExitCode.PROTOCOL: "Protocol: the peer broke the protocol, or a digest did not match.",
    ExitCode.TIMEOUT: "Timeout: the peer stopped making progress, or did not complete the "
    "handshake (TCP or TLS) within --timeout.",
    ExitCode.NOT_AVAILABLE: "A needed facility is not available on this machine (kernel "
    "SCTP, ...).",
    ExitCode.INTERRUPTED: "Interrupted (Ctrl-C).",
}


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


@contextlib.contextmanager
def asyncio_without_ssl() -> Iterator[None]:
    """Imports made inside load asyncio, if they do, as a Python without ssl would:
    asyncio imports ssl (libssl loaded: ~6 ms of a command's start) for its own TLS
    transports, which sockferry never uses — its TLS runs over memory BIOs
    (tlsstream.py), and what needs ssl (that, and uvloop) imports it itself, later."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        yield
        return
    sys.modules["ssl"] = None  # type: ignore[assignment] # import ssl raises ImportError
    try:
        yield
    finally:
        del sys.modules["ssl"]


def run_async(coro: Coroutine[Any, Any, T], *, fastest_receiver: bool = True) -> T:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's own loop.

    ``fastest_receiver=False``: asyncio's own loop, for commands that only send: uvloop receives
    faster (a 512 MiB ``get`` in 0.61 against 0.66 s, 9 farm-bench pairs with
    ``SOCKFERRY_LOOP=asyncio`` as the other side), but sends no faster, and loading it
    (with ssl) costs ~8 ms of start-up.  ``SOCKFERRY_LOOP=asyncio`` forces the
    standard loop (for comparisons).
    """
    # asyncio costs ~40 ms to import: only commands that run a loop pay for it.
    import asyncio  # noqa: PLC0415

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if fastest_receiver and os.environ.get("SOCKFERRY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)

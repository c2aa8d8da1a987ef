"""Memory given back after a burst of connections, and measured (resident set size)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import cast


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS: nothing to call)."""
    name = ctypes.util.find_library("c")
    try:
        return cast("Callable[[int], int]", ctypes.CDLL(name).malloc_trim) if name else None
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return the free memory at the top of the heap and in free pages to the system.

    Python's allocator frees its arenas itself, but glibc keeps what buffers and
    objects larger than 512 bytes took in a burst (a thousand connections' state) until
    asked; malloc_trim(0) asks.  False where there is no glibc."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True


def rss_bytes(pid: int | None = None) -> int:
    """The resident set size of ``pid`` (default: this process), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

"""What libc can say about, and do to, a whole file system (Linux, through ctypes):
whether it lives in memory only, and syncfs(2).  Elsewhere neither is known."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

# statfs(2) f_type of file systems that live in memory only: TMPFS_MAGIC, RAMFS_MAGIC.
_MEMORY_FILE_SYSTEMS = frozenset({0x01021994, 0x858458F6})


def lives_in_memory(fd: int) -> bool:
    """True when ``fd`` is on tmpfs or ramfs: there is no disk, so nothing to flush."""
    return _file_system_type(fd) in _MEMORY_FILE_SYSTEMS


def _file_system_type(fd: int) -> int:
    """statfs(2) f_type of the file system holding ``fd`` (Linux), or -1 if unknown."""
    fstatfs = _fstatfs()
    if fstatfs is None:
        return -1
    import ctypes  # noqa: PLC0415 - loaded by the servers only, not every command

    buffer = (ctypes.c_long * 64)()  # struct statfs starts with f_type, a long
    if fstatfs(fd, buffer) != 0:
        return -1
    return buffer[0] & 0xFFFF_FFFF


@functools.cache
def _fstatfs() -> Callable[[int, ctypes.Array[ctypes.c_long]], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - see _file_system_type

    try:
        function = ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


@functools.cache
def find_syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2) (flush one file system), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - see _file_system_type

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs

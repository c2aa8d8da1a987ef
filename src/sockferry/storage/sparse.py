"""Reading a sparse file: where its data runs and holes are."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


def data_segments(fd: int, size: int, *, sparse: bool) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_hole)`` runs covering ``size`` bytes of ``fd``.

    With ``sparse`` the holes are found with SEEK_DATA/SEEK_HOLE; otherwise (or where
    the file system cannot say) the whole file is one data run.
    """
    if not sparse or size == 0:
        if size:
            yield 0, size, False
        return
    offset = 0
    while offset < size:
        try:
            data_at = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                yield offset, size - offset, True
                return
            yield offset, size - offset, False  # no SEEK_DATA here: treat as data
            return
        data_at = min(data_at, size)
        if data_at > offset:
            yield offset, data_at - offset, True
        if data_at >= size:
            return
        hole_at = min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
        yield data_at, hole_at - data_at, False
        offset = hole_at


def is_sparse(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs: worth looking for holes."""
    return st.st_blocks * 512 < st.st_size

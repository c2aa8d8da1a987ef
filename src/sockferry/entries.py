"""What a listing says of one name — ``Entry`` and its ``Kind`` — and the limits on
names and paths (pure: shared by the protocol cores and the storage package, which does the I/O).
"""

from __future__ import annotations

import os
import stat
from enum import Enum

from sockferry.records import record

# Linux's NAME_MAX and PATH_MAX: longer names could never be created, so they are refused
# before touching the disk.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

class Kind(Enum):
    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@record
class Entry:
    """What STAT and LIST report of one name."""

    path: str
    kind: Kind
    mode: int
    size: int
    mtime_ns: int

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> Entry:
        kind = _KIND_OF_FORMAT.get(stat.S_IFMT(st.st_mode), Kind.OTHER)
        size = st.st_size if kind is Kind.FILE else 0
        return cls(path, kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns)


_KIND_OF_FORMAT = {stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIRECTORY,
                   stat.S_IFLNK: Kind.SYMLINK}

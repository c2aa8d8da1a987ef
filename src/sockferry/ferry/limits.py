"""What one connection, and one root, may take from a ``serve`` (docs/protocol.md §7).

Bookkeeping only: the server asks before it starts a transfer and reports what it
committed; every refusal is a sentence for the client's ERROR (TOO_LARGE or NO_SPACE).
"""

from __future__ import annotations

from sockferry.records import mutable_record
from sockferry.units import format_bytes

DEFAULT_MAX_FILE_SIZE = 4 * 1024**4  # 4 TiB: below ext4's 16 TiB, far above real files
DEFAULT_MAX_LIST_ENTRIES = 1_000_000


class Budget:
    """One connection's count of files and bytes against its limits."""

    __slots__ = ("bytes", "files", "limited", "max_bytes", "max_files")

    def __init__(self, max_files: int = 0, max_bytes: int = 0) -> None:
        """0: no limit.  Files are PUT, PUT_INLINE, PUT_AT and GET requests taken; bytes
        the sizes they announce or serve."""
        self.max_files, self.max_bytes = max_files, max_bytes
        self.limited = bool(max_files or max_bytes)  # asked once per file: no property
        self.files = 0
        self.bytes = 0

    def take(self, path: str, size: int) -> str | None:
        """Count a transfer of ``size`` bytes, or say why it is refused (nothing counted)."""
        if self.max_files and self.files >= self.max_files:
            return (f"'{path}' refused: this connection has had its {self.max_files} "
                    "files (the server's --max-files-per-connection); reconnect to go on")
        if self.max_bytes and self.bytes + size > self.max_bytes:
            return (f"'{path}' ({format_bytes(size)}) refused: this connection would go over "
                    f"the server's --max-bytes-per-connection of "
                    f"{format_bytes(self.max_bytes)} "
                    f"({format_bytes(self.bytes)} so far); reconnect to go on")
        self.files += 1
        self.bytes += size
        return None

    def grow(self, path: str, count: int) -> str | None:
        """A streamed upload taken with size 0 is ``count`` bytes longer: count them, or
        say why not."""
        if self.max_bytes and self.bytes + count > self.max_bytes:
            return (f"'{path}' refused after {format_bytes(self.bytes)}: this connection "
                    "went over the server's --max-bytes-per-connection of "
                    f"{format_bytes(self.max_bytes)}; reconnect to go on")
        self.bytes += count
        return None


@mutable_record
class Reservation:
    """Room taken for one upload: ``size`` bytes coming, ``replaced`` going (overwrite);
    a streamed upload's ``size`` grows as its body comes (``Quota.grow``)."""

    size: int
    replaced: int


class Quota:
    """The bytes under a root against ``--quota``, kept approximately and cheaply.

    ``used`` starts as what a scan at start finds (``measured``, from a worker thread:
    until then only this server's own uploads count) and follows what this server
    commits, less what those uploads replaced.  Uploads in progress reserve their
    announced size, so concurrent ones cannot overshoot together.  Files changed by
    other means are seen at the next start; partial files of resumable uploads count
    when the scan sees them (they have their own --partial-max-bytes).
    """

    __slots__ = ("limit", "reserved", "scanned", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.reserved = 0
        self.scanned = False

    def measured(self, found: int) -> None:
        self.used += found
        self.scanned = True

    def reserve(self, path: str, size: int, replaced: int) -> Reservation | str:
        """Room for an upload, or why there is none."""
        after = self.used + self.reserved + size - replaced
        if size > replaced and after > self.limit:
            free = max(0, self.limit - self.used - self.reserved)
            return (f"'{path}' ({format_bytes(size)}) would go over this server's quota of "
                    f"{format_bytes(self.limit)} ({format_bytes(free)} free); free some "
                    "space on the server or ask for a larger --quota")
        self.reserved += size
        return Reservation(size, replaced)

    def grow(self, path: str, reservation: Reservation, size: int) -> str | None:
        """Room for a streamed upload that has come to ``size`` bytes, or why there is
        none (the room taken so far stays reserved until the upload ends)."""
        extra = size - reservation.size
        after = self.used + self.reserved + extra
        if size > reservation.replaced and after - reservation.replaced > self.limit:
            return (f"'{path}' went over this server's quota of {format_bytes(self.limit)} "
                    f"after {format_bytes(reservation.size)}; free some space on the server "
                    "or ask for a larger --quota")
        self.reserved += extra
        reservation.size = size
        return None

    def release(self, reservation: Reservation) -> None:
        """The upload ended, committed or not."""
        self.reserved -= reservation.size

    def freed(self, size: int) -> None:
        """``size`` bytes under the root were removed (DELETE)."""
        self.used = max(0, self.used - size)

    def committed(self, reservation: Reservation) -> None:
        self.used = max(0, self.used + reservation.size - reservation.replaced)

"""What a ferry session tells its driver (pure): the events it queues, and the state it
keeps of each request (its kind and phase) on either side of the connection.
"""

from __future__ import annotations

from enum import Enum, auto

from sockferry.entries import Entry
from sockferry.records import mutable_record, record


class Phase(Enum):
    """Where one request stands, seen from the side that holds it."""

    SENDING = auto()  # our DATA is flowing (client PUT, server GET)
    RECEIVING = auto()  # their DATA is flowing (server PUT, client GET)
    DISCARDING = auto()  # refused while their DATA still flows: swallow until DONE/CANCEL
    AWAIT_REPLY = auto()  # our side is complete; the verdict is pending
    SERVING = auto()  # server: working on GET/LIST/STAT/MKDIR


class RequestKind(Enum):
    PUT = auto()
    GET = auto()
    LIST = auto()
    STAT = auto()
    MKDIR = auto()
    PARTIAL = auto()  # RESUME: what the server keeps of an upload
    DELETE = auto()  # SYNC: remove a name
    CHECKSUM = auto()  # SYNC: the digest of a file
    SYMLINK = auto()  # LINKS: make a link
    READLINK = auto()  # LINKS: read a link
    QUICK_CHECK = auto()  # QUICK_CHECK: which names the server has unchanged


@mutable_record
class RequestState:
    kind: RequestKind
    phase: Phase
    size: int = 0  # bytes the DATA frames must total (QUICK_CHECK: the names asked)
    done: int = 0  # bytes so far
    cancelled: bool = False
    offset: int = 0  # RESUME: a GET's proven offset (the body may start there)
    streamed: bool = False  # STREAM: ``size`` is only a bound; DONE says where it ends

    @property
    def left(self) -> int:
        return self.size - self.done


@record
class ClientAuthenticated:
    software: str
    features: int


@record
class ServerVerified:
    software: str
    features: int
    max_requests: int


@record
class PutRequested:
    request: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    keep_mtime: bool
    offset: int = 0  # RESUME (PUT_AT): the body is the file from here on
    resumable: bool = False  # RESUME: keep the partial file if interrupted
    streamed: bool = False  # STREAM: ``size`` is 0, the length is known at PutFinished


@record
class SmallFileReceived:
    """A whole file in one frame (PUT_INLINE): the request now awaits its verdict."""

    request: int
    path: str
    mode: int
    mtime_ns: int
    keep_mtime: bool
    data: bytes
    digest: bytes


@record
class SmallFilesReceived:
    """PUT_INLINE files that arrived one after the other, in order, with no other event
    between them (one event for a run of them: a tree of small files is one per read)."""

    files: list[SmallFileReceived]


@record
class BodyReceived:
    """File bytes; ``data`` may view the fed buffer: consume before the next feed."""

    request: int
    data: bytes | memoryview


@record
class HoleReceived:
    """``length`` zero bytes of the file that were not sent."""

    request: int
    length: int


@record
class PutFinished:
    request: int
    digest: bytes
    size: int  # what the body came to (the announced size, unless streamed)


@record
class RequestCancelled:
    request: int


@record
class GetRequested:
    request: int
    path: str
    offset: int
    prefix_digest: bytes | None = None  # RESUME: the client's digest of its first offset


@record
class PartialRequested:
    """RESUME: answer with ``prefix`` (what is kept towards ``path``) or ``refuse``."""

    request: int
    path: str


@record
class PrefixReceived:
    """RESUME: the server keeps ``length`` bytes towards the path, with this digest."""

    request: int
    length: int
    digest: bytes


@record
class ListRequested:
    request: int
    path: str
    recursive: bool


@record
class StatRequested:
    request: int
    path: str


@record
class MkdirRequested:
    request: int
    path: str
    mode: int


@record
class PutCommitted:
    request: int
    size: int
    digest: bytes


@record
class DeleteRequested:
    request: int
    path: str
    directory: bool


@record
class ChecksumRequested:
    request: int
    path: str


@record
class SymlinkRequested:
    request: int
    path: str
    target: str


@record
class ReadlinkRequested:
    request: int
    path: str


@record
class LinkRead:
    """The answer to READLINK."""

    request: int
    target: str


@record
class Linked:
    """SYMLINK answered OK."""

    request: int


@record
class MkdirDone:
    request: int


@record
class Deleted:
    request: int


@record
class QuickCheckRequested:
    """QUICK_CHECK: which of ``names`` (kind, size, mtime_ns, name) in the directory
    ``path`` the server has unchanged."""

    request: int
    path: str
    names: tuple[tuple[int, int, int, str], ...]


@record
class QuickChecked:
    """The answer to QUICK_CHECK: bit i of ``bitmap`` set when name i is unchanged."""

    request: int
    bitmap: bytes


@record
class Summed:
    """The answer to CHECKSUM: the file's size and digest."""

    request: int
    size: int
    digest: bytes


@record
class FileStarted:
    request: int
    size: int
    mode: int
    mtime_ns: int
    offset: int = 0  # RESUME: the body starts here (the prefix matched)


@record
class FileFinished:
    request: int
    digest: bytes


@record
class EntriesReceived:
    request: int
    entries: tuple[Entry, ...]
    last: bool


@record
class RequestFailed:
    request: int
    code: int
    message: str


@record
class InputEnded:
    """The peer closed its sending side; ``open_requests`` were still unfinished."""

    open_requests: tuple[int, ...]


Event = (ClientAuthenticated | ServerVerified | PutRequested | SmallFilesReceived
         | BodyReceived | HoleReceived
         | PutFinished
         | RequestCancelled | GetRequested | ListRequested | StatRequested | MkdirRequested
         | PutCommitted | MkdirDone | FileStarted | FileFinished | EntriesReceived
         | RequestFailed | InputEnded | PartialRequested | PrefixReceived
         | DeleteRequested | ChecksumRequested | Deleted | Summed | SymlinkRequested
         | ReadlinkRequested | LinkRead | Linked | QuickCheckRequested | QuickChecked)


# The requests OK answers, and the event it makes of each on the client.
OK_EVENTS: dict[RequestKind, type[MkdirDone | Deleted | Linked]] = {
    RequestKind.MKDIR: MkdirDone, RequestKind.DELETE: Deleted, RequestKind.SYMLINK: Linked}

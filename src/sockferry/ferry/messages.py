"""Ferry protocol v1 messages (pure): one record per frame type, with the header layout,
the codes and flags and the limits they obey.  The normative text is docs/protocol.md;
``codec`` turns these records into bytes and back, ``parser`` cuts a stream into them.

Every frame is a 12-byte header followed by ``length`` bytes of body::

    type u8 | flags u8 | reserved u16 (0) | request u32 | length u32

All integers are big-endian.  DATA bodies are file bytes; every other body is a
fixed layout with length-prefixed strings, each bounded by a named limit below.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

from sockferry.entries import Entry
from sockferry.records import record

HEADER = struct.Struct("!BBHII")
MAGIC = b"SFRY"
VERSION = 1
NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
DIGEST_BYTES = 32  # BLAKE3-256 or SHA-256

# Limits on what comes off the wire.
MAX_CONTROL_BODY = 64 * 1024  # every frame but DATA: paths are <= 4 KiB, entries batched
MAX_DATA_BODY = 16 * 1024 * 1024  # senders use less; bounds what one header can promise
MAX_SOFTWARE_BYTES = 64  # "sockferry/0.1.0": only logged
MAX_MESSAGE_BYTES = 1024  # error texts are one sentence
MAX_FILE_SIZE = 2**63 - 1  # sizes are u64 on the wire; Linux off_t is signed 64-bit
MAX_ENTRIES_PER_FRAME = 0xFFFF


class FrameType(IntEnum):
    HELLO = 0x01
    HELLO_REPLY = 0x02
    AUTH = 0x03
    PUT = 0x10
    DATA = 0x11
    DONE = 0x12
    CANCEL = 0x13
    GET = 0x14
    LIST = 0x15
    STAT = 0x16
    MKDIR = 0x17
    HOLE = 0x18
    PARTIAL = 0x19  # RESUME: what do you keep towards this path?
    PUT_AT = 0x1A  # RESUME: a PUT carrying the file from an offset on
    DELETE = 0x1B  # SYNC: remove a name
    CHECKSUM = 0x1C  # SYNC: what is the digest of this file?
    SYMLINK = 0x1D  # LINKS: make a symbolic link
    READLINK = 0x1E  # LINKS: where does this link point?
    PUT_INLINE = 0x1F  # INLINE: a small file's PUT, DATA and DONE in one frame
    QUICK_CHECK = 0x30  # QUICK_CHECK: which of these names do you have unchanged?
    OK = 0x20
    FILE = 0x21
    ENTRIES = 0x22
    COMMITTED = 0x24
    PREFIX = 0x25  # RESUME: length and digest of a kept partial file
    SUM = 0x26  # SYNC: the answer to CHECKSUM
    LINK = 0x27  # LINKS: the answer to READLINK
    SAME = 0x28  # QUICK_CHECK: the answer to QUICK_CHECK, a bitmap
    ERROR = 0x2F


class Feature(IntFlag):
    """Feature bits of HELLO / HELLO_REPLY; unknown bits are ignored (docs/protocol.md)."""

    DIGEST_BLAKE3 = 0x1
    DIGEST_SHA256 = 0x2
    SPARSE = 0x4  # HOLE frames may stand for runs of zero bytes
    RESUME = 0x8  # PARTIAL, PUT_AT, PREFIX and GET offsets proven by digest
    INLINE = 0x10  # PUT_INLINE frames may carry small files whole
    CHANNEL_BINDING = 0x20  # over TLS: the proofs cover the server certificate's hash
    STREAM = 0x40  # PUT with STREAMED: a body whose size is known only at its end
    SYNC = 0x80  # DELETE and CHECKSUM, for incremental copies
    LINKS = 0x100  # SYMLINK and READLINK: symbolic links copied as links
    QUICK_CHECK = 0x200  # QUICK_CHECK and SAME: rsync's quick check done by the server


DIGEST_FEATURES = Feature.DIGEST_BLAKE3 | Feature.DIGEST_SHA256
ALL_FEATURES = (DIGEST_FEATURES | Feature.SPARSE | Feature.RESUME | Feature.INLINE
                | Feature.CHANNEL_BINDING | Feature.STREAM | Feature.SYNC | Feature.LINKS
                | Feature.QUICK_CHECK)


class PutFlag(IntFlag):
    NONE = 0
    KEEP_MTIME = 0x1
    RESUMABLE = 0x2  # RESUME: keep the partial file under its partial name if interrupted
    STREAMED = 0x4  # STREAM: size 0 stands for "known at DONE" (docs/protocol.md §5.2)


class DeleteFlag(IntFlag):
    NONE = 0
    DIRECTORY = 0x1  # SYNC: the name is an (empty) directory


class GetFlag(IntFlag):
    NONE = 0
    PREFIX = 0x1  # RESUME: the digest of the client's first ``offset`` bytes follows


class FileFlag(IntFlag):
    NONE = 0
    RESUMED = 0x1  # RESUME: the body starts at the GET's offset


class ListFlag(IntFlag):
    NONE = 0
    RECURSIVE = 0x1


class EntriesFlag(IntFlag):
    LAST = 0x1


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    AUTH_FAILED = 3
    NOT_FOUND = 4
    EXISTS = 5
    PERMISSION = 6
    IS_DIRECTORY = 7
    NOT_DIRECTORY = 8
    NO_SPACE = 9
    READ_ONLY = 10
    DIGEST_MISMATCH = 11
    TOO_LARGE = 12
    BUSY = 13
    CANCELLED = 14
    IO_ERROR = 15
    SHUTTING_DOWN = 16
    NOT_A_FILE = 17
    INTERNAL = 18
    NOT_EMPTY = 19  # SYNC: DELETE of a directory that still holds names


# ------------------------------------------------------------------------------------
# Messages.  Each has the request id it travels under (0 = the connection itself).


@record
class Hello:
    min_version: int
    max_version: int
    features: int
    nonce: bytes
    software: str = "sockferry"


@record
class HelloReply:
    version: int
    features: int
    max_requests: int
    nonce: bytes
    software: str
    proof: bytes


@record
class Auth:
    proof: bytes


@record
class Put:
    request: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    flags: PutFlag = PutFlag.NONE


@record
class PutInline:
    """A whole small file: PUT, its one DATA and its DONE in one frame (INLINE)."""

    request: int
    path: str
    mode: int
    mtime_ns: int
    data: bytes
    digest: bytes
    flags: PutFlag = PutFlag.NONE


@record
class Data:
    """A DATA frame's header; its body follows as ``BodyPiece`` pieces."""

    request: int
    length: int


@record
class BodyPiece:
    """Part of a DATA body.  ``data`` may view the caller's buffer: use it at once."""

    request: int
    data: bytes | memoryview


@record
class Hole:
    """``length`` zero bytes of a file, not sent (a hole in a sparse file)."""

    request: int
    length: int


@record
class Done:
    request: int
    digest: bytes


@record
class Cancel:
    request: int


@record
class Get:
    request: int
    path: str
    offset: int = 0
    prefix_digest: bytes | None = None  # RESUME: digest of the client's first offset bytes


@record
class Partial:
    """RESUME: ask what the server keeps of an interrupted upload to ``path``."""

    request: int
    path: str


@record
class PutAt:
    """RESUME: a PUT whose body is the file from ``offset`` on."""

    request: int
    path: str
    offset: int
    size: int
    mode: int
    mtime_ns: int
    flags: PutFlag = PutFlag.NONE


@record
class Prefix:
    """RESUME: the answer to PARTIAL: ``length`` bytes kept, and their digest."""

    request: int
    length: int
    digest: bytes


@record
class ListDir:
    request: int
    path: str
    flags: ListFlag = ListFlag.NONE


@record
class Stat:
    request: int
    path: str


@record
class Mkdir:
    request: int
    path: str
    mode: int


@record
class Delete:
    """SYNC: remove ``path``; ``directory``: an empty directory, else a non-directory."""

    request: int
    path: str
    directory: bool = False


@record
class Checksum:
    """SYNC: ask for the digest of the file at ``path``."""

    request: int
    path: str


@record
class Sum:
    """SYNC: the answer to CHECKSUM."""

    request: int
    size: int
    digest: bytes


@record
class Symlink:
    """LINKS: make ``path`` a symbolic link to ``target``."""

    request: int
    path: str
    target: str


@record
class Readlink:
    """LINKS: ask where the link at ``path`` points."""

    request: int
    path: str


@record
class Link:
    """LINKS: the answer to READLINK."""

    request: int
    target: str


# One name of a QUICK_CHECK as the wire has it: kind (QUICK_FILE or QUICK_DIRECTORY),
# size, mtime in nanoseconds, name (one component).
NameCheck = tuple[int, int, int, str]
QUICK_FILE = 1
QUICK_DIRECTORY = 2


@record
class QuickCheck:
    """QUICK_CHECK: which of ``names``, in the directory ``path``, the server has
    unchanged (docs/protocol.md §5.5)."""

    request: int
    path: str
    names: tuple[NameCheck, ...]


@record
class Same:
    """QUICK_CHECK: the answer, bit ``i`` of ``bitmap`` set when name ``i`` is unchanged
    on the server (docs/protocol.md §5.5)."""

    request: int
    count: int
    bitmap: bytes


@record
class Ok:
    request: int


@record
class FileHeader:
    request: int
    size: int
    mode: int
    mtime_ns: int
    resumed: bool = False  # RESUME: the body starts at the GET's offset


@record
class Entries:
    request: int
    entries: tuple[Entry, ...]
    last: bool


@record
class Committed:
    request: int
    size: int
    digest: bytes


@record
class Error:
    request: int
    code: int
    message: str


Message = (Hello | HelloReply | Auth | Put | PutInline | Data | BodyPiece | Hole | Done
           | Cancel | Get | ListDir | Stat | Mkdir | Ok | FileHeader | Entries | Committed
           | Error | Partial | PutAt | Prefix | Delete | Checksum | Sum | Symlink
           | Readlink | Link | QuickCheck | Same)


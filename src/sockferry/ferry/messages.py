"""Ferry protocol v1 frames <-> bytes (pure).  The normative text is docs/protocol.md.

Every frame is a 12-byte header followed by ``length`` bytes of body::

    type u8 | flags u8 | reserved u16 (0) | request u32 | length u32

All integers are big-endian.  DATA bodies are file bytes; every other body is a
fixed layout with length-prefixed strings, each bounded by a named limit below.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from enum import IntEnum, IntFlag
from typing import Any

from sockferry.entries import MAX_PATH_BYTES, Entry, Kind
from sockferry.errors import MalformedPacket
from sockferry.records import record
from sockferry.wire import U16, Reader, Writer

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
STAT_ENTRY = struct.Struct("!BIQq")  # kind, mode, size, mtime_ns
_ENTRY_HEAD = struct.Struct("!BIQqH")  # STAT_ENTRY, then the path's u16 length
PUT_FIELDS = struct.Struct("!QIqH")  # size, mode, mtime_ns, path length (PUT, PUT_INLINE)
COMMITTED_FRAME = struct.Struct("!BBHIIQ")  # header, then size; the digest follows
COMMITTED_BODY = 8 + DIGEST_BYTES
# PUT_INLINE: its fixed fields and digest around the path and the content.
INLINE_OVERHEAD = PUT_FIELDS.size + DIGEST_BYTES


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
    OK = 0x20
    FILE = 0x21
    ENTRIES = 0x22
    COMMITTED = 0x24
    PREFIX = 0x25  # RESUME: length and digest of a kept partial file
    SUM = 0x26  # SYNC: the answer to CHECKSUM
    LINK = 0x27  # LINKS: the answer to READLINK
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


DIGEST_FEATURES = Feature.DIGEST_BLAKE3 | Feature.DIGEST_SHA256
ALL_FEATURES = (DIGEST_FEATURES | Feature.SPARSE | Feature.RESUME | Feature.INLINE
                | Feature.CHANNEL_BINDING | Feature.STREAM | Feature.SYNC | Feature.LINKS)


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
           | Readlink | Link)


# ------------------------------------------------------------------------------------
# Encoding


def frame(kind: FrameType, request: int, body: bytes = b"", flags: int = 0) -> bytes:
    if len(body) > (MAX_DATA_BODY if kind is FrameType.DATA else MAX_CONTROL_BODY):
        raise ValueError(f"{kind.name} body of {len(body)} bytes is over its limit")
    return HEADER.pack(kind, flags, 0, request, len(body)) + body


def data_header(request: int, length: int) -> bytes:
    """The header of a DATA frame whose body the caller sends itself (sendfile)."""
    if not 0 < length <= MAX_DATA_BODY:
        raise ValueError(f"DATA length {length} out of range")
    return HEADER.pack(FrameType.DATA, 0, 0, request, length)


def _path(writer: Writer, path: str) -> Writer:
    return writer.u16_prefixed(path.encode("utf-8", "surrogateescape"), MAX_PATH_BYTES, "path")


def _encode_hello(x: Hello) -> bytes:
    w = Writer().raw(MAGIC).u8(x.min_version).u8(x.max_version).u32(x.features)
    w.raw(_exact(x.nonce, NONCE_BYTES, "nonce"))
    w.u16_prefixed(x.software.encode(), MAX_SOFTWARE_BYTES, "software")
    return frame(FrameType.HELLO, 0, w.getvalue())


def _encode_hello_reply(x: HelloReply) -> bytes:
    body = hello_reply_signed_part(x) + _exact(x.proof, PROOF_BYTES, "proof")
    return frame(FrameType.HELLO_REPLY, 0, body)


def _encode_put(x: Put) -> bytes:
    w = Writer().u64(x.size).u32(x.mode).i64(x.mtime_ns)
    return frame(FrameType.PUT, x.request, _path(w, x.path).getvalue(), x.flags)


def encode_put_inline(request: int, path: str, mode: int, mtime_ns: int, data: bytes,
                      digest: bytes, flags: int = 0) -> bytes:
    """A PUT_INLINE frame, packed in one go (it is sent once per small file)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"path of {len(raw)} bytes is over the limit of {MAX_PATH_BYTES}")
    length = INLINE_OVERHEAD + len(raw) + len(data)
    if length > MAX_CONTROL_BODY:
        raise ValueError(f"{len(data)} bytes do not fit a PUT_INLINE frame")
    return b"".join((HEADER.pack(FrameType.PUT_INLINE, flags, 0, request, length),
                     PUT_FIELDS.pack(len(data), mode, mtime_ns, len(raw)), raw, data,
                     _exact(digest, DIGEST_BYTES, "digest")))


def inline_fits(path: str, size: int) -> bool:
    """Whether a file of ``size`` bytes at ``path`` fits one PUT_INLINE frame."""
    return INLINE_OVERHEAD + len(path.encode("utf-8", "surrogateescape")) + size \
        <= MAX_CONTROL_BODY


def _encode_hole(x: Hole) -> bytes:
    if x.length <= 0:
        raise ValueError("a HOLE must be at least one byte long")
    return frame(FrameType.HOLE, x.request, Writer().u64(x.length).getvalue())


def _encode_file(x: FileHeader) -> bytes:
    w = Writer().u64(x.size).u32(x.mode).i64(x.mtime_ns)
    return frame(FrameType.FILE, x.request, w.getvalue(),
                 FileFlag.RESUMED if x.resumed else 0)


def _encode_get(x: Get) -> bytes:
    w = _path(Writer().u64(x.offset), x.path)
    if x.prefix_digest is None:
        return frame(FrameType.GET, x.request, w.getvalue())
    if x.offset == 0:
        raise ValueError("a GET with a prefix digest needs an offset of at least 1")
    w.raw(_exact(x.prefix_digest, DIGEST_BYTES, "digest"))
    return frame(FrameType.GET, x.request, w.getvalue(), GetFlag.PREFIX)


def _encode_put_at(x: PutAt) -> bytes:
    if not 0 <= x.offset <= x.size:
        raise ValueError(f"PUT_AT offset {x.offset} is beyond the size {x.size}")
    w = Writer().u64(x.offset).u64(x.size).u32(x.mode).i64(x.mtime_ns)
    return frame(FrameType.PUT_AT, x.request, _path(w, x.path).getvalue(),
                 x.flags & PutFlag.KEEP_MTIME)


def _encode_prefix(x: Prefix) -> bytes:
    w = Writer().u64(x.length).raw(_exact(x.digest, DIGEST_BYTES, "digest"))
    return frame(FrameType.PREFIX, x.request, w.getvalue())


def _encode_committed(x: Committed) -> bytes:
    # Sent once per file: packed in one go.
    return COMMITTED_FRAME.pack(FrameType.COMMITTED, 0, 0, x.request, COMMITTED_BODY,
                                x.size) + _exact(x.digest, DIGEST_BYTES, "digest")


def _encode_error(x: Error) -> bytes:
    text = x.message.encode("utf-8")[:MAX_MESSAGE_BYTES]
    text = text.decode("utf-8", "ignore").encode("utf-8")  # never cut inside a code point
    w = Writer().u16(x.code).u16_prefixed(text, MAX_MESSAGE_BYTES, "message")
    return frame(FrameType.ERROR, x.request, w.getvalue())


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Hello: _encode_hello,
    HelloReply: _encode_hello_reply,
    Auth: lambda x: frame(FrameType.AUTH, 0, _exact(x.proof, PROOF_BYTES, "proof")),
    Put: _encode_put,
    PutInline: lambda x: encode_put_inline(x.request, x.path, x.mode, x.mtime_ns, x.data,
                                           x.digest, x.flags),
    Hole: _encode_hole,
    Done: lambda x: frame(FrameType.DONE, x.request, _exact(x.digest, DIGEST_BYTES, "digest")),
    Cancel: lambda x: frame(FrameType.CANCEL, x.request),
    Get: _encode_get,
    Partial: lambda x: frame(FrameType.PARTIAL, x.request, _path(Writer(), x.path).getvalue()),
    PutAt: _encode_put_at,
    Prefix: _encode_prefix,
    ListDir: lambda x: frame(FrameType.LIST, x.request, _path(Writer(), x.path).getvalue(),
                             x.flags),
    Stat: lambda x: frame(FrameType.STAT, x.request, _path(Writer(), x.path).getvalue()),
    Mkdir: lambda x: frame(FrameType.MKDIR, x.request,
                           _path(Writer().u32(x.mode), x.path).getvalue()),
    Ok: lambda x: frame(FrameType.OK, x.request),
    Delete: lambda x: frame(FrameType.DELETE, x.request, _path(Writer(), x.path).getvalue(),
                            DeleteFlag.DIRECTORY if x.directory else 0),
    Symlink: lambda x: frame(FrameType.SYMLINK, x.request,
                             _path(_path(Writer(), x.target), x.path).getvalue()),
    Readlink: lambda x: frame(FrameType.READLINK, x.request,
                              _path(Writer(), x.path).getvalue()),
    Link: lambda x: frame(FrameType.LINK, x.request, _path(Writer(), x.target).getvalue()),
    Checksum: lambda x: frame(FrameType.CHECKSUM, x.request,
                              _path(Writer(), x.path).getvalue()),
    Sum: lambda x: frame(FrameType.SUM, x.request, Writer().u64(x.size).raw(
        _exact(x.digest, DIGEST_BYTES, "digest")).getvalue()),
    FileHeader: _encode_file,
    Entries: lambda x: frame(FrameType.ENTRIES, x.request, encode_entries(x.entries),
                             EntriesFlag.LAST if x.last else 0),
    Committed: _encode_committed,
    Error: _encode_error,
}


def encode(message: Message) -> bytes:
    """The frame for ``message`` (DATA bodies are sent with ``data_header``)."""
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise ValueError(f"{type(message).__name__} is not encoded as a whole frame")
    return encoder(message)


def hello_reply_signed_part(message: HelloReply) -> bytes:
    """HELLO_REPLY's body without its proof: part of what both proofs cover."""
    w = Writer().raw(MAGIC).u8(message.version).u32(message.features)
    w.u32(message.max_requests).raw(_exact(message.nonce, NONCE_BYTES, "nonce"))
    w.u16_prefixed(message.software.encode(), MAX_SOFTWARE_BYTES, "software")
    return w.getvalue()


def encode_entries(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    if len(entries) > MAX_ENTRIES_PER_FRAME:
        raise ValueError("too many entries for one frame")
    # one pack per entry (a listing of 10,000 names is this loop's 10,000 turns)
    parts = [U16.pack(len(entries))]
    head, codes = _ENTRY_HEAD.pack, _KIND_CODES
    for entry in entries:
        raw = entry.path.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_PATH_BYTES:
            raise ValueError(f"path of {len(raw)} bytes is over the limit of {MAX_PATH_BYTES}")
        parts.append(head(codes[entry.kind], entry.mode, entry.size, entry.mtime_ns,
                          len(raw)))
        parts.append(raw)
    return b"".join(parts)


def entry_wire_size(entry: Entry) -> int:
    return STAT_ENTRY.size + 2 + len(entry.path.encode("utf-8", "surrogateescape"))


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(value)}")
    return value


_KIND_CODES = {Kind.FILE: 1, Kind.DIRECTORY: 2, Kind.SYMLINK: 3, Kind.OTHER: 4}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


# ------------------------------------------------------------------------------------
# Decoding


def _read_path(reader: Reader) -> str:
    return _path_of(reader, reader.u16())


def _path_of(reader: Reader, length: int) -> str:
    """The next ``length`` bytes as a path (its u16 length already read)."""
    if length > MAX_PATH_BYTES:
        raise MalformedPacket(f"path of {length} bytes is over the limit of {MAX_PATH_BYTES}")
    try:
        return reader.read(length).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("path is not valid UTF-8") from None


def _read_text(reader: Reader, limit: int, what: str) -> str:
    return reader.u16_prefixed(limit, what).decode("utf-8", "replace")


def _read_size(reader: Reader) -> int:
    size = reader.u64()
    if size > MAX_FILE_SIZE:
        raise MalformedPacket(f"size {size} is over the limit of {MAX_FILE_SIZE}")
    return size


def _decode_hello(r: Reader, request: int, flags: int) -> Hello:
    if r.read(4) != MAGIC:
        raise MalformedPacket("not a sockferry peer (bad magic)")
    return Hello(r.u8(), r.u8(), r.u32(), r.read(NONCE_BYTES),
                 _read_text(r, MAX_SOFTWARE_BYTES, "software"))


def _decode_hello_reply(r: Reader, request: int, flags: int) -> HelloReply:
    if r.read(4) != MAGIC:
        raise MalformedPacket("not a sockferry peer (bad magic)")
    return HelloReply(r.u8(), r.u32(), r.u32(), r.read(NONCE_BYTES),
                      _read_text(r, MAX_SOFTWARE_BYTES, "software"), r.read(PROOF_BYTES))


# Flags as plain ints: an IntFlag operation per frame costs more than the frame's decode.
_PUT_FLAGS = {bits: PutFlag(bits) for bits in range(8)}
_KEEP_MTIME = int(PutFlag.KEEP_MTIME)
_PUT_DEFINED = int(PutFlag.KEEP_MTIME | PutFlag.RESUMABLE | PutFlag.STREAMED)


def _decode_put(r: Reader, request: int, flags: int) -> Put:
    size, mode, mtime = _read_size(r), r.u32(), r.i64()
    return Put(request, _read_path(r), size, mode, mtime,
               _PUT_FLAGS[flags & _PUT_DEFINED])


def _decode_put_inline(r: Reader, request: int, flags: int) -> PutInline:
    size, mode, mtime, path_length = r.unpack(PUT_FIELDS)
    path = _path_of(r, path_length)
    if size != r.remaining - DIGEST_BYTES:  # the frame bounds it (64 KiB)
        raise MalformedPacket(f"PUT_INLINE announces {size} bytes but carries "
                              f"{r.remaining - DIGEST_BYTES}")
    return PutInline(request, path, mode, mtime, r.read(size), r.read(DIGEST_BYTES),
                     _PUT_FLAGS[flags & _KEEP_MTIME])


def _decode_put_at(r: Reader, request: int, flags: int) -> PutAt:
    offset, size, mode, mtime = _read_size(r), _read_size(r), r.u32(), r.i64()
    if offset > size:
        raise MalformedPacket(f"PUT_AT offset {offset} is beyond the size {size}")
    return PutAt(request, _read_path(r), offset, size, mode, mtime,
                 PutFlag(flags & PutFlag.KEEP_MTIME))


def _decode_get(r: Reader, request: int, flags: int) -> Get:
    offset, path = _read_size(r), _read_path(r)
    if not flags & GetFlag.PREFIX:
        return Get(request, path, offset)
    if offset == 0:
        raise MalformedPacket("GET with a prefix digest at offset 0")
    return Get(request, path, offset, r.read(DIGEST_BYTES))


def _decode_file(r: Reader, request: int, flags: int) -> FileHeader:
    return FileHeader(request, _read_size(r), r.u32(), r.i64(),
                      bool(flags & FileFlag.RESUMED))


def _decode_hole(r: Reader, request: int, flags: int) -> Hole:
    length = _read_size(r)
    if length == 0:
        raise MalformedPacket("empty HOLE")
    return Hole(request, length)


def _decode_entries(r: Reader, request: int, flags: int) -> Entries:
    count = r.u16()
    entries = []
    for _ in range(count):  # the path's length read with the rest: one unpack per entry
        code, mode, size, mtime, length = r.unpack(_ENTRY_HEAD)
        kind = _KINDS.get(code)
        if kind is None:
            raise MalformedPacket(f"unknown entry kind {code}")
        entries.append(Entry(_path_of(r, length), kind, mode, size, mtime))
    return Entries(request, tuple(entries), bool(flags & EntriesFlag.LAST))


def _decode_symlink(r: Reader, request: int, flags: int) -> Symlink:
    target = _read_path(r)
    return Symlink(request, _read_path(r), target)


def _decode_error(r: Reader, request: int, flags: int) -> Error:
    code = r.u16()
    return Error(request, code, _read_text(r, MAX_MESSAGE_BYTES, "message"))


_DECODERS: dict[FrameType, Callable[[Reader, int, int], Message]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.HELLO_REPLY: _decode_hello_reply,
    FrameType.AUTH: lambda r, q, f: Auth(r.read(PROOF_BYTES)),
    FrameType.PUT: _decode_put,
    FrameType.PUT_INLINE: _decode_put_inline,
    FrameType.DONE: lambda r, q, f: Done(q, r.read(DIGEST_BYTES)),
    FrameType.HOLE: _decode_hole,
    FrameType.CANCEL: lambda r, q, f: Cancel(q),
    FrameType.GET: _decode_get,
    FrameType.PARTIAL: lambda r, q, f: Partial(q, _read_path(r)),
    FrameType.PUT_AT: _decode_put_at,
    FrameType.PREFIX: lambda r, q, f: Prefix(q, _read_size(r), r.read(DIGEST_BYTES)),
    FrameType.LIST: lambda r, q, f: ListDir(q, _read_path(r), ListFlag(f & ListFlag.RECURSIVE)),
    FrameType.STAT: lambda r, q, f: Stat(q, _read_path(r)),
    FrameType.MKDIR: lambda r, q, f: Mkdir(q, mode=r.u32(), path=_read_path(r)),
    FrameType.OK: lambda r, q, f: Ok(q),
    FrameType.DELETE: lambda r, q, f: Delete(q, _read_path(r), bool(f & DeleteFlag.DIRECTORY)),
    FrameType.CHECKSUM: lambda r, q, f: Checksum(q, _read_path(r)),
    FrameType.SYMLINK: _decode_symlink,
    FrameType.READLINK: lambda r, q, f: Readlink(q, _read_path(r)),
    FrameType.LINK: lambda r, q, f: Link(q, _read_path(r)),
    FrameType.SUM: lambda r, q, f: Sum(q, _read_size(r), r.read(DIGEST_BYTES)),
    FrameType.FILE: _decode_file,
    FrameType.ENTRIES: _decode_entries,
    FrameType.COMMITTED: lambda r, q, f: Committed(q, _read_size(r), r.read(DIGEST_BYTES)),
    FrameType.ERROR: _decode_error,
}

# Frames that exist only on the connection (request 0) and those that never do.
_CONNECTION_FRAMES = {FrameType.HELLO, FrameType.HELLO_REPLY, FrameType.AUTH}


# Frame type code -> (type, decoder), looked up once per frame.
_BY_CODE = {int(kind): (kind, decoder) for kind, decoder in _DECODERS.items()}


def decode_body(kind: int, flags: int, request: int,
                body: bytes | bytearray | memoryview) -> Message:
    """Decode one non-DATA frame; raises only ``MalformedPacket``."""
    known = _BY_CODE.get(kind)
    if known is None:
        try:
            name = FrameType(kind).name
        except ValueError:
            raise MalformedPacket(f"unknown frame type 0x{kind:02x}") from None
        raise MalformedPacket(f"{name} has no body to decode")
    frame_type, decoder = known
    if (frame_type in _CONNECTION_FRAMES) != (request == 0) and frame_type is not FrameType.ERROR:
        raise MalformedPacket(f"{frame_type.name} with request id {request}")
    reader = Reader(body)
    message: Message = decoder(reader, request, flags)
    reader.expect_end(frame_type.name)  # the body must be consumed exactly
    return message


class FrameParser:
    """Incremental parser: feed bytes in any pieces, get messages out.

    Control frames are decoded straight from the fed bytes when they arrived whole, and
    buffered (at most ``MAX_CONTROL_BODY``) when they are split across feeds.  DATA
    bodies are never buffered: they come out as ``Data`` (the header) then
    ``BodyPiece`` pieces that view the fed buffer, valid only until the next ``feed``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data_request = 0
        self._data_left = 0

    @property
    def idle(self) -> bool:
        """True between frames: nothing partial is buffered."""
        return not self._buffer and self._data_left == 0

    @property
    def body_left(self) -> tuple[int, int]:
        """(request, bytes) of the DATA body being received; (0, 0) between bodies."""
        return (self._data_request, self._data_left) if self._data_left else (0, 0)

    def skip_body(self, count: int) -> None:
        """``count`` bytes of the current DATA body were taken by someone else."""
        if not 0 < count <= self._data_left:
            raise ValueError(f"cannot skip {count} of {self._data_left} body bytes")
        self._data_left -= count

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Message]:
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._data_left:
                take = min(self._data_left, end - pos)
                self._data_left -= take
                yield BodyPiece(self._data_request, view[pos : pos + take])
                pos += take
                continue
            if self._buffer or end - pos < HEADER.size:
                pos = self._buffer_header(view, pos)
                if len(self._buffer) < HEADER.size:
                    return
                kind, flags, reserved, request, length = HEADER.unpack_from(self._buffer)
            else:
                kind, flags, reserved, request, length = HEADER.unpack_from(view, pos)
                pos += HEADER.size
            if reserved != 0:
                raise MalformedPacket("reserved header bits are not zero")
            if kind == FrameType.DATA:
                if not 0 < length <= MAX_DATA_BODY or flags or request == 0:
                    raise MalformedPacket(f"bad DATA frame (length {length}, "
                                          f"flags {flags}, request {request})")
                del self._buffer[:]
                self._data_request, self._data_left = request, length
                yield Data(request, length)
                continue
            if length > MAX_CONTROL_BODY:
                raise MalformedPacket(f"frame of {length} bytes is over the limit of "
                                      f"{MAX_CONTROL_BODY}")
            if not self._buffer and end - pos >= length:  # the whole frame is here
                yield decode_body(kind, flags, request, view[pos : pos + length])
                pos += length
                continue
            if not self._buffer:  # keep the header with the partial body
                self._buffer += HEADER.pack(kind, flags, reserved, request, length)
            take = min(length - (len(self._buffer) - HEADER.size), end - pos)
            self._buffer += view[pos : pos + take]
            pos += take
            if len(self._buffer) - HEADER.size < length:
                return
            body = bytes(self._buffer[HEADER.size :])
            del self._buffer[:]
            yield decode_body(kind, flags, request, body)

    def _buffer_header(self, view: memoryview, pos: int) -> int:
        """Gather a header split across feeds; returns the new position."""
        need = HEADER.size - len(self._buffer)
        if need > 0:
            self._buffer += view[pos : pos + need]
            pos += min(need, len(view) - pos)
        return pos

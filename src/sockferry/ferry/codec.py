"""Ferry frames to bytes and back (pure): one encoder per frame record and one decoder
per frame type (``parser`` cuts a byte stream into the frames decoded here).

Errors follow the core's rule: a record this side cannot send (a field over its limit,
a digest of the wrong size) is ``LocalProtocolError``; bytes from the peer that do not
parse are ``MalformedPacket``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar, cast

from sockferry.entries import MAX_PATH_BYTES, Entry, Kind
from sockferry.errors import LocalProtocolError, MalformedPacket
from sockferry.ferry.messages import (
    DIGEST_BYTES,
    HEADER,
    MAGIC,
    MAX_CONTROL_BODY,
    MAX_DATA_BODY,
    MAX_ENTRIES_PER_FRAME,
    MAX_FILE_SIZE,
    MAX_MESSAGE_BYTES,
    MAX_SOFTWARE_BYTES,
    NONCE_BYTES,
    PROOF_BYTES,
    QUICK_DIRECTORY,
    QUICK_FILE,
    Auth,
    Cancel,
    Checksum,
    Committed,
    Delete,
    DeleteFlag,
    Done,
    Entries,
    EntriesFlag,
    Error,
    FileFlag,
    FileHeader,
    FrameType,
    Get,
    GetFlag,
    Hello,
    HelloReply,
    Hole,
    Link,
    ListDir,
    ListFlag,
    Message,
    Mkdir,
    NameCheck,
    Ok,
    Partial,
    Prefix,
    Put,
    PutAt,
    PutFlag,
    PutInline,
    QuickCheck,
    Readlink,
    Same,
    Stat,
    Sum,
    Symlink,
)
from sockferry.wire import U16, Reader

# Body layouts packed or unpacked in one go (the hot frames, and entries).
STAT_ENTRY = struct.Struct("!BIQq")  # kind, mode, size, mtime_ns
_ENTRY_HEAD = struct.Struct("!BIQqH")  # STAT_ENTRY, then the path's u16 length
PUT_FIELDS = struct.Struct("!QIqH")  # size, mode, mtime_ns, path length (PUT, PUT_INLINE)
COMMITTED_FRAME = struct.Struct("!BBHIIQ")  # header, then size; the digest follows
COMMITTED_BODY = 8 + DIGEST_BYTES
# PUT_INLINE: its fixed fields and digest around the path and the content.
INLINE_OVERHEAD = PUT_FIELDS.size + DIGEST_BYTES
_FILE_FIELDS = struct.Struct("!QIq")  # size, mode, mtime_ns (PUT before its path, FILE)
_PUT_AT_FIELDS = struct.Struct("!QQIq")  # offset, size, mode, mtime_ns
_VERSIONS = struct.Struct("!BBI")  # HELLO: min and max version, features
_CHOICE = struct.Struct("!BII")  # HELLO_REPLY: version, features, max_requests
_U32 = struct.Struct("!I")
_NAME_CHECK_HEAD = struct.Struct("!BQqH")  # QUICK_CHECK: kind, size, mtime_ns, name length
_U64 = struct.Struct("!Q")


# ------------------------------------------------------------------------------------
# Encoding

def frame(kind: FrameType, request: int, body: bytes = b"", flags: int = 0) -> bytes:
    if len(body) > (MAX_DATA_BODY if kind is FrameType.DATA else MAX_CONTROL_BODY):
        raise LocalProtocolError(f"{kind.name} body of {len(body)} bytes is over its limit")
    return HEADER.pack(kind, flags, 0, request, len(body)) + body


def data_header(request: int, length: int) -> bytes:
    """The header of a DATA frame whose body the caller sends itself (a file's bytes)."""
    if not 0 < length <= MAX_DATA_BODY:
        raise LocalProtocolError(f"DATA length {length} out of range")
    return HEADER.pack(FrameType.DATA, 0, 0, request, length)


def _prefixed(data: bytes, limit: int, what: str) -> bytes:
    """``data`` after its u16 length, if it is within ``limit``."""
    if len(data) > limit:
        raise LocalProtocolError(f"{what} of {len(data)} bytes is over the limit of {limit}")
    return U16.pack(len(data)) + data


def _path(path: str) -> bytes:
    return _prefixed(path.encode("utf-8", "surrogateescape"), MAX_PATH_BYTES, "path")


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes, not {len(value)}")
    return value


# Record type -> its encoder.  The table cannot say that each key's encoder takes that
# key's records; ``_encodes`` is the one place that ties the two (mypy checks each
# encoder's parameter against the type it registers under), so ``encode`` may pass any
# record to the encoder found under its type.
_Record = TypeVar("_Record", bound=Message)
_Encoder = Callable[[Message], bytes]
_ENCODERS: dict[type, _Encoder] = {}  # keyed by the record class


def _encodes(kind: type[_Record]) -> Callable[[Callable[[_Record], bytes]],
                                               Callable[[_Record], bytes]]:
    def register(encoder: Callable[[_Record], bytes]) -> Callable[[_Record], bytes]:
        _ENCODERS[kind] = cast(_Encoder, encoder)
        return encoder
    return register


def encode(message: Message) -> bytes:
    """The frame for ``message`` (DATA bodies are sent with ``data_header``)."""
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise LocalProtocolError(f"{type(message).__name__} is not encoded as a whole frame")
    try:
        return encoder(message)
    except struct.error as exc:  # a number out of its field's range
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None


@_encodes(Hello)
def _encode_hello(x: Hello) -> bytes:
    body = b"".join((MAGIC, _VERSIONS.pack(x.min_version, x.max_version, x.features),
                     _exact(x.nonce, NONCE_BYTES, "nonce"),
                     _prefixed(x.software.encode(), MAX_SOFTWARE_BYTES, "software")))
    return frame(FrameType.HELLO, 0, body)


def hello_reply_signed_part(message: HelloReply) -> bytes:
    """HELLO_REPLY's body without its proof: part of what both proofs cover."""
    return b"".join((MAGIC, _CHOICE.pack(message.version, message.features,
                                         message.max_requests),
                     _exact(message.nonce, NONCE_BYTES, "nonce"),
                     _prefixed(message.software.encode(), MAX_SOFTWARE_BYTES, "software")))


@_encodes(HelloReply)
def _encode_hello_reply(x: HelloReply) -> bytes:
    body = hello_reply_signed_part(x) + _exact(x.proof, PROOF_BYTES, "proof")
    return frame(FrameType.HELLO_REPLY, 0, body)


@_encodes(Auth)
def _encode_auth(x: Auth) -> bytes:
    return frame(FrameType.AUTH, 0, _exact(x.proof, PROOF_BYTES, "proof"))


@_encodes(Put)
def _encode_put(x: Put) -> bytes:
    body = _FILE_FIELDS.pack(x.size, x.mode, x.mtime_ns) + _path(x.path)
    return frame(FrameType.PUT, x.request, body, x.flags)


@_encodes(PutInline)
def _encode_put_inline(x: PutInline) -> bytes:
    return encode_put_inline(x.request, x.path, x.mode, x.mtime_ns, x.data, x.digest, x.flags)


def encode_put_inline(request: int, path: str, mode: int, mtime_ns: int, data: bytes,
                      digest: bytes, flags: int = 0) -> bytes:
    """A PUT_INLINE frame, packed in one go (it is sent once per small file)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        raise LocalProtocolError(f"path of {len(raw)} bytes is over the limit of "
                                 f"{MAX_PATH_BYTES}")
    length = INLINE_OVERHEAD + len(raw) + len(data)
    if length > MAX_CONTROL_BODY:
        raise LocalProtocolError(f"{len(data)} bytes do not fit a PUT_INLINE frame")
    try:
        return b"".join((HEADER.pack(FrameType.PUT_INLINE, flags, 0, request, length),
                         PUT_FIELDS.pack(len(data), mode, mtime_ns, len(raw)), raw, data,
                         _exact(digest, DIGEST_BYTES, "digest")))
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode PUT_INLINE {path!r}: {exc}") from None


def inline_fits(path: str, size: int) -> bool:
    """Whether a file of ``size`` bytes at ``path`` fits one PUT_INLINE frame."""
    return INLINE_OVERHEAD + len(path.encode("utf-8", "surrogateescape")) + size \
        <= MAX_CONTROL_BODY


@_encodes(Hole)
def _encode_hole(x: Hole) -> bytes:
    if x.length <= 0:
        raise LocalProtocolError("a HOLE must be at least one byte long")
    return frame(FrameType.HOLE, x.request, _U64.pack(x.length))


@_encodes(Done)
def _encode_done(x: Done) -> bytes:
    return frame(FrameType.DONE, x.request, _exact(x.digest, DIGEST_BYTES, "digest"))


@_encodes(Cancel)
def _encode_cancel(x: Cancel) -> bytes:
    return frame(FrameType.CANCEL, x.request)


@_encodes(Get)
def _encode_get(x: Get) -> bytes:
    body = _U64.pack(x.offset) + _path(x.path)
    if x.prefix_digest is None:
        return frame(FrameType.GET, x.request, body)
    if x.offset == 0:
        raise LocalProtocolError("a GET with a prefix digest needs an offset of at least 1")
    body += _exact(x.prefix_digest, DIGEST_BYTES, "digest")
    return frame(FrameType.GET, x.request, body, GetFlag.PREFIX)


@_encodes(Partial)
def _encode_partial(x: Partial) -> bytes:
    return frame(FrameType.PARTIAL, x.request, _path(x.path))


@_encodes(PutAt)
def _encode_put_at(x: PutAt) -> bytes:
    if not 0 <= x.offset <= x.size:
        raise LocalProtocolError(f"PUT_AT offset {x.offset} is beyond the size {x.size}")
    body = _PUT_AT_FIELDS.pack(x.offset, x.size, x.mode, x.mtime_ns) + _path(x.path)
    return frame(FrameType.PUT_AT, x.request, body, x.flags & PutFlag.KEEP_MTIME)


@_encodes(Prefix)
def _encode_prefix(x: Prefix) -> bytes:
    body = _U64.pack(x.length) + _exact(x.digest, DIGEST_BYTES, "digest")
    return frame(FrameType.PREFIX, x.request, body)


@_encodes(ListDir)
def _encode_list(x: ListDir) -> bytes:
    return frame(FrameType.LIST, x.request, _path(x.path), x.flags)


@_encodes(Stat)
def _encode_stat(x: Stat) -> bytes:
    return frame(FrameType.STAT, x.request, _path(x.path))


@_encodes(Mkdir)
def _encode_mkdir(x: Mkdir) -> bytes:
    return frame(FrameType.MKDIR, x.request, _U32.pack(x.mode) + _path(x.path))


@_encodes(Ok)
def _encode_ok(x: Ok) -> bytes:
    return frame(FrameType.OK, x.request)


@_encodes(Delete)
def _encode_delete(x: Delete) -> bytes:
    return frame(FrameType.DELETE, x.request, _path(x.path),
                 DeleteFlag.DIRECTORY if x.directory else 0)


@_encodes(Symlink)
def _encode_symlink(x: Symlink) -> bytes:
    return frame(FrameType.SYMLINK, x.request, _path(x.target) + _path(x.path))


@_encodes(Readlink)
def _encode_readlink(x: Readlink) -> bytes:
    return frame(FrameType.READLINK, x.request, _path(x.path))


@_encodes(Link)
def _encode_link(x: Link) -> bytes:
    return frame(FrameType.LINK, x.request, _path(x.target))


@_encodes(Checksum)
def _encode_checksum(x: Checksum) -> bytes:
    return frame(FrameType.CHECKSUM, x.request, _path(x.path))


@_encodes(Sum)
def _encode_sum(x: Sum) -> bytes:
    body = _U64.pack(x.size) + _exact(x.digest, DIGEST_BYTES, "digest")
    return frame(FrameType.SUM, x.request, body)


@_encodes(QuickCheck)
def _encode_quick_check(x: QuickCheck) -> bytes:
    return frame(FrameType.QUICK_CHECK, x.request, encode_quick_check_body(x.path, x.names))


def encode_quick_check_body(path: str, names: tuple[NameCheck, ...] | list[NameCheck],
                            ) -> bytes:
    """QUICK_CHECK's body (one pack per name: a directory holds thousands)."""
    if len(names) > 0xFFFF:
        raise LocalProtocolError("too many names for one QUICK_CHECK")
    parts = [_path(path), U16.pack(len(names))]
    head = _NAME_CHECK_HEAD.pack
    for kind, size, mtime_ns, name in names:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_PATH_BYTES:
            raise LocalProtocolError(f"name of {len(raw)} bytes is over the limit of "
                                     f"{MAX_PATH_BYTES}")
        parts.append(head(kind, size, mtime_ns, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def name_check_wire_size(name: str) -> int:
    """Bytes one name adds to a QUICK_CHECK body."""
    return NAME_OVERHEAD + len(name.encode("utf-8", "surrogateescape"))


NAME_OVERHEAD = _NAME_CHECK_HEAD.size  # what a QUICK_CHECK name costs besides its bytes


QUICK_CHECK_OVERHEAD = 2 + 2  # the body's fixed part besides the path's bytes


@_encodes(Same)
def _encode_same(x: Same) -> bytes:
    if len(x.bitmap) != (x.count + 7) // 8:
        raise LocalProtocolError(f"a bitmap of {x.count} names is {(x.count + 7) // 8} "
                                 f"bytes, not {len(x.bitmap)}")
    return frame(FrameType.SAME, x.request, U16.pack(x.count) + x.bitmap)


@_encodes(FileHeader)
def _encode_file(x: FileHeader) -> bytes:
    return frame(FrameType.FILE, x.request, _FILE_FIELDS.pack(x.size, x.mode, x.mtime_ns),
                 FileFlag.RESUMED if x.resumed else 0)


@_encodes(Entries)
def _encode_entries(x: Entries) -> bytes:
    return frame(FrameType.ENTRIES, x.request, encode_entries(x.entries),
                 EntriesFlag.LAST if x.last else 0)


@_encodes(Committed)
def _encode_committed(x: Committed) -> bytes:
    return encode_committed(x.request, x.size, x.digest)


def encode_committed(request: int, size: int, digest: bytes) -> bytes:
    """The COMMITTED frame, packed in one go (the server sends one per file)."""
    if len(digest) != DIGEST_BYTES:
        _exact(digest, DIGEST_BYTES, "digest")  # raises
    try:
        return COMMITTED_FRAME.pack(_COMMITTED_CODE, 0, 0, request, COMMITTED_BODY,
                                    size) + digest
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode Committed: {exc}") from None


_COMMITTED_CODE = int(FrameType.COMMITTED)


@_encodes(Error)
def _encode_error(x: Error) -> bytes:
    text = x.message.encode("utf-8")[:MAX_MESSAGE_BYTES]
    text = text.decode("utf-8", "ignore").encode("utf-8")  # never cut inside a code point
    return frame(FrameType.ERROR, x.request, U16.pack(x.code) + _prefixed(
        text, MAX_MESSAGE_BYTES, "message"))


def encode_entries(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    if len(entries) > MAX_ENTRIES_PER_FRAME:
        raise LocalProtocolError("too many entries for one frame")
    # one pack per entry (a listing of 10,000 names is this loop's 10,000 turns)
    parts = [U16.pack(len(entries))]
    head, codes = _ENTRY_HEAD.pack, _KIND_CODES
    for entry in entries:
        raw = entry.path.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_PATH_BYTES:
            raise LocalProtocolError(f"path of {len(raw)} bytes is over the limit of "
                                     f"{MAX_PATH_BYTES}")
        parts.append(head(codes[entry.kind], entry.mode, entry.size, entry.mtime_ns,
                          len(raw)))
        parts.append(raw)
    return b"".join(parts)


def entry_wire_size(entry: Entry) -> int:
    return STAT_ENTRY.size + 2 + len(entry.path.encode("utf-8", "surrogateescape"))


_KIND_CODES = {Kind.FILE: 1, Kind.DIRECTORY: 2, Kind.SYMLINK: 3, Kind.OTHER: 4}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


# ------------------------------------------------------------------------------------
# Decoding


def _read_path(reader: Reader) -> str:
    return _path_of(reader, reader.u16())


def _path_of(reader: Reader, length: int) -> str:
    """The next ``length`` bytes as a path (its u16 length already read)."""
    _check_path_length(length)
    return _utf8_path(reader.read(length))


def _check_path_length(length: int) -> None:
    if length > MAX_PATH_BYTES:
        raise MalformedPacket(f"path of {length} bytes is over the limit of {MAX_PATH_BYTES}")


def _utf8_path(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
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


def decode_put_inline(body: bytes | bytearray | memoryview, start: int, length: int,
                      request: int, flags: int) -> PutInline:
    """The PUT_INLINE body at ``body[start:start + length]``, decoded without a Reader:
    a tree of small files is one of these per file.  Raises only ``MalformedPacket``."""
    if request == 0:
        raise MalformedPacket("PUT_INLINE with request id 0")
    if length < INLINE_OVERHEAD:
        raise MalformedPacket(f"truncated: a PUT_INLINE body of {length} bytes")
    size, mode, mtime, path_length = PUT_FIELDS.unpack_from(body, start)
    if path_length > MAX_PATH_BYTES:
        raise MalformedPacket(f"path of {path_length} bytes is over the limit of "
                              f"{MAX_PATH_BYTES}")
    carried = length - INLINE_OVERHEAD - path_length
    if size != carried:  # the frame bounds it (64 KiB)
        raise MalformedPacket(f"PUT_INLINE announces {size} bytes but carries {carried}")
    at = start + PUT_FIELDS.size
    data_at = at + path_length
    digest_at = data_at + size
    try:
        path = str(body[at:data_at], "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("path is not valid UTF-8") from None
    return PutInline(request, path, mode, mtime, bytes(body[data_at:digest_at]),
                     bytes(body[digest_at:digest_at + DIGEST_BYTES]),
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
    kinds = _KINDS
    for (code, mode, size, mtime, length), raw in r.headed(count, _ENTRY_HEAD):
        kind = kinds.get(code)
        if kind is None:
            raise MalformedPacket(f"unknown entry kind {code}")
        _check_path_length(length)
        entries.append(Entry(_utf8_path(raw), kind, mode, size, mtime))
    return Entries(request, tuple(entries), bool(flags & EntriesFlag.LAST))


def _decode_quick_check(r: Reader, request: int, flags: int) -> QuickCheck:
    path = _read_path(r)
    count = r.u16()
    names = []
    kinds = _QUICK_KINDS
    try:  # one name per turn (a directory holds thousands): the checks inline
        for (kind, size, mtime, length), raw in r.headed(count, _NAME_CHECK_HEAD):
            if kind not in kinds or size > MAX_FILE_SIZE or length > MAX_PATH_BYTES:
                raise MalformedPacket(f"QUICK_CHECK name of kind {kind} (1 file, 2 "
                                      f"directory), size {size}, length {length}")
            names.append((kind, size, mtime, raw.decode("utf-8")))
    except UnicodeDecodeError:
        raise MalformedPacket("QUICK_CHECK name is not valid UTF-8") from None
    return QuickCheck(request, path, tuple(names))


_QUICK_KINDS = frozenset((QUICK_FILE, QUICK_DIRECTORY))


def _decode_same(r: Reader, request: int, flags: int) -> Same:
    count = r.u16()
    bitmap = r.read((count + 7) // 8)
    if count % 8 and bitmap[-1] >> (count % 8):
        raise MalformedPacket("SAME sets bits past its count")
    return Same(request, count, bitmap)


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
    FrameType.QUICK_CHECK: _decode_quick_check,
    FrameType.SAME: _decode_same,
    FrameType.ERROR: _decode_error,
}

# Frames that exist only on the connection (request 0) and those that never do.
_CONNECTION_FRAMES = {FrameType.HELLO, FrameType.HELLO_REPLY, FrameType.AUTH}


# Frame type code -> (name, decoder, whether request 0 is required), looked up once per
# frame: plain values, so that no enum member is hashed or named per frame.
_PUT_INLINE_CODE = int(FrameType.PUT_INLINE)
_DECODED_IN_PLACE = frozenset((_PUT_INLINE_CODE, int(FrameType.COMMITTED)))
_BY_CODE = {int(kind): (kind.name, decoder,
                        None if kind is FrameType.ERROR else kind in _CONNECTION_FRAMES)
            for kind, decoder in _DECODERS.items()}


def decode_body(kind: int, flags: int, request: int,
                body: bytes | bytearray | memoryview) -> Message:
    """Decode one non-DATA frame; raises only ``MalformedPacket``."""
    if kind in _DECODED_IN_PLACE:
        return decode_at(kind, flags, request, body, 0, len(body))
    known = _BY_CODE.get(kind)
    if known is None:
        try:
            name = FrameType(kind).name
        except ValueError:
            raise MalformedPacket(f"unknown frame type 0x{kind:02x}") from None
        raise MalformedPacket(f"{name} has no body to decode")
    name, decoder, on_connection = known
    if on_connection is not None and on_connection != (request == 0):  # ERROR: either
        raise MalformedPacket(f"{name} with request id {request}")
    reader = Reader(body)
    message: Message = decoder(reader, request, flags)
    reader.expect_end(name)  # the body must be consumed exactly
    return message


def decode_at(kind: int, flags: int, request: int, buffer: bytes | bytearray | memoryview,
              start: int, length: int) -> Message:
    """``decode_body`` of the body at ``buffer[start:start + length]``; the frames each
    small file costs, one each way, are decoded in place."""
    if kind == _PUT_INLINE_CODE:
        return decode_put_inline(buffer, start, length, request, flags)
    if kind == _COMMITTED_CODE:
        return decode_committed(buffer, start, length, request)
    return decode_body(kind, flags, request, buffer[start:start + length])


def decode_committed(body: bytes | bytearray | memoryview, start: int, length: int,
                     request: int) -> Committed:
    """The COMMITTED body at ``body[start:start + length]``, decoded without a Reader:
    a client sending a tree of small files gets one per file."""
    if request == 0:
        raise MalformedPacket("COMMITTED with request id 0")
    if length != COMMITTED_BODY:
        raise MalformedPacket(f"COMMITTED body of {length} bytes, not {COMMITTED_BODY}")
    (size,) = _U64.unpack_from(body, start)
    if size > MAX_FILE_SIZE:
        raise MalformedPacket(f"size {size} is over the limit of {MAX_FILE_SIZE}")
    return Committed(request, size, bytes(body[start + 8:start + COMMITTED_BODY]))

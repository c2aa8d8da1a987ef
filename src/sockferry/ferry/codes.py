"""Ferry ERROR codes <-> our exceptions, on both sides of the wire."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from sockferry.errors import (
    PathRefused,
    PeerRefused,
    ProtocolError,
    SockferryError,
    StorageError,
)
from sockferry.ferry.messages import ErrorCode

T = TypeVar("T")


def attempt(call: Callable[..., T], *args: object) -> T | StorageError:
    """``call(*args)``, or the StorageError it raised, as a value: a store's answer that
    may come from a worker thread, to be turned into a reply or a refusal (``code_for``)."""
    try:
        return call(*args)
    except StorageError as exc:
        return exc

_ERRNO_CODES = {
    errno.ENOENT: ErrorCode.NOT_FOUND,
    errno.EEXIST: ErrorCode.EXISTS,
    errno.EACCES: ErrorCode.PERMISSION,
    errno.EPERM: ErrorCode.PERMISSION,
    errno.ELOOP: ErrorCode.PERMISSION,
    errno.ENAMETOOLONG: ErrorCode.PERMISSION,
    errno.EISDIR: ErrorCode.IS_DIRECTORY,
    errno.ENOTDIR: ErrorCode.NOT_DIRECTORY,
    errno.ENOTEMPTY: ErrorCode.NOT_EMPTY,
    errno.EINVAL: ErrorCode.BAD_REQUEST,  # READLINK of a name that is not a link
    errno.ENOSPC: ErrorCode.NO_SPACE,
    errno.EDQUOT: ErrorCode.NO_SPACE,
    errno.EFBIG: ErrorCode.TOO_LARGE,
    errno.EROFS: ErrorCode.READ_ONLY,
    errno.E2BIG: ErrorCode.TOO_LARGE,
    # Out of descriptors or memory: transient, the client may try again.
    errno.EMFILE: ErrorCode.BUSY,
    errno.ENFILE: ErrorCode.BUSY,
    errno.ENOMEM: ErrorCode.BUSY,
}


def code_for(exc: StorageError) -> ErrorCode:
    """The ERROR code a server sends for a failed file operation."""
    if isinstance(exc, PathRefused):
        return ErrorCode.PERMISSION
    return _ERRNO_CODES.get(exc.errno or 0, ErrorCode.IO_ERROR)


def exception_for(code: int, message: str) -> SockferryError:
    """What a client raises for the server's ERROR: the server's sentence, typed."""
    if code == ErrorCode.DIGEST_MISMATCH:
        return ProtocolError(message)
    return PeerRefused(message, code=code)

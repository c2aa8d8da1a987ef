"""Client paths and the names the store reserves, checked as text (pure: no I/O).

A path off the wire is split and checked here before ``root.Root`` resolves it against
real directories; link targets are judged here too.  Temporaries and the partial files
of resumable transfers have reserved names that no client may use.
"""

from __future__ import annotations

import hashlib

from sockferry.entries import MAX_NAME_BYTES, MAX_PATH_BYTES
from sockferry.errors import PathRefused

# Components of one path: real trees are far shallower; a deeper one costs a directory
# walk per request and trees other tools cannot handle (PATH_MAX).
MAX_PATH_DEPTH = 256
# Symbolic links followed while resolving one path (Linux's own limit is 40).
MAX_SYMLINK_HOPS = 40
# Temporaries carry this prefix and suffix; clients may not name such files.
TEMP_PREFIX = ".sockferry-"
TEMP_SUFFIX = ".part"
# Partial files of resumable transfers: named after their target (docs/protocol.md §5.1).
PARTIAL_PREFIX = TEMP_PREFIX + "resume-"
PARTIAL_LABEL = b"sockferry partial v1\0"
PERMISSION_BITS = 0o777
DEFAULT_UMASK = 0o022


def capped_mode(mode: int, umask: int) -> int:
    """Permission bits only (never setuid, setgid or sticky), capped by ``umask``."""
    return mode & PERMISSION_BITS & ~umask


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def split_client_path(path: str | bytes) -> list[str]:
    """Check a path that came off the wire and split it into components.

    Refuses NUL bytes, absolute paths, invalid UTF-8, over-long names and reserved
    temporary names.  ``..`` stays in the list; ``Root`` resolves it against real
    directories so that a symbolic link cannot smuggle an escape past a textual check.
    """
    raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    if b"\0" in raw or len(raw) > MAX_PATH_BYTES or raw.startswith(b"/"):
        _refuse_path(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")
        raise PathRefused(f"path '{shown}' is not valid UTF-8", path=shown) from None
    parts = [p for p in text.split("/") if p and p != "."]
    if len(parts) > MAX_PATH_DEPTH:
        raise PathRefused(f"path of {len(parts)} components is deeper than "
                          f"{MAX_PATH_DEPTH}", path=text[:64] + "…")
    for part in parts:
        if len(part) > MAX_NAME_BYTES // 4 and len(part.encode()) > MAX_NAME_BYTES:
            raise PathRefused(f"name '{part[:32]}…' is longer than {MAX_NAME_BYTES} bytes",
                              path=text)
        if part.startswith(TEMP_PREFIX) and part.endswith(TEMP_SUFFIX):
            raise PathRefused(f"'{part}' is a reserved temporary name", path=text)
    return parts


# Paths of up to this many characters are within MAX_PATH_BYTES however they encode.
SAFE_PATH_CHARS = MAX_PATH_BYTES // 4


def plain_name(name: str) -> bool:
    """One path component that ``split_client_path`` would pass unchanged."""
    return (name not in ("", ".", "..") and "\0" not in name
            and (len(name) <= MAX_NAME_BYTES // 4 or len(name.encode()) <= MAX_NAME_BYTES)
            and not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)))


def link_target_problem(target: str, depth: int) -> str | None:
    """Why a symbolic link whose directory is ``depth`` levels below a root may not
    point to ``target`` (None: it may).  A target must be relative, its ``..`` all at
    its start and no more of them than ``depth``, then plain names: a ``..`` after a
    name would be resolved against wherever that name (perhaps a link) leads, which no
    textual check can know.  So every link made this way stays inside the root, and so
    does any chain of them."""
    raw = target.encode("utf-8", "surrogateescape")
    if not raw or b"\0" in raw or len(raw) > MAX_PATH_BYTES:
        return "an empty, over-long or NUL-holding link target"
    if raw.startswith(b"/"):
        return f"the absolute link target '{target}'"
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return f"the link target '{target}' climbs after a name"
    if ups > depth:
        return f"the link target '{target}' leads outside the root"
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        return f"the link target '{target[:32]}…' has a name over {MAX_NAME_BYTES} bytes"
    return None


def _refuse_path(raw: bytes) -> None:
    shown = raw.decode("utf-8", "backslashreplace")
    if b"\0" in raw:
        raise PathRefused(f"path '{shown}' contains a NUL byte", path=shown)
    if len(raw) > MAX_PATH_BYTES:
        raise PathRefused(f"path of {len(raw)} bytes is longer than {MAX_PATH_BYTES}",
                          path=shown[:64] + "…")
    raise PathRefused(f"absolute path '{shown}' refused — paths are relative to the "
                      "server's root", path=shown)


def partial_name(name: str) -> str:
    """The partial file's name for target ``name``: bound to that name in its directory."""
    key = hashlib.sha256(PARTIAL_LABEL + name.encode("utf-8", "surrogateescape"))
    return f"{PARTIAL_PREFIX}{key.hexdigest()[:16]}{TEMP_SUFFIX}"

"""Deciding an incremental copy (pure): which names the filters keep, which files
are unchanged.

``send``/``get`` with ``--update``, ``--include`` and ``--exclude`` judge names by their
paths relative to the copied tree's top (``/``-separated); this module decides,
``copy_send.py`` and ``copy_get.py`` do the I/O.  Nothing here touches a file or a socket.

Filter rules follow rsync's basic semantics: the first rule that matches a name decides
(``--include`` and ``--exclude`` in the order given); a name no rule matches is
included; an excluded directory is not entered, so nothing below it is copied (nor
deleted).  In a pattern ``*`` and ``?`` stop at ``/``, ``**`` does not, ``[...]`` is a
class; a leading ``/`` anchors the pattern to the top of the tree, any other ``/``
makes it match whole trailing components of the path (``a/b`` matches ``a/b`` and
``x/a/b``), and without ``/`` it matches the last component; a trailing ``/`` matches
directories only.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable, Sequence

from sockferry.entries import Entry, Kind
from sockferry.errors import UsageError
from sockferry.ferry.messages import QUICK_FILE, NameCheck
from sockferry.records import record


@record
class Rule:
    include: bool
    pattern: str
    regex: re.Pattern[str]  # compiled from ``pattern``
    directories_only: bool = False

    @classmethod
    def parse(cls, include: bool, pattern: str) -> Rule:
        body = pattern
        directories_only = body.endswith("/")
        body = body.rstrip("/") if directories_only else body
        anchored = body.startswith("/")
        body = body.lstrip("/")
        if not body:
            raise UsageError(f"the filter pattern '{pattern}' matches nothing — give a "
                             "name or a glob such as '*.o' or 'cache/'")
        translated = _translate(body, pattern)
        regex = translated if anchored else f"(?:.*/)?{translated}"
        return cls(include, pattern, re.compile(regex, re.DOTALL), directories_only)

    def matches(self, path: str, is_directory: bool) -> bool:
        if self.directories_only and not is_directory:
            return False
        return self.regex.fullmatch(path) is not None


def _translate(glob: str, shown: str) -> str:
    """A glob as a regular expression: ``**`` crosses ``/``, ``*`` and ``?`` do not."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        char = glob[i]
        if char == "*":
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            close = glob.find("]", i + 2 if glob.startswith(("[!", "[^"), i) else i + 1)
            if close < 0:
                raise UsageError(f"the filter pattern '{shown}' has '[' without ']' — "
                                 "write \\[ for a literal bracket")
            inner = glob[i + 1 : close]
            negate = inner[:1] in ("!", "^")
            inner = inner[1:] if negate else inner
            escaped = inner.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[^/{escaped}]" if negate else f"[{escaped}]")
            i = close
        elif char == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@record
class Filters:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[tuple[bool, str]]) -> Filters:
        """``(include, pattern)`` pairs in the order the options came."""
        return cls(tuple(Rule.parse(include, pattern) for include, pattern in rules))

    def excluded(self, path: str, is_directory: bool) -> bool:
        """Whether the first rule matching ``path`` (itself, not its parents) excludes it."""
        for rule in self.rules:
            if rule.matches(path, is_directory):
                return not rule.include
        return False

    def select(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries neither excluded themselves nor below an excluded directory."""
        if not self.rules:
            return list(entries)
        dropped: dict[str, bool] = {}  # directory path -> itself or a parent excluded

        def gone(directory: str) -> bool:
            if not directory:
                return False
            known = dropped.get(directory)
            if known is None:
                known = gone(posixpath.dirname(directory)) or self.excluded(directory, True)
                dropped[directory] = known
            return known

        kept = []
        for entry in entries:
            is_directory = entry.kind is Kind.DIRECTORY
            if gone(posixpath.dirname(entry.path)):
                continue
            if is_directory:
                if not gone(entry.path):
                    kept.append(entry)
            elif not self.excluded(entry.path, False):
                kept.append(entry)
        return kept


def unchanged(size: int, mtime_ns: int, existing: Entry | None) -> bool:
    """rsync's quick check (``--update``): the receiver has a regular file of the source's
    ``size`` and modification time (to the second, as rsync compares; file systems keep
    different fractions of a second).  Numbers rather than an Entry: a sender compares
    its lstat of each file of a tree without making one."""
    return (existing is not None and existing.kind is Kind.FILE
            and same_file(size, mtime_ns, existing.size, existing.mtime_ns))


def same_file(size: int, mtime_ns: int, other_size: int, other_mtime_ns: int) -> bool:
    """The quick check's rule for two regular files: the same size and modification
    time to the second."""
    return size == other_size and mtime_ns // 1_000_000_000 == other_mtime_ns // 1_000_000_000


def same_bitmap(names: Sequence[NameCheck], found: Sequence[os.stat_result | None]) -> bytes:
    """The server's side of the quick check (docs/protocol.md §5.5): bit i set when
    ``found[i]``, the lstat of what it holds at name i, is unchanged from ``names[i]``
    — a regular file by ``same_file``, a directory if it is one."""
    bits = bytearray((len(names) + 7) // 8)
    is_file, is_dir = stat.S_ISREG, stat.S_ISDIR
    for i, ((kind, size, mtime_ns, _name), st) in enumerate(zip(names, found, strict=True)):
        if st is None:
            continue
        if (is_file(st.st_mode) and same_file(size, mtime_ns, st.st_size, st.st_mtime_ns)
                if kind == QUICK_FILE else is_dir(st.st_mode)):
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


GLOB_CHARS = "*?["


def has_glob(path: str) -> bool:
    """Whether a remote path holds an unescaped ``*``, ``?`` or ``[``."""
    escaped = False
    for char in path:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in GLOB_CHARS:
            return True
    return False


def unescape(path: str) -> str:
    """A remote path with its backslash escapes resolved (``\\*`` is a literal star)."""
    return re.sub(r"\\(.)", r"\1", path)


def name_matcher(pattern: str) -> re.Pattern[str]:
    """One component of a remote glob (``host:'*.txt'``) as the shell matches names:
    ``*``, ``?``, ``[...]`` within the name, and a leading dot only matched by a dot."""
    regex = _translate(pattern, pattern)
    if not pattern.startswith("."):
        regex = f"(?!\\.){regex}"
    return re.compile(regex, re.DOTALL)


NO_FILTERS = Filters()


@record
class Deletion:
    path: str
    is_directory: bool  # then with everything below it


def extraneous(receiver: Iterable[Entry], wanted: dict[str, bool],
               filters: Filters) -> list[Deletion]:
    """What ``--delete`` removes from the receiver's tree (``receiver`` listed parents
    first, paths relative to its top): each name the filtered source (``wanted``: path ->
    is a directory) lacks, or has as the other kind.  Names the filters exclude are
    protected, as in rsync, and so is every directory above them: such a directory is
    not removed whole, only what else it holds."""
    entries = list(receiver)
    protected_above: set[str] = set()
    for entry in entries:
        if filters.excluded(entry.path, entry.kind is Kind.DIRECTORY):
            parent = posixpath.dirname(entry.path)
            while parent and parent not in protected_above:
                protected_above.add(parent)
                parent = posixpath.dirname(parent)
    deletions: list[Deletion] = []
    gone: set[str] = set()
    for entry in entries:
        is_directory = entry.kind is Kind.DIRECTORY
        parent = posixpath.dirname(entry.path)
        if parent in gone:
            gone.add(entry.path)  # removed with its directory
            continue
        if filters.excluded(entry.path, is_directory) or wanted.get(entry.path) is is_directory:
            continue
        if is_directory and entry.path in protected_above:
            continue  # kept for what is protected inside; its other names are judged
        deletions.append(Deletion(entry.path, is_directory))
        gone.add(entry.path)
    return deletions

"""The client's side of the quick check made by the server (``send -r --update``,
docs/protocol.md §5.5): each directory of the local tree is asked about as the walk
meets it, so the server looks up one directory while this side stats the next, and the
answers are taken directory by directory as the copy reaches them, so the copy of the
first directories goes on while the server still looks at the last."""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator

from sockferry.ferry.client import FerryClient
from sockferry.ferry.codec import NAME_OVERHEAD, QUICK_CHECK_OVERHEAD, name_check_wire_size
from sockferry.ferry.messages import MAX_CONTROL_BODY, QUICK_DIRECTORY, QUICK_FILE, NameCheck

# One directory of a local tree as the walk meets it: its path, its path relative to
# the top ("" or ending in "/"), and its subdirectories (sorted) and other names.
Directory = tuple[str, str, list[str], list[str]]

NAMES_PER_REQUEST = 1000  # at most (and what fits one 64 KiB frame)

_Asked = tuple[str, str, tuple[NameCheck, ...], asyncio.Future[object]]


class QuickCheck:
    """The server's verdicts on a tree: ``unchanged`` maps the local path of each file it
    has unchanged to its size; ``present`` holds the relative paths of the
    subdirectories it has.  Both grow as ``answered`` takes each directory's answers."""

    def __init__(self) -> None:
        self.unchanged: dict[str, int] = {}
        self.present: set[str] = set()
        self._asked: list[list[_Asked]] = []  # per directory of the walk, in its order

    async def ask(self, client: FerryClient, walk: Iterable[Directory], target: str,
                  ) -> list[Directory]:
        """Send a QUICK_CHECK for each directory of ``walk``, a tree going to the remote
        directory ``target`` (its subdirectories and regular files: links and other names
        are sent as without --update), and return the walk."""
        walked: list[Directory] = []
        for directory in walk:
            path, rel_prefix, subdirs, files = directory
            walked.append(directory)
            prefix = path if path.endswith(os.sep) else path + os.sep
            names: list[NameCheck] = [(QUICK_DIRECTORY, 0, 0, name) for name in subdirs]
            for name in files:
                try:
                    st = os.lstat(prefix + name)
                except OSError:
                    continue  # vanished: opening it reports it
                if stat.S_ISREG(st.st_mode):
                    names.append((QUICK_FILE, st.st_size, st.st_mtime_ns, name))
            remote_dir = tree_dir(target, rel_prefix)
            self._asked.append([(prefix, rel_prefix, batch,
                                 await client.start_quick_check(remote_dir, batch))
                                for batch in batches(remote_dir, names)])
        return walked

    async def answered(self, index: int) -> None:
        """Take the answers about directory ``index`` of the walk (waiting for them)."""
        asked, self._asked[index] = self._asked[index], []
        for position, (prefix, rel_prefix, batch, future) in enumerate(asked):
            try:
                bitmap = await future
            except BaseException:
                self._forget(asked[position + 1:])
                for later in self._asked:
                    self._forget(later)
                raise
            assert isinstance(bitmap, bytes)
            for i, (kind, size, _mtime, name) in enumerate(batch):
                if bitmap[i >> 3] >> (i & 7) & 1:  # the layout sync.same_bitmap sets
                    if kind == QUICK_FILE:
                        self.unchanged[prefix + name] = size
                    else:
                        self.present.add(rel_prefix + name)

    @staticmethod
    def _forget(asked: list[_Asked]) -> None:
        """Answers no one will wait for, once the copy has failed: their failures are
        the same one, so they are marked as seen (asyncio would log each)."""
        for *_, future in asked:
            future.add_done_callback(_seen)


def _seen(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def tree_dir(target: str, rel_prefix: str) -> str:
    """The remote directory of the tree's directory ``rel_prefix`` ("" or ending in
    "/") when the tree goes to ``target``."""
    return target if not rel_prefix else posixpath.join(target, rel_prefix[:-1])


def batches(remote_dir: str, names: list[NameCheck]) -> Iterator[tuple[NameCheck, ...]]:
    """``names`` cut into QUICK_CHECKs of at most NAMES_PER_REQUEST names that fit a
    control frame beside ``remote_dir``."""
    room = (MAX_CONTROL_BODY - QUICK_CHECK_OVERHEAD
            - len(remote_dir.encode("utf-8", "surrogateescape")))
    batch: list[NameCheck] = []
    used = 0
    for entry in names:
        name = entry[3]
        # an ASCII name's length is its size in UTF-8 (isascii reads a flag: no encoding)
        size = NAME_OVERHEAD + len(name) if name.isascii() else name_check_wire_size(name)
        if batch and (len(batch) == NAMES_PER_REQUEST or used + size > room):
            yield tuple(batch)
            batch, used = [], 0
        batch.append(entry)
        used += size
    if batch:
        yield tuple(batch)

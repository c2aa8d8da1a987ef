"""Uploads of one path committed in request order (pure).

docs/protocol.md §5 promises that pipelined PUTs of the same path commit in the order
they were sent, whatever their sizes: a large file hashed in a worker thread may be
verified after a small one sent behind it, and must still not replace it.  ``PathOrder``
holds a verified upload back while an earlier PUT of its path is still open, and lets
it go the moment that one is committed (handed to the commit) or refused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PathOrder(Generic[T]):
    """Open PUTs per path, in arrival order; ``release`` commits an item in turn.

    Memory: one entry per open PUT (bounded by the request window)."""

    def __init__(self, release: Callable[[T], None]) -> None:
        self._release = release
        self._open: dict[str, deque[int]] = {}
        self._path_of: dict[int, str] = {}
        self._held: dict[int, T] = {}

    def opened(self, request: int, path: str) -> None:
        """A PUT of ``path`` started (its file was created)."""
        self._open.setdefault(path, deque()).append(request)
        self._path_of[request] = path

    def verified(self, request: int, item: T) -> None:
        """``request``'s upload is ready: released now if no earlier PUT of its path is
        open, else held until they all are done."""
        path = self._path_of.get(request)
        if path is None or self._open[path][0] == request:
            self._release(item)
            self.ended(request)
        else:
            self._held[request] = item

    def opened_verified(self, request: int, path: str, item: T) -> None:
        """A PUT ready as it starts (PUT_INLINE): ``opened`` then ``verified``, without
        the bookkeeping when no earlier PUT of its path is open (the common case)."""
        if path in self._open:
            self.opened(request, path)
            self.verified(request, item)
        else:
            self._release(item)

    def ended(self, request: int) -> None:
        """``request`` is done (released, refused or cancelled): what waited on it goes."""
        path = self._path_of.pop(request, None)
        if path is None:
            return
        queue = self._open[path]
        queue.remove(request)
        while queue and queue[0] in self._held:
            head = queue.popleft()
            del self._path_of[head]
            self._release(self._held.pop(head))
        if not queue:
            del self._open[path]

    def held(self) -> list[T]:
        """What waits (for ``abort`` when the connection ends)."""
        return list(self._held.values())

    def clear(self) -> None:
        self._open.clear()
        self._path_of.clear()
        self._held.clear()

"""Files written under a temporary name in their final directory and renamed into
place whole, so that nobody sees one half done; and the partial files resume keeps."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import secrets
import stat
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sockferry.errors import StorageError
from sockferry.sockets import storage_error
from sockferry.storage.dircache import DirHandle
from sockferry.storage.names import TEMP_PREFIX, TEMP_SUFFIX, partial_name

# Written bytes between two requests for early writeback (see AtomicFile.write).
WRITEBACK_STEP = 8 * 1024 * 1024
# What a failed flush of the directory, after the rename, leaves the writer with.
NOT_DURABLE = "the file is in place but may not survive a crash"


# Temporary names: a random 64-bit part per process, then a count (no getrandom call per
# file, and a small number formats faster than a 64-bit one); O_EXCL still refuses a name
# that is somehow taken.
_temp_start = f"{TEMP_PREFIX}{secrets.token_hex(8)}-"
_temp_counter = itertools.count(1)


def temporary_name() -> str:
    return f"{_temp_start}{next(_temp_counter):x}{TEMP_SUFFIX}"


@functools.cache
def _process_umask() -> int:
    """This process's umask, read once (sockferry never changes it while serving)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore, once, at the first file
    os.umask(mask)
    return mask


class AtomicFile:
    """A file being written under a temporary name in its final directory.

    ``commit`` fsyncs, sets the mode (and mtime), renames over the final name (or links,
    refusing to replace, with ``clobber=False``) and fsyncs the directory; ``seal`` and
    ``publish`` are its first two steps, for callers that make many files durable
    together (``GroupCommit``).  ``abort`` removes the temporary.  Exactly one of
    ``commit``, ``abort`` or a ``GroupCommit`` must finish the file; the directory is
    released then.
    """

    def __init__(self, directory: int | DirHandle, name: str, shown: str,
                 mode: int = 0o600) -> None:
        self.dir = (directory if isinstance(directory, DirHandle)
                    else DirHandle(directory)).acquire()
        self.dir_fd = self.dir.fd
        self.name = name
        self.shown = shown
        self.temp_name = self._temporary_name()
        self._mode = mode  # what the temporary is created with (the umask permitting)
        self.written = 0
        try:
            self.fd = self._open_temporary()
        except OSError as exc:
            self.dir.release()
            raise storage_error(exc, shown) from exc
        self._done = False
        self._holes = False
        self._queued = 0  # bytes already handed to early writeback
        self.on_finish: list[Callable[[], object]] = []  # run once, committed or not

    # The commit goes over the network (a remote store's file): never run it on the loop.
    remote = False
    # Bytes written past the last ``_write_back`` before the next one is due.
    write_back_step = WRITEBACK_STEP

    def expect(self, mode: int, mtime_ns: int | None) -> None:
        """The mode and mtime the commit will give, known early (a remote store's
        upload records them as it starts, and would otherwise fix them afterwards)."""

    def flushed_by_file_system(self) -> bool:
        """Whether a group commit must flush this file's file system to make it durable
        (not in memory only; a remote store's file is durable once published)."""
        return not self.dir.memory_only()

    # The temporary's name (a partial file's is derived from its target instead).
    _temporary_name = staticmethod(temporary_name)

    def _open_temporary(self) -> int:
        # O_RDWR: a digests.Follower reads back what is written.
        return os.open(self.temp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, self._mode, dir_fd=self.dir_fd)

    @classmethod
    def beside(cls, local_path: str) -> AtomicFile:
        """An atomic writer for a local path (the client side, no sandbox)."""
        parent = os.path.dirname(os.path.abspath(local_path))
        try:
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, parent) from exc
        return cls(dir_fd, os.path.basename(local_path), local_path)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            n = os.write(self.fd, data)  # all of it, nearly always: no view then
            self.written += n
            if n < len(data):
                view = memoryview(data)[n:]
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                    self.written += n
            if self.written - self._queued >= self.write_back_step:
                self._write_back()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc

    def appended(self, count: int) -> None:
        """``count`` bytes were written at the current offset through ``fd`` by someone
        else (a stream copying a body in a worker thread)."""
        self.written += count
        try:
            if self.written - self._queued >= self.write_back_step:
                self._write_back()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc

    def _write_back(self) -> None:
        # Start writing back what is done now, so the fsync in commit() does not have to
        # push the whole file at the end (on Linux, DONTNEED on dirty pages queues their
        # writeback without waiting for it).  The callers check write_back_step.
        os.posix_fadvise(self.fd, self._queued, self.written - self._queued,
                         os.POSIX_FADV_DONTNEED)
        self._queued = self.written

    def skip(self, count: int) -> None:
        """Leave ``count`` zero bytes as a hole instead of writing them."""
        try:
            os.lseek(self.fd, count, os.SEEK_CUR)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc
        self.written += count
        self._holes = True

    def seal(self, mode: int, mtime_ns: int | None = None, *, durable: bool = True) -> None:
        """Size, mode and mtime set, the data fsynced (when ``durable``), the fd closed.

        A second call does nothing: a file sealed as soon as it was written whole stays
        as it was sealed then."""
        if self.fd < 0 and not self._done:
            return
        self._committing()
        try:
            if self._holes:  # a trailing hole needs the size set explicitly
                os.ftruncate(self.fd, self.written)
            if mode != self._mode or mode & _process_umask():
                os.fchmod(self.fd, mode)
            if mtime_ns is not None:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            if durable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "nothing was written") from exc

    def publish(self, clobber: bool = True) -> None:
        """Give the sealed file its final name (the directory is not fsynced here)."""
        try:
            if clobber:
                os.rename(self.temp_name, self.name, src_dir_fd=self.dir_fd,
                          dst_dir_fd=self.dir_fd)
            else:
                # link() fails with EEXIST instead of replacing: an atomic no-clobber.
                os.link(self.temp_name, self.name, src_dir_fd=self.dir_fd,
                        dst_dir_fd=self.dir_fd, follow_symlinks=False)
                os.unlink(self.temp_name, dir_fd=self.dir_fd)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.EEXIST:
                raise StorageError(f"'{self.shown}' already exists and the server does not "
                                   "overwrite files", errno=exc.errno, path=self.shown) from exc
            raise storage_error(exc, self.shown, "nothing was written") from exc

    def commit(self, mode: int, mtime_ns: int | None = None, *, clobber: bool = True,
               durable: bool = True) -> None:
        self.seal(mode, mtime_ns, durable=durable)
        self.publish(clobber)
        try:
            if durable:
                os.fsync(self.dir_fd)
        except OSError as exc:
            raise storage_error(exc, self.shown, NOT_DURABLE) from exc
        finally:
            self._finish()

    def _committing(self) -> None:
        """Called as the commit starts (a partial file is no longer kept from then)."""

    def abort(self) -> None:
        if self._done:
            return
        self._discard_temporary()
        self._finish()

    def _discard_temporary(self) -> None:
        """Close the temporary file and remove it."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.temp_name, dir_fd=self.dir_fd)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.dir.release()
            for callback in self.on_finish:
                callback()


@runtime_checkable
class ResumableFile(Protocol):
    """What a store's partial file (``create(kind=PartialFile)``) offers resume:
    ``PartialFile`` here, ``s3.S3PartialFile`` in a bucket."""

    kept: int  # bytes an earlier transfer left

    def start_at(self, offset: int) -> None: ...


class KeptWhenBroken(AtomicFile):
    """The rule of a partial file, in any store: what a transfer broke off leaves is
    kept (``keep``), what a failed write or a failed commit leaves is not."""

    keep = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        keep, self.keep = self.keep, False  # a failed write removes the partial
        super().write(data)
        self.keep = keep

    def skip(self, count: int) -> None:
        keep, self.keep = self.keep, False
        super().skip(count)
        self.keep = keep

    def _committing(self) -> None:
        self.keep = False  # a failed commit leaves nothing behind


class PartialFile(KeptWhenBroken):
    """An ``AtomicFile`` under its target's partial name, kept when abandoned (resume).

    An exclusive flock on a second open file description guards it from the moment it
    is opened until it is renamed into place or closed (closing ``fd`` in ``commit``
    must not drop the lock before the rename).  ``abort`` keeps what was written, so a
    later transfer can resume; failed writes and commits still remove it.
    """

    def __init__(self, directory: int | DirHandle, name: str, shown: str) -> None:
        self._lock_fd = -1
        self.keep = True
        super().__init__(directory, name, shown)
        self.kept = os.fstat(self.fd).st_size  # what an earlier transfer left

    def _temporary_name(self) -> str:
        return partial_name(self.name)

    def _open_temporary(self) -> int:
        fd = os.open(self.temp_name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600, dir_fd=self.dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "the partial file is not a regular file")
            self._lock_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            self._close_lock()
            raise
        os.set_blocking(fd, True)
        return fd

    def start_at(self, offset: int) -> None:
        """Keep the first ``offset`` bytes and write on from there (0: start over)."""
        try:
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as exc:
            self.keep = False
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc
        self.written = self._queued = offset

    def abort(self) -> None:
        """Close, keeping what was written for a later resume (nothing: remove it)."""
        if self._done or not self.keep or self._empty():
            super().abort()
            return
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self._finish()

    def _finish(self) -> None:
        super()._finish()
        self._close_lock()

    def _empty(self) -> bool:
        try:
            return self.fd < 0 or os.fstat(self.fd).st_size == 0
        except OSError:
            return True

    def _close_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


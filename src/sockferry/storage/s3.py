"""A ``Store`` in an S3 bucket (Ceph's RADOS Gateway, MinIO, AWS): ``serve --store
s3://BUCKET/PREFIX?endpoint=URL``.

Names map to keys under PREFIX as paths do under a root: a client path is resolved
textually (there are no links to follow), ``..`` may not climb above PREFIX.  S3 has
no directories, so a directory is a prefix: an empty marker object ``KEY/`` made by
``make_dirs`` (and kept as long as the directory is), or any key below it.  A file's
mode and mtime live in its object metadata (``mode``, ``mtime-ns``); a listing, which
carries no metadata, reports the object's upload time and mode 0644 instead.

Writing keeps the local root's guarantee — nothing visible before the commit, which the
servers call once the digest matched — with a multipart upload: the bytes land in a
spool file on local disk (so the body copy, a resume's read-back and holes work as for
the root) and go up in ``PART_BYTES`` parts while the body still arrives; the commit
uploads the last part and completes the upload, an abort aborts it.  An upload a crash
left open is aborted by ``sweep_temporaries`` once older than the keep time.  A read
fetches the object into a spool file first and hands out its fd.

Resume's partial files live in the bucket too, so that any server sharing it can
resume what another began (see "resume's partial files" below).  Kept out (the store
says so through ``keeps_links``, and the ferry server then does not offer LINKS):
symbolic links.  ``clobber=False`` checks for the key just before the commit: two
servers committing the same new name at once may both succeed.

boto3 is imported when a store is opened, not before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sockferry.entries import Entry, Kind
from sockferry.errors import NotAvailable, PathRefused, StorageError, UsageError
from sockferry.sockets import storage_error
from sockferry.storage.atomic import AtomicFile, KeptWhenBroken
from sockferry.storage.dircache import DirHandle
from sockferry.storage.names import is_temporary_name, partial_name, split_client_path
from sockferry.storage.store import stat_finds

if TYPE_CHECKING:
    from sockferry.storage.store import Store, StoreCache

store_log = logging.getLogger("sockferry.storage")

PART_BYTES = 8 * 1024 * 1024  # S3 wants 5 MiB at least for every part but the last
UPLOAD_THREADS = 8  # per store: parts, and the reads of whole objects into the spool
FETCH_CHUNK = 1024 * 1024
COPY_AT_ONCE = 5 * 1024**3  # the largest object one CopyObject request may copy
DIRECTORY_TTL_S = 1.0  # how long a connection trusts that a directory it saw is there
DIRECTORIES_CACHED = 256
DIRECTORY_MODE = 0o755  # of a directory without a marker, or a marker without metadata
FILE_MODE = 0o644  # of a file listed (a listing has no metadata) or without metadata
# What statvfs says of a bucket: S3 reports no capacity, so room is never the limit.
UNBOUNDED_BLOCKS = 1 << 40


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where the store is: ``s3://BUCKET/PREFIX?endpoint=URL&region=R&profile=P``."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None
    region: str
    profile: str | None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise UsageError(f"'{url}' is not an S3 location; write "
                             "s3://BUCKET[/PREFIX][?endpoint=URL]")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint", "region", "profile"})
        if unknown:
            raise UsageError(f"unknown option '{unknown[0]}' in '{url}' (known: endpoint, "
                             "region, profile)")
        endpoint = query.get("endpoint", [None])[-1]
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"the endpoint '{endpoint}' must start with http:// or "
                             "https://")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, prefix + "/" if prefix else "", endpoint,
                   query.get("region", ["us-east-1"])[-1],
                   query.get("profile", [None])[-1])

    def __str__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


class S3Cache:
    """What one connection keeps of an S3 store between its requests, each for
    ``DIRECTORY_TTL_S``: the directories it saw, and the names of the directories inside
    them (one LIST of a directory), so that a tree's uploads ask neither for their
    directory nor, file by file, whether their name is a directory."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._subdirectories: dict[str, tuple[float, frozenset[str]]] = {}

    def knows(self, key: str) -> bool:
        seen = self._seen.get(key)
        return seen is not None and time.monotonic() - seen < DIRECTORY_TTL_S

    def saw(self, key: str) -> None:
        if len(self._seen) >= DIRECTORIES_CACHED:
            self._seen.clear()
        self._seen[key] = time.monotonic()

    def subdirectories(self, key: str) -> frozenset[str] | None:
        """The names of the directories in directory ``key``, if listed lately."""
        listed = self._subdirectories.get(key)
        if listed is None or time.monotonic() - listed[0] >= DIRECTORY_TTL_S:
            return None
        return listed[1]

    def listed(self, key: str, names: frozenset[str]) -> None:
        if len(self._subdirectories) >= DIRECTORIES_CACHED:
            self._subdirectories.clear()
        self._subdirectories[key] = (time.monotonic(), names)

    def changed(self, path: str) -> None:
        self.close()

    def removed(self, path: str) -> None:
        self.close()

    def close(self) -> None:
        self._seen.clear()
        self._subdirectories.clear()


class S3Store:
    """A tree of files in a bucket (see the module's docstring)."""

    keeps_links = False
    keeps_partials = True
    remote = True
    page_size = 1000  # keys per LIST request (S3's own maximum)

    def __init__(self, location: S3Location, spool: str | None = None,
                 client: Any = None) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        if client is None:
            client = _client(location)
        self.client = client
        self._partials_open: set[str] = set()  # partial keys a transfer here writes
        self._partials_lock = threading.Lock()
        self._made_spool = spool is None
        self.spool = spool or tempfile.mkdtemp(prefix="sockferry-spool-")
        self.threads = concurrent.futures.ThreadPoolExecutor(
            UPLOAD_THREADS, thread_name_prefix="sockferry-s3")
        try:
            self._call(f"s3://{self.bucket}", self.client.head_bucket, Bucket=self.bucket)
            self._spool_dir = DirHandle(os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY
                                                | os.O_CLOEXEC), cached=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)
        handle = getattr(self, "_spool_dir", None)
        if handle is not None:
            handle.retire()  # closed once no file being written holds it
            del self._spool_dir
        if self._made_spool:
            shutil.rmtree(self.spool, ignore_errors=True)

    # -- names ----------------------------------------------------------------------------

    def _parts(self, path: str | bytes) -> tuple[list[str], str]:
        """The path's components after ``..`` is applied, and the path as shown."""
        shown = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
        parts: list[str] = []
        for part in split_client_path(path):
            if part != "..":
                parts.append(part)
            elif parts:
                parts.pop()
            else:
                raise PathRefused(f"'{shown}' leads outside the server's root", path=shown)
        return parts, shown

    def _key(self, parts: list[str]) -> str:
        return self.prefix + "/".join(parts)

    # -- S3 calls ---------------------------------------------------------------------------

    def _call(self, shown: str, method: Any, **kwargs: Any) -> Any:
        """One S3 request; its failure as a StorageError naming ``shown``."""
        try:
            return method(**kwargs)
        except Exception as exc:  # botocore's errors share no base class worth naming
            raise self._error(exc, shown) from exc

    def _error(self, exc: BaseException, shown: str) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, OSError):
            return storage_error(exc, shown)
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            code = str(error.get("Code", ""))
            number = {"NoSuchKey": errno.ENOENT, "404": errno.ENOENT,
                      "NoSuchBucket": errno.ENOENT, "NoSuchUpload": errno.ENOENT,
                      "AccessDenied": errno.EACCES, "403": errno.EACCES,
                      "InvalidAccessKeyId": errno.EACCES,
                      "SignatureDoesNotMatch": errno.EACCES,
                      "QuotaExceeded": errno.EDQUOT}.get(code, errno.EIO)
            if code == "NoSuchBucket" or (code == "404" and shown.startswith("s3://")):
                where = self.location.endpoint or "the S3 endpoint"
                return StorageError(f"the bucket '{self.bucket}' does not exist at {where}; "
                                    "create it first", errno=number, path=shown)
            message = error.get("Message") or code
            return StorageError(f"'{shown}': the S3 store answered {message}",
                                errno=number, path=shown)
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return StorageError(f"no S3 credentials for {self.location}: set "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a "
                                "profile (?profile=NAME)", errno=errno.EACCES, path=shown)
        return StorageError(f"'{shown}': the S3 store {self.location} failed: {exc}",
                            errno=errno.EIO, path=shown)

    def _head(self, key: str, shown: str) -> dict[str, Any] | None:
        """The file object ``key``'s HEAD, or None (a directory's key is none)."""
        if not key or key.endswith("/"):
            return None
        return self._head_object(key, shown)

    def _head_marker(self, key: str, shown: str) -> dict[str, Any] | None:
        """The HEAD of the directory ``key``'s marker object, or None."""
        return self._head_object(key + "/", shown)

    def _head_object(self, key: str, shown: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            return head
        except Exception as exc:
            error = self._error(exc, shown)
            if error.errno == errno.ENOENT:
                return None
            raise error from exc

    def _is_directory(self, key: str, shown: str, *, implicit: bool = True) -> bool:
        """Whether ``key`` is a directory: its marker (one HEAD, cheap), else
        (``implicit``) any key below it (a LIST, which RADOS Gateway answers in tens of
        milliseconds)."""
        if key == self.prefix:
            return True  # the top: there even when empty
        if self._head_marker(key, shown) is not None:
            return True
        if not implicit:
            return False
        listed = self._call(shown, self.client.list_objects_v2, Bucket=self.bucket,
                            Prefix=key + "/", MaxKeys=1)
        return bool(listed.get("KeyCount", 0))

    def _names_a_directory(self, parent: str, name: str, key: str, shown: str,
                           cache: S3Cache | None) -> bool:
        """Whether ``key`` (``name`` in directory ``parent``) is a directory.  With a cache,
        from one LIST of ``parent`` for all the uploads into it (a directory there of any
        kind, marked or only keys below it); where that listing is longer than a page, or
        without a cache, from the marker only (a HEAD: a LIST per upload would cost more
        than the upload of a small file)."""
        if cache is not None:
            names = cache.subdirectories(parent)
            if names is None:
                names = self._subdirectory_names(parent, shown)
                if names is not None:
                    cache.listed(parent, names)
            if names is not None:
                return name in names
        return self._is_directory(key, shown, implicit=False)

    def _subdirectory_names(self, parent: str, shown: str) -> frozenset[str] | None:
        """The directories in ``parent`` from one LIST page, or None if it has more."""
        below = parent if parent == self.prefix else parent + "/"  # the top: "" or "p/"
        page = self._call(shown, self.client.list_objects_v2, Bucket=self.bucket,
                          Prefix=below, Delimiter="/", MaxKeys=self.page_size)
        if page.get("IsTruncated"):
            return None
        return frozenset(common["Prefix"][len(below):-1]
                         for common in page.get("CommonPrefixes", []))

    def _keys(self, prefix: str, shown: str, delimiter: str | None = None,
              ) -> Generator[tuple[list[dict[str, Any]], list[str]], None, None]:
        """Pages of (objects, common prefixes) under ``prefix``."""
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                   "MaxKeys": self.page_size}
        if delimiter:
            options["Delimiter"] = delimiter
        while True:
            page = self._call(shown, self.client.list_objects_v2, **options)
            yield (page.get("Contents", []),
                   [common["Prefix"] for common in page.get("CommonPrefixes", [])])
            if not page.get("IsTruncated"):
                return
            options["ContinuationToken"] = page["NextContinuationToken"]

    # -- the Store protocol --------------------------------------------------------------

    def new_cache(self) -> StoreCache:
        return S3Cache()

    def statvfs(self) -> os.statvfs_result:
        size = 4096
        return os.statvfs_result((size, size, UNBOUNDED_BLOCKS, UNBOUNDED_BLOCKS,
                                  UNBOUNDED_BLOCKS, 0, 0, 0, 0, 255))

    def usage(self) -> int:
        return sum(int(obj["Size"]) for objects, _ in self._keys(self.prefix, self.prefix)
                   for obj in objects)

    def stat(self, path: str | bytes) -> Entry:
        parts, shown = self._parts(path)
        key = self._key(parts)
        head = self._head(key, shown)
        if head is not None:
            return _file_entry(shown, head)
        marker = self._head_marker(key, shown) if parts else None
        if marker is not None or self._is_directory(key, shown):
            return Entry(shown, Kind.DIRECTORY, _mode_of(marker, DIRECTORY_MODE), 0,
                         _mtime_of(marker))
        raise _absent(shown)

    def exists(self, path: str | bytes) -> bool:
        return stat_finds(self, path)

    def open_read(self, path: str | bytes) -> tuple[int, os.stat_result]:
        parts, shown = self._parts(path)
        key = self._key(parts)
        if self._head(key, shown) is None:
            if self._is_directory(key, shown):
                raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                   path=shown)
            raise _absent(shown)
        return self._fetch(key, shown)

    def _spool_file(self, shown: str) -> int:
        """An unnamed file in the spool directory: gone when its fd is closed."""
        try:
            return os.open(self.spool, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error(exc, shown, "the server's spool directory refused it") from exc

    def make_dirs(self, path: str | bytes, mode: int) -> None:
        parts, shown = self._parts(path)
        for depth in range(1, len(parts) + 1):
            key = self._key(parts[:depth])
            if self._head(key, shown) is not None:
                raise StorageError(f"'{'/'.join(parts[:depth])}' in '{shown}' exists and is "
                                   "not a directory", errno=errno.EEXIST, path=shown)
            if not self._is_directory(key, shown):
                self._call(shown, self.client.put_object, Bucket=self.bucket, Key=key + "/",
                           Body=b"", Metadata={"mode": f"{stat.S_IMODE(mode):o}"})

    def create(self, path: str | bytes, dirs: StoreCache | None = None,
               kind: type[AtomicFile] | None = None, mode: int = 0o600) -> AtomicFile:
        parts, shown = self._parts(path)
        if not parts:
            raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR, path=shown)
        parent = self._key(parts[:-1])
        cache = dirs if isinstance(dirs, S3Cache) else None
        if cache is not None and cache.knows(parent):
            pass
        elif parts[:-1] and not self._is_directory(parent, shown):
            if self._head(parent, shown) is not None:
                raise StorageError(f"'{'/'.join(parts[:-1])}' in '{shown}' is not a "
                                   "directory", errno=errno.ENOTDIR, path=shown)
            raise StorageError(f"the directory of '{shown}' does not exist",
                               errno=errno.ENOENT, path=shown)
        elif cache is not None:
            cache.saw(parent)
        key = self._key(parts)
        if self._names_a_directory(parent, parts[-1], key, shown, cache):
            raise StorageError(f"'{shown}' exists and is a directory", errno=errno.EISDIR,
                               path=shown)
        if kind is None:
            return S3File(self, key, shown, mode)
        partial = self._partial_key(parts)
        self._claim(partial, shown)
        try:
            self._adopt_orphans(partial, shown)
            head = self._head(partial, shown)
            return S3PartialFile(self, key, partial, shown,
                                 int(head["ContentLength"]) if head is not None else 0)
        except BaseException:
            self._release(partial)
            raise

    def open_partial(self, path: str | bytes) -> tuple[int, os.stat_result] | None:
        parts, shown = self._parts(path)
        if not parts:
            return None
        key = self._partial_key(parts)
        self._claim(key, shown)
        try:
            self._adopt_orphans(key, shown)
            head = self._head(key, shown)
            if head is None:
                return None
            return self._fetch(key, shown, kept=True)
        finally:
            self._release(key)

    # -- resume's partial files -----------------------------------------------------------
    #
    # A resumable upload goes up to a hidden key beside its target (the root's partial
    # name, which no client path can name and no listing shows).  Broken off, what was
    # written is completed there as the partial object; a server killed meanwhile leaves
    # its multipart upload open with whole parts only, which the next server to look
    # (open_partial, create) completes as the partial object — the parts are all it
    # could prove anyway.  The commit copies the partial object to the target (a copy
    # inside the store) and deletes it.

    def _partial_key(self, parts: list[str]) -> str:
        return self._key([*parts[:-1], partial_name(parts[-1])])

    def _claim(self, key: str, shown: str) -> None:
        """This server's exclusive use of a partial key (another server's upload to it
        is taken over: its connection broke, or it would not be resumed)."""
        with self._partials_lock:
            if key in self._partials_open:
                raise StorageError(f"'{shown}' is being resumed by another transfer",
                                   errno=errno.EAGAIN, path=shown)
            self._partials_open.add(key)

    def _release(self, key: str) -> None:
        with self._partials_lock:
            self._partials_open.discard(key)

    def _adopt_orphans(self, key: str, shown: str) -> None:
        """Complete the newest multipart upload open at the partial ``key`` as the
        partial object (its parts are whole ones); abort any others."""
        listed = self._call(shown, self.client.list_multipart_uploads, Bucket=self.bucket,
                            Prefix=key)
        uploads = sorted((u for u in listed.get("Uploads", []) if u["Key"] == key),
                         key=lambda upload: upload["Initiated"])
        for index, upload in enumerate(uploads):
            upload_id = upload["UploadId"]
            parts = [] if index < len(uploads) - 1 else self._parts_of(key, upload_id, shown)
            if parts:
                self._call(shown, self.client.complete_multipart_upload, Bucket=self.bucket,
                           Key=key, UploadId=upload_id,
                           MultipartUpload={"Parts": parts})
            else:
                with contextlib.suppress(StorageError):
                    self._call(shown, self.client.abort_multipart_upload, Bucket=self.bucket,
                               Key=key, UploadId=upload_id)

    def _parts_of(self, key: str, upload_id: str, shown: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        options: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            page = self._call(shown, self.client.list_parts, **options)
            parts += ({"PartNumber": part["PartNumber"], "ETag": part["ETag"]}
                      for part in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return parts
            options["PartNumberMarker"] = page["NextPartNumberMarker"]

    def _fetch(self, key: str, shown: str, *, kept: bool = False,
               length: int | None = None, fd: int | None = None) -> tuple[int, os.stat_result]:
        """The object ``key`` (its first ``length`` bytes) in a spool file (``fd``, or an
        unnamed new one), the fd at its end when given, else at 0; and its stat, with the
        object's mode and mtime (``kept``: the upload time, for the keep time)."""
        own = fd is None
        target = self._spool_file(shown) if fd is None else fd
        try:
            extra = {} if length is None else {"Range": f"bytes=0-{length - 1}"}
            got = self._call(shown, self.client.get_object, Bucket=self.bucket, Key=key,
                             **extra)
            body = got["Body"]
            fetched = 0
            try:
                while chunk := body.read(FETCH_CHUNK):
                    _write_all(target, chunk)
                    fetched += len(chunk)
            finally:
                body.close()
            if fetched != int(got["ContentLength"]) or (length is not None
                                                         and fetched != length):
                raise StorageError(f"'{shown}' changed while it was read from the S3 store",
                                   errno=errno.EIO, path=shown)
            if not own:
                return target, os.fstat(target)
            modified = got["LastModified"]
            mtime_ns = int(modified.timestamp() * 1e9) if kept else _mtime_of(got)
            os.fchmod(target, 0o600 if kept else _mode_of(got, FILE_MODE))
            os.utime(target, ns=(mtime_ns, mtime_ns))
            os.lseek(target, 0, os.SEEK_SET)
            return target, os.fstat(target)
        except BaseException as exc:
            if own:
                os.close(target)
            if isinstance(exc, Exception):
                raise self._error(exc, shown) from exc
            raise

    def copy(self, source: str, target: str, metadata: dict[str, str], size: int,
             shown: str) -> None:
        """Copy an object inside the bucket with new metadata (a multipart copy where
        one request may not: over 5 GiB)."""
        options = {"Metadata": metadata, "MetadataDirective": "REPLACE"}
        if size < COPY_AT_ONCE:
            self._call(shown, self.client.copy_object, Bucket=self.bucket, Key=target,
                       CopySource={"Bucket": self.bucket, "Key": source}, **options)
        else:
            self._call(shown, self.client.copy, CopySource={"Bucket": self.bucket,
                                                            "Key": source},
                       Bucket=self.bucket, Key=target, ExtraArgs=options)

    def sweep_temporaries(self, keep_s: float, max_partial_bytes: int,
                          now: float | None = None) -> list[tuple[str, int]]:
        """Abort the multipart uploads under the prefix begun more than ``keep_s`` ago
        (a server that crashed mid-upload left them); delete partial objects older than
        ``keep_s``, then the oldest while they hold over ``max_partial_bytes`` — never
        one a transfer of this server holds."""
        cutoff = (time.time() if now is None else now) - keep_s
        removed = self._sweep_uploads(cutoff)
        partials = sorted(
            (obj for objects, _ in self._keys(self.prefix, self.prefix) for obj in objects
             if is_temporary_name(obj["Key"].rsplit("/", 1)[-1])
             and obj["Key"] not in self._partials_open),
            key=lambda obj: obj["LastModified"])
        total = sum(int(obj["Size"]) for obj in partials)
        for obj in partials:
            if obj["LastModified"].timestamp() >= cutoff and total <= max_partial_bytes:
                continue
            with contextlib.suppress(StorageError):
                self._call(obj["Key"], self.client.delete_object, Bucket=self.bucket,
                           Key=obj["Key"])
                removed.append((obj["Key"][len(self.prefix):], int(obj["Size"])))
                total -= int(obj["Size"])
        return removed

    def _sweep_uploads(self, cutoff: float) -> list[tuple[str, int]]:
        removed: list[tuple[str, int]] = []
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self._call(self.prefix, self.client.list_multipart_uploads, **options)
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    with contextlib.suppress(StorageError):
                        self._call(upload["Key"], self.client.abort_multipart_upload,
                                   Bucket=self.bucket, Key=upload["Key"],
                                   UploadId=upload["UploadId"])
                        removed.append((upload["Key"][len(self.prefix):], 0))
            if not page.get("IsTruncated"):
                return removed
            options["KeyMarker"] = page["NextKeyMarker"]
            options["UploadIdMarker"] = page["NextUploadIdMarker"]

    def symlink(self, path: str | bytes, target: str, *, clobber: bool = True) -> None:
        _parts, shown = self._parts(path)
        raise StorageError(f"'{shown}': the S3 store keeps no symbolic links",
                           errno=errno.EOPNOTSUPP, path=shown)

    def readlink(self, path: str | bytes) -> str:
        self.stat(path)  # absent: ENOENT; escaping: PathRefused
        shown = self._parts(path)[1]
        raise StorageError(f"'{shown}' is not a symbolic link", errno=errno.EINVAL,
                           path=shown)

    def remove(self, path: str | bytes, *, directory: bool = False) -> int:
        parts, shown = self._parts(path)
        if not parts:
            raise PathRefused("the server's root itself cannot be removed", path=shown)
        key = self._key(parts)
        head = self._head(key, shown)
        if directory:
            if head is not None:
                raise StorageError(f"'{shown}' is not a directory", errno=errno.ENOTDIR,
                                   path=shown)
            listed = self._call(shown, self.client.list_objects_v2, Bucket=self.bucket,
                                Prefix=key + "/", MaxKeys=2)
            keys = [obj["Key"] for obj in listed.get("Contents", [])]
            if not keys:
                raise _absent(shown)
            if keys != [key + "/"]:
                raise StorageError(f"'{shown}' is not empty", errno=errno.ENOTEMPTY,
                                   path=shown)
            self._call(shown, self.client.delete_object, Bucket=self.bucket, Key=key + "/")
            return 0
        if head is None:
            if self._is_directory(key, shown):
                raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                   path=shown)
            raise _absent(shown)
        self._call(shown, self.client.delete_object, Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])

    def list(self, path: str | bytes, *, recursive: bool = False,
             limit: int = 1_000_000) -> Generator[Entry, None, None]:
        parts, shown = self._parts(path)
        key = self._key(parts)
        head = self._head(key, shown)
        if head is not None:
            yield _file_entry(parts[-1], head)
            return
        if not self._is_directory(key, shown):
            raise _absent(shown)
        top = key + "/" if parts else self.prefix
        found: dict[str, Entry] = {}
        for objects, prefixes in self._keys(top, shown, None if recursive else "/"):
            for common in prefixes:
                name = common[len(top):].rstrip("/")
                found.setdefault(name, Entry(name, Kind.DIRECTORY, DIRECTORY_MODE, 0, 0))
            for obj in objects:
                relative = obj["Key"][len(top):]
                if not relative:
                    continue  # the marker of the directory listed
                names = relative.rstrip("/").split("/")
                if is_temporary_name(names[-1]):
                    continue  # a partial object: never listed
                for depth in range(1, len(names)):  # the directories on the way
                    name = "/".join(names[:depth])
                    found.setdefault(name, Entry(name, Kind.DIRECTORY, DIRECTORY_MODE, 0, 0))
                name = "/".join(names)
                if relative.endswith("/"):
                    found[name] = Entry(name, Kind.DIRECTORY, DIRECTORY_MODE, 0,
                                        _listed_mtime(obj))
                else:
                    found[name] = Entry(name, Kind.FILE, FILE_MODE, int(obj["Size"]),
                                        _listed_mtime(obj))
                if len(found) > limit:
                    break
        # a directory's entries sorted by name, each directory right before its own
        ordered = sorted(found.values(), key=lambda entry: entry.path.split("/"))
        yield from ordered[:limit]
        if len(ordered) > limit:
            raise StorageError(f"'{shown}' holds more than {limit} entries",
                               errno=errno.E2BIG, path=shown)


class S3File(AtomicFile):
    """An object being written: a spool file on local disk whose bytes go up as the
    parts of a multipart upload while they arrive; completed by ``publish``, aborted by
    ``abort``.  Files under one part go up whole at the commit (one PUT)."""

    # Its commit is a PUT or a CompleteMultipartUpload: never on the event loop.
    remote = True

    def __init__(self, store: S3Store, key: str, shown: str, mode: int) -> None:
        self.store = store
        self.key = key
        # The multipart upload's id, being made in a worker thread (None: none begun):
        # the writer, on the event loop, never waits for a request.
        self.upload: concurrent.futures.Future[str] | None = None
        self.parts: list[concurrent.futures.Future[dict[str, Any]]] = []
        self.sent = 0  # bytes handed to part uploads
        self.final_mode = mode
        self.final_mtime_ns: int | None = None
        self.started_metadata: dict[str, str] = {}  # what the multipart upload began with
        super().__init__(store._spool_dir, key.rsplit("/", 1)[-1], shown, mode)

    # -- writing --------------------------------------------------------------------------

    write_back_step = PART_BYTES

    def _write_back(self) -> None:
        """Send every whole part written so far (called once a part's worth is written
        since the last part; ``_queued`` stays 0, so from then on after every write)."""
        while self.written - self.sent >= PART_BYTES:
            self._send_part(self.sent, PART_BYTES)

    def skip(self, count: int) -> None:
        super().skip(count)
        try:
            # the hole made part of the file now: a part may be read from it at once
            os.ftruncate(self.fd, self.written)
            self._write_back()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "nothing was written") from exc
        except StorageError:
            self.abort()
            raise

    def expect(self, mode: int, mtime_ns: int | None) -> None:
        self.final_mode, self.final_mtime_ns = mode, mtime_ns

    def _send_part(self, offset: int, length: int) -> None:
        if self.upload is None:
            self.started_metadata = self._metadata()
            # Queued before any of its parts: a worker running a part finds it made or
            # being made by another worker, never waiting behind it in the queue.
            self.upload = self.store.threads.submit(self._begin_upload,
                                                    self.started_metadata)
        self._check_parts()
        self.parts.append(self.store.threads.submit(self._upload_part, len(self.parts) + 1,
                                                    offset, length))
        self.sent = offset + length

    def _begin_upload(self, metadata: dict[str, str]) -> str:
        created = self.store._call(self.shown, self.store.client.create_multipart_upload,
                                   Bucket=self.store.bucket, Key=self.key, Metadata=metadata)
        return str(created["UploadId"])

    def _upload_part(self, number: int, offset: int, length: int) -> dict[str, Any]:
        assert self.upload is not None
        upload_id = self.upload.result()  # its failure fails the part (_check_parts)
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise StorageError(f"'{self.shown}': the spool file came up short",
                               errno=errno.EIO, path=self.shown)
        done = self.store._call(self.shown, self.store.client.upload_part,
                                Bucket=self.store.bucket, Key=self.key,
                                UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": done["ETag"]}

    def _check_parts(self) -> None:
        for part in self.parts:
            if part.done() and part.exception() is not None:
                error = part.exception()
                raise error if isinstance(error, StorageError) else self.store._error(
                    error or RuntimeError("a part failed"), self.shown)

    def _metadata(self) -> dict[str, str]:
        metadata = {"mode": f"{stat.S_IMODE(self.final_mode):o}"}
        if self.final_mtime_ns is not None:
            metadata["mtime-ns"] = str(self.final_mtime_ns)
        return metadata

    # -- committing -----------------------------------------------------------------------

    def seal(self, mode: int, mtime_ns: int | None = None, *, durable: bool = True) -> None:
        """Take the final mode and mtime (they go into the object's metadata); the spool
        file stays open for the rest of the upload.  The store makes the object durable
        as the upload completes, so there is no fsync here."""
        if self._done:
            return
        self._committing()
        try:
            if self._holes:  # a trailing hole needs the size set explicitly
                os.ftruncate(self.fd, self.written)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "nothing was written") from exc
        self.final_mode = mode
        self.final_mtime_ns = mtime_ns

    def flushed_by_file_system(self) -> bool:
        return False  # durable once the store completes the upload

    def publish(self, clobber: bool = True) -> None:
        """Complete the upload: the object appears whole under its key, or not at all."""
        try:
            if not clobber and self.store._head(self.key, self.shown) is not None:
                raise _exists(self.shown)
            self._complete(exact_metadata=True)
        except BaseException:
            self.abort()
            raise
        finally:
            self._discard_temporary()

    def _complete(self, *, exact_metadata: bool) -> None:
        """Every byte written up under ``key``: one PUT, or the last part and the
        multipart upload completed; ``exact_metadata``: then fix the metadata, which the
        upload's start did not know (the final mode and mtime)."""
        store = self.store
        if self.upload is None:
            data = os.pread(self.fd, self.written, 0)
            store._call(self.shown, store.client.put_object, Bucket=store.bucket,
                        Key=self.key, Body=data, Metadata=self._metadata())
            return
        if self.written > self.sent or not self.parts:
            self._send_part(self.sent, self.written - self.sent)
        concurrent.futures.wait(self.parts)
        self._check_parts()
        assert self.upload is not None
        store._call(self.shown, store.client.complete_multipart_upload,
                    Bucket=store.bucket, Key=self.key, UploadId=self.upload.result(),
                    MultipartUpload={"Parts": [part.result() for part in self.parts]})
        self.upload = None  # nothing left to abort
        if exact_metadata and self._metadata() != self.started_metadata:
            # the upload began before the final mode and mtime were known
            store.copy(self.key, self.key, self._metadata(), self.written, self.shown)

    def commit(self, mode: int, mtime_ns: int | None = None, *, clobber: bool = True,
               durable: bool = True) -> None:
        self.seal(mode, mtime_ns, durable=durable)
        try:
            self.publish(clobber)
        finally:
            self._finish()

    def abort(self) -> None:
        if self._done:
            return
        for part in self.parts:
            part.cancel()
        concurrent.futures.wait(self.parts)
        upload, self.upload = self.upload, None
        if upload is not None and not upload.cancel():  # begun, or being begun
            with contextlib.suppress(StorageError, concurrent.futures.CancelledError):
                self.store._call(self.shown, self.store.client.abort_multipart_upload,
                                 Bucket=self.store.bucket, Key=self.key,
                                 UploadId=upload.result())
        super().abort()



class S3PartialFile(KeptWhenBroken, S3File):
    """A resumable upload: written up to the target's partial key (see S3Store), kept
    there as the partial object when broken off, copied to the target by the commit.
    ``kept`` is what the partial object held when this transfer began; ``start_at``
    takes the first bytes of it back into the spool."""

    def __init__(self, store: S3Store, target: str, key: str, shown: str, kept: int) -> None:
        self.target = target
        self.kept = kept
        self.started = False  # start_at was called: what is written replaces the old
        super().__init__(store, key, shown, 0o600)

    def start_at(self, offset: int) -> None:
        """Keep the first ``offset`` bytes of the partial object (0: start over)."""
        if not 0 <= offset <= self.kept:
            raise ValueError(f"offset {offset} outside the {self.kept} bytes kept")
        self.started = True
        if not offset:
            return
        try:
            self.store._fetch(self.key, self.shown, length=offset, fd=self.fd)
            self.written = offset
            self._write_back()
        except StorageError:
            self.keep = False
            self.abort()
            raise

    def publish(self, clobber: bool = True) -> None:
        store = self.store
        try:
            if not clobber and store._head(self.target, self.shown) is not None:
                raise _exists(self.shown)
            self._complete(exact_metadata=False)
            store.copy(self.key, self.target, self._metadata(), self.written, self.shown)
            store._call(self.shown, store.client.delete_object, Bucket=store.bucket,
                        Key=self.key)
        except BaseException:
            self.abort()
            raise
        finally:
            self._discard_temporary()

    def abort(self) -> None:
        """Broken off: what was written becomes the partial object (nothing written
        since start_at(0), or a failed write: the partial object goes)."""
        if self._done:
            return
        store = self.store
        if self.keep and self.written:
            try:
                self._complete(exact_metadata=False)
            except StorageError as exc:  # the old partial stays as it was, if any
                store_log.warning("'%s': keeping what arrived for resume failed: %s",
                                  self.shown, exc)
            self._discard_temporary()
            self._finish()
            return
        super().abort()  # the multipart upload, if any, and the spool file
        if not self.keep or self.started:
            with contextlib.suppress(StorageError):
                store._call(self.shown, store.client.delete_object, Bucket=store.bucket,
                            Key=self.key)

    def _finish(self) -> None:
        if not self._done:
            self.store._release(self.key)
        super()._finish()


def _client(location: S3Location) -> Any:
    try:
        import boto3  # noqa: PLC0415 - only a server with an S3 store loads boto3
        from botocore.config import Config  # noqa: PLC0415
    except ImportError:
        raise NotAvailable("an S3 store needs boto3, which is not installed: pip install "
                           "'sockferry[s3]'") from None

    session = boto3.session.Session(profile_name=location.profile)
    return session.client(
        "s3", endpoint_url=location.endpoint, region_name=location.region,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=60,
                      retries={"max_attempts": 3, "mode": "standard"},
                      max_pool_connections=UPLOAD_THREADS * 2))


def _exists(shown: str) -> StorageError:
    return StorageError(f"'{shown}' already exists and the server does not overwrite files",
                        errno=errno.EEXIST, path=shown)


def _absent(shown: str) -> StorageError:
    return StorageError(f"'{shown}' does not exist", errno=errno.ENOENT, path=shown)


def _mode_of(head: dict[str, Any] | None, default: int) -> int:
    try:
        return int((head or {}).get("Metadata", {}).get("mode", ""), 8) & 0o7777
    except ValueError:
        return default


def _mtime_of(head: dict[str, Any] | None) -> int:
    if head is None:
        return 0
    with contextlib.suppress(ValueError):
        return int(head.get("Metadata", {}).get("mtime-ns", ""))
    modified = head.get("LastModified")
    return int(modified.timestamp() * 1e9) if modified is not None else 0


def _listed_mtime(obj: dict[str, Any]) -> int:
    return int(obj["LastModified"].timestamp() * 1e9)


def _file_entry(path: str, head: dict[str, Any]) -> Entry:
    return Entry(path, Kind.FILE, _mode_of(head, FILE_MODE), int(head["ContentLength"]),
                 _mtime_of(head))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if TYPE_CHECKING:
    def _s3_is_a_store(store: S3Store) -> Store:  # mypy holds the backend to the Store protocol
        return store

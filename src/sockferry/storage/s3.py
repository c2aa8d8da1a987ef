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
spool file on local disk (so splice, the digest's read-back and holes work as for the
root) and go up in ``PART_BYTES`` parts while the body still arrives; the commit
uploads the last part and completes the upload, an abort aborts it.  An upload a crash
left open is aborted by ``sweep_temporaries`` once older than the keep time.  A read
fetches the object into a spool file first and hands out its fd.

Kept out (the store says so through ``keeps_links`` and ``keeps_partials``, and the
ferry server then does not offer the LINKS and RESUME features): symbolic links, and
the partial files of resume.  ``clobber=False`` checks for the key just before the
commit: two servers committing the same new name at once may both succeed.

boto3 is imported when a store is opened, not before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
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
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.dircache import DirHandle
from sockferry.storage.names import split_client_path

if TYPE_CHECKING:
    from sockferry.storage.store import StoreCache

PART_BYTES = 8 * 1024 * 1024  # S3 wants 5 MiB at least for every part but the last
PARTS_IN_FLIGHT = 4  # per file: a writer waits when this many are still going up
UPLOAD_THREADS = 8  # per store: parts, and the reads of whole objects into the spool
FETCH_CHUNK = 1024 * 1024
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


class NoCache:
    """What a connection caches of an S3 store between requests: nothing."""

    def changed(self, path: str) -> None:
        pass

    def removed(self, path: str) -> None:
        pass

    def close(self) -> None:
        pass


class S3Store:
    """A tree of files in a bucket (see the module's docstring)."""

    keeps_links = False
    keeps_partials = False
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
        if not key or key.endswith("/"):
            return None
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            return head
        except Exception as exc:
            error = self._error(exc, shown)
            if error.errno == errno.ENOENT:
                return None
            raise error from exc

    def _is_directory(self, key: str, shown: str) -> bool:
        if key == self.prefix:
            return True  # the top: there even when empty
        listed = self._call(shown, self.client.list_objects_v2, Bucket=self.bucket,
                            Prefix=key + "/", MaxKeys=1)
        return bool(listed.get("KeyCount", 0))

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
        return NoCache()

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
        if self._is_directory(key, shown):
            marker = self._head_marker(key, shown) if parts else None
            return Entry(shown, Kind.DIRECTORY, _mode_of(marker, DIRECTORY_MODE), 0,
                         _mtime_of(marker))
        raise _absent(shown)

    def _head_marker(self, key: str, shown: str) -> dict[str, Any] | None:
        try:
            marker: dict[str, Any] = self.client.head_object(Bucket=self.bucket,
                                                             Key=key + "/")
            return marker
        except Exception as exc:
            error = self._error(exc, shown)
            if error.errno == errno.ENOENT:
                return None
            raise error from exc

    def exists(self, path: str | bytes) -> bool:
        try:
            self.stat(path)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def open_read(self, path: str | bytes) -> tuple[int, os.stat_result]:
        parts, shown = self._parts(path)
        key = self._key(parts)
        if self._head(key, shown) is None:
            if self._is_directory(key, shown):
                raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                   path=shown)
            raise _absent(shown)
        fd = self._spool_file(shown)
        try:
            got = self._call(shown, self.client.get_object, Bucket=self.bucket, Key=key)
            body = got["Body"]
            try:
                while chunk := body.read(FETCH_CHUNK):
                    _write_all(fd, chunk)
            finally:
                body.close()
            size = os.lseek(fd, 0, os.SEEK_CUR)
            if size != int(got["ContentLength"]):
                raise StorageError(f"'{shown}' changed while it was read from the S3 store",
                                   errno=errno.EIO, path=shown)
            mtime_ns = _mtime_of(got)
            os.fchmod(fd, _mode_of(got, FILE_MODE))
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.lseek(fd, 0, os.SEEK_SET)
            return fd, os.fstat(fd)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, Exception):
                raise self._error(exc, shown) from exc
            raise

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
        if kind is not None:
            raise StorageError(f"'{shown}': the S3 store keeps no partial files",
                               errno=errno.EOPNOTSUPP, path=shown)
        if not parts:
            raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR, path=shown)
        parent = self._key(parts[:-1])
        if parts[:-1] and not self._is_directory(parent, shown):
            if self._head(parent, shown) is not None:
                raise StorageError(f"'{'/'.join(parts[:-1])}' in '{shown}' is not a "
                                   "directory", errno=errno.ENOTDIR, path=shown)
            raise StorageError(f"the directory of '{shown}' does not exist",
                               errno=errno.ENOENT, path=shown)
        key = self._key(parts)
        if self._is_directory(key, shown):
            raise StorageError(f"'{shown}' exists and is a directory", errno=errno.EISDIR,
                               path=shown)
        return S3File(self, key, shown, mode)

    def open_partial(self, path: str | bytes) -> tuple[int, os.stat_result] | None:
        self._parts(path)  # an escaping path is refused all the same
        return None

    def sweep_temporaries(self, keep_s: float, max_partial_bytes: int,
                          now: float | None = None) -> list[tuple[str, int]]:
        """Abort the multipart uploads under the prefix begun more than ``keep_s`` ago
        (a server that crashed mid-upload left them); there are no partial files."""
        cutoff = (time.time() if now is None else now) - keep_s
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

    def __init__(self, store: S3Store, key: str, shown: str, mode: int) -> None:
        self.store = store
        self.key = key
        self.upload_id: str | None = None
        self.parts: list[concurrent.futures.Future[dict[str, Any]]] = []
        self.sent = 0  # bytes handed to part uploads
        self.final_mode = mode
        self.final_mtime_ns: int | None = None
        self._upload_lock = threading.Lock()
        super().__init__(store._spool_dir, key.rsplit("/", 1)[-1], shown, mode)

    # -- writing --------------------------------------------------------------------------

    def _write_back(self) -> None:
        """Send every whole part written so far (called after each write or splice)."""
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

    def _send_part(self, offset: int, length: int) -> None:
        if self.upload_id is None:
            created = self.store._call(self.shown, self.store.client.create_multipart_upload,
                                       Bucket=self.store.bucket, Key=self.key,
                                       Metadata=self._metadata())
            self.upload_id = str(created["UploadId"])
        while sum(not part.done() for part in self.parts) >= PARTS_IN_FLIGHT:
            concurrent.futures.wait(self.parts, return_when=concurrent.futures.FIRST_COMPLETED)
        self._check_parts()
        self.parts.append(self.store.threads.submit(self._upload_part, len(self.parts) + 1,
                                                    offset, length))
        self.sent = offset + length

    def _upload_part(self, number: int, offset: int, length: int) -> dict[str, Any]:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise StorageError(f"'{self.shown}': the spool file came up short",
                               errno=errno.EIO, path=self.shown)
        done = self.store._call(self.shown, self.store.client.upload_part,
                                Bucket=self.store.bucket, Key=self.key,
                                UploadId=self.upload_id, PartNumber=number, Body=data)
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
        store = self.store
        try:
            if not clobber and store._head(self.key, self.shown) is not None:
                raise StorageError(f"'{self.shown}' already exists and the server does not "
                                   "overwrite files", errno=errno.EEXIST, path=self.shown)
            if self.upload_id is None:
                data = os.pread(self.fd, self.written, 0)
                store._call(self.shown, store.client.put_object, Bucket=store.bucket,
                            Key=self.key, Body=data, Metadata=self._metadata())
                return
            if self.written > self.sent or not self.parts:
                self._send_part(self.sent, self.written - self.sent)
            concurrent.futures.wait(self.parts)
            self._check_parts()
            store._call(self.shown, store.client.complete_multipart_upload,
                        Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                        MultipartUpload={"Parts": [part.result() for part in self.parts]})
            self.upload_id = None  # nothing left to abort
            if self.final_mtime_ns is not None or self.final_mode != self._mode:
                # the metadata given at the start did not know the final mode and mtime
                store._call(self.shown, store.client.copy_object, Bucket=store.bucket,
                            Key=self.key, CopySource={"Bucket": store.bucket, "Key": self.key},
                            Metadata=self._metadata(), MetadataDirective="REPLACE")
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_spool()

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
        if self.upload_id is not None:
            with contextlib.suppress(StorageError):
                self.store._call(self.shown, self.store.client.abort_multipart_upload,
                                 Bucket=self.store.bucket, Key=self.key,
                                 UploadId=self.upload_id)
            self.upload_id = None
        super().abort()

    def _close_spool(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.temp_name, dir_fd=self.dir_fd)


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

"""TFTP for asyncio programs: ``sockferry.tftp.get``, ``put`` and ``serve``.

The same client and server as ``sockferry tftp-get``, ``tftp-put`` and ``tftp-serve``
(RFC 1350 with the blksize, timeout, tsize and windowsize options); TFTP has no
authentication and no encryption, so serve it on networks you trust.
"""

from __future__ import annotations

import os

from sockferry.addresses import Address, HostPort, format_sockaddr, parse_address
from sockferry.errors import UsageError
from sockferry.library import ProgressCallback, Server, Transfer
from sockferry.storage.store import Store
from sockferry.tftp.client import DEFAULT_PORT, ClientOptions, download, upload
from sockferry.tftp.client import ProgressCallback as Counts
from sockferry.tftp.options import ServerLimits
from sockferry.tftp.packets import MAX_BLKSIZE
from sockferry.tftp.server import DEFAULT_MAX_TRANSFERS, TftpServer, TftpServerConfig, UploadPolicy

__all__ = ["DEFAULT_PORT", "get", "put", "serve"]


async def get(host: str, remote: str, local: str | os.PathLike[str], *,
              port: int = DEFAULT_PORT, blksize: int = 1468, windowsize: int = 1,
              timeout: int | None = None, retries: int = 6, mode: str = "octet",
              progress: ProgressCallback | None = None) -> Transfer:
    """Download ``remote`` from the TFTP server ``host`` into the local file ``local``,
    which appears (atomically) only once complete.  ``blksize`` and ``windowsize``
    (RFC 7440) are asked for and the server may grant less; ``timeout`` is sent as the
    RFC 2349 option when given; ``mode`` is ``octet`` or ``netascii``."""
    result = await download(HostPort(host, port), remote, os.fspath(local),
                            _options(blksize, windowsize, timeout, retries, mode),
                            _counts(progress))
    return Transfer(remote, os.fspath(local), result.size)


async def put(local: str | os.PathLike[str], host: str, remote: str, *,
              port: int = DEFAULT_PORT, blksize: int = 1468, windowsize: int = 1,
              timeout: int | None = None, retries: int = 6, mode: str = "octet",
              progress: ProgressCallback | None = None) -> Transfer:
    """Upload the local file ``local`` to the TFTP server ``host`` as ``remote`` (the
    server must allow uploads); the options are those of ``get``."""
    result = await upload(os.fspath(local), HostPort(host, port), remote,
                          _options(blksize, windowsize, timeout, retries, mode),
                          _counts(progress))
    return Transfer(os.fspath(local), remote, result.size)


async def serve(root: str | os.PathLike[str] | Store, host: str = "localhost",
                port: int = DEFAULT_PORT, *, listen: list[str] | None = None,
                allow_upload: str = "none", blksize_max: int = MAX_BLKSIZE,
                windowsize_max: int = 64, max_transfers: int = DEFAULT_MAX_TRANSFERS,
                max_upload_size: int | None = None) -> Server:
    """Serve the directory ``root`` over TFTP on ``host``:``port`` (or on every
    ``listen`` address).  ``root`` may also be an S3 location
    (``s3://BUCKET/PREFIX?endpoint=URL``, as ``tftp-serve --store``) or a store of
    one's own (``sockferry.storage.store.Store``), closed when the server is.
    ``allow_upload``: ``none``, ``create`` (new files only), ``overwrite`` (existing
    files only) or ``any``, as ``tftp-serve --allow-upload``."""
    try:
        policy = UploadPolicy(allow_upload)
    except ValueError:
        raise UsageError(f"allow_upload '{allow_upload}' is none of none, create, "
                         "overwrite, any") from None
    addresses: list[Address] = [parse_address(a, DEFAULT_PORT) for a in listen] if listen \
        else [HostPort(host, port)]
    served = os.fspath(root) if isinstance(root, (str, os.PathLike)) else root
    config = TftpServerConfig(root=served, allow_upload=policy,
                          limits=ServerLimits(blksize_max=blksize_max,
                                              windowsize_max=windowsize_max),
                          max_transfers=max_transfers, max_upload_bytes=max_upload_size)
    server = TftpServer(config)
    await server.start(addresses)
    return Server(server.close, [format_sockaddr(a) for a in server.addresses])


def _options(blksize: int, windowsize: int, timeout: int | None, retries: int,
             mode: str) -> ClientOptions:
    if mode not in ("octet", "netascii"):
        raise UsageError(f"mode '{mode}' is neither octet nor netascii")
    return ClientOptions(blksize=blksize, windowsize=windowsize, timeout_s=timeout,
                         retries=retries, mode=mode)


def _counts(progress: ProgressCallback | None) -> Counts | None:
    """The TFTP client reports bytes so far; the library's callbacks take increments."""
    if progress is None:
        return None
    done = 0

    def counts(so_far: int, _total: int | None) -> None:
        nonlocal done
        if so_far > done:
            progress(so_far - done)
            done = so_far

    return counts

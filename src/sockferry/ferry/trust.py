"""How a ferry client trusts a TLS server, and which certificate a TLS server shows —
one place for the command line and the library.

The TLS modules (and ``cryptography``) load only when TLS is asked for: a plain client
or server never imports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sockferry.errors import UsageError
from sockferry.records import record

if TYPE_CHECKING:
    from sockferry.ferry.secure import ClientTLS
    from sockferry.tls import ServerTLS


def client_trust(*, ca: str | None = None, fingerprint: str | None = None,
                 known_hosts: str | os.PathLike[str] | None = None) -> ClientTLS:
    """Trust by a pinned SHA-256 ``fingerprint``, else by the CA bundle ``ca``, else by
    the certificate remembered on first use in ``known_hosts`` (default
    ``~/.config/sockferry/known_hosts``)."""
    if ca and fingerprint:
        raise UsageError("a CA and a fingerprint are two ways to trust a server: give "
                         "one of them")
    from sockferry.ferry.secure import ClientTLS  # noqa: PLC0415 - TLS clients only
    from sockferry.known_hosts import default_path  # noqa: PLC0415
    from sockferry.tls import parse_fingerprint  # noqa: PLC0415

    if fingerprint:
        return ClientTLS(pin=parse_fingerprint(fingerprint))
    if ca:
        return ClientTLS(ca=ca)
    return ClientTLS(known_hosts=Path(known_hosts) if known_hosts else default_path())


@record
class ServerIdentity:
    """The server's TLS context and where its certificate came from."""

    tls: ServerTLS
    cert: Path
    key: Path
    created: bool  # a self-signed pair was made just now


def server_identity(*, cert: str | None, key: str | None,
                    self_signed_dir: Path | None) -> ServerIdentity:
    """``cert`` and ``key`` when given, else the self-signed pair kept in
    ``self_signed_dir`` (beside the token file), made on first use."""
    if bool(cert) != bool(key):
        raise UsageError("a certificate and its key go together: give both, or neither "
                         "for a self-signed certificate")
    from sockferry.tls import ensure_certificate, server_tls  # noqa: PLC0415 - TLS only

    created = False
    if cert and key:
        cert_path, key_path = Path(cert), Path(key)
    elif self_signed_dir is None:
        raise UsageError("a self-signed certificate is kept beside the token file: give "
                         "a token file, or a certificate and its key")
    else:
        cert_path, key_path, created = ensure_certificate(self_signed_dir)
    return ServerIdentity(server_tls(str(cert_path), str(key_path)), cert_path, key_path,
                          created)

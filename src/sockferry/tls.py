"""TLS 1.3 for the ferry transport: certificates, contexts, fingerprints, channel binding.

``serve --tls`` makes a self-signed certificate on first use (``ensure_certificate``);
clients trust a server through a CA file, a pinned fingerprint, or trust on first use
(``sockferry.known_hosts``).  The token handshake stays on top of TLS and is bound to the
server's certificate with ``tls-server-end-point`` (RFC 5929 §4.1, ``end_point_binding``;
docs/protocol.md §3.1 argues the choice).  ``cryptography`` is imported only by the
functions that parse or make certificates, so a command without TLS never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from sockferry.errors import NotAvailable, UsageError
from sockferry.sockets import storage_error

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"
BINDING_TYPE = b"tls-server-end-point"
CERT_DAYS = 3650  # a self-signed certificate is trusted by its fingerprint, not its dates


def _cryptography() -> None:
    try:
        import cryptography  # noqa: F401, PLC0415 - see the module docstring
    except ImportError:
        raise NotAvailable("TLS needs the 'cryptography' package — run: pip install "
                           "cryptography") from None


# ---- fingerprints ----------------------------------------------------------------------


def fingerprint(der: bytes) -> bytes:
    """SHA-256 of a certificate (DER), as ``openssl x509 -fingerprint -sha256`` shows."""
    return hashlib.sha256(der).digest()


def format_fingerprint(digest: bytes) -> str:
    """``SHA256:<base64, no padding>``, OpenSSH's way of writing it."""
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def format_hex(digest: bytes) -> str:
    """``AB:CD:...``, openssl's way of writing it."""
    return ":".join(f"{b:02X}" for b in digest)


_HEX = re.compile(r"^(?:sha-?256 fingerprint=)?([0-9a-f]{2}(?::?[0-9a-f]{2}){31})$", re.I)


def parse_fingerprint(text: str) -> bytes:
    """Either form: ``SHA256:base64`` or openssl's hex (colons and its prefix optional)."""
    text = text.strip()
    if text[:7].upper() == "SHA256:":
        encoded = text[7:]
        try:
            digest = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == 32:
            return digest
    elif match := _HEX.match(text):
        return bytes.fromhex(match.group(1).replace(":", ""))
    raise UsageError(f"'{text}' is not a SHA-256 fingerprint — write SHA256:<base64> or "
                     "the hex that `openssl x509 -noout -fingerprint -sha256` prints")


# ---- channel binding -------------------------------------------------------------------


def end_point_binding(der: bytes) -> bytes:
    """RFC 5929 §4.1 tls-server-end-point: the certificate hashed with the hash of its
    signature algorithm, SHA-256 in place of MD5 and SHA-1 (and for signatures without
    a separate hash, such as Ed25519), prefixed with the binding type (§3.1)."""
    _cryptography()
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise UsageError(f"the certificate cannot be parsed: {exc}") from None
    algorithm = cert.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1) or name not in hashlib.algorithms_available:
        name = "sha256"
    return BINDING_TYPE + b":" + hashlib.new(name, der).digest()


# ---- certificates ----------------------------------------------------------------------


def first_certificate(path: str) -> bytes:
    """The DER of the first certificate in a PEM file (the server's own, in a chain)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise storage_error(exc, path) from exc
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise UsageError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return ssl.PEM_cert_to_DER_cert(text[begin : end + len("-----END CERTIFICATE-----")])


def ensure_certificate(directory: Path) -> tuple[Path, Path, bool]:
    """(cert, key, created): the self-signed pair in ``directory``, made if missing."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key, False
    if cert.exists() or key.exists():
        present = cert if cert.exists() else key
        raise UsageError(f"{present} exists without its pair — remove it to have a new "
                         "certificate made, or pass --cert and --key")
    make_self_signed(cert, key)
    return cert, key, True


def make_self_signed(cert_path: Path, key_path: Path, names: list[str] | None = None) -> None:
    """A P-256 key (mode 0600) and a self-signed certificate for ``names`` (default: this
    host's name, localhost and the loopback addresses)."""
    _cryptography()
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    names = names or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise storage_error(exc, str(path)) from exc


# ---- contexts --------------------------------------------------------------------------


def _tls13_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # The client's end of input is a TCP FIN below TLS (tlsstream.py): OpenSSL must take
    # it as the end of the peer's data, not as a fatal error that also ends our sending.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    return context


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """What a TLS server needs: its context, and its certificate for logs and binding."""

    context: ssl.SSLContext
    binding: bytes
    fingerprint: bytes


def server_tls(cert: str, key: str) -> ServerTLS:
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.num_tickets = 0  # no session resumption: nothing to hand out
    for path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise storage_error(exc, path) from exc
    _check_key_mode(key)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError:
        raise UsageError(f"{cert} and {key} are not a PEM certificate and its private key "
                         "— check --cert and --key") from None
    der = first_certificate(cert)
    return ServerTLS(context, end_point_binding(der), fingerprint(der))


def _check_key_mode(key: str) -> None:
    try:
        mode = os.stat(key).st_mode
    except OSError as exc:
        raise storage_error(exc, key) from exc
    if mode & 0o077:
        raise UsageError(f"TLS key {key} is accessible by other users — run: chmod 600 {key}")


def client_context(ca: str | None) -> ssl.SSLContext:
    """With ``ca``: the chain and the host name are checked by OpenSSL.  Without: any
    certificate passes the handshake and the caller checks its fingerprint (pinned or
    known) before anything is sent."""
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=ca)
    except OSError as exc:
        raise storage_error(exc, ca) from exc
    except ssl.SSLError as exc:
        raise UsageError(f"{ca} holds no usable PEM certificate ({exc.reason or exc})") \
            from None
    return context


def describe_handshake_error(exc: ssl.SSLError, peer: str) -> str:
    """One sentence for a failed handshake, naming the likely cause."""
    reason = exc.reason or ""
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (f"{peer} does not answer in TLS — is the server running without --tls? "
                "Connect without --tls, or restart the server with --tls")
    if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                  "NO_PROTOCOLS_AVAILABLE"):
        return f"{peer} does not speak TLS 1.3, the only version sockferry accepts"
    if reason == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(exc, "verify_message", "") or "verification failed"
        return (f"the TLS certificate of {peer} is not trusted: {detail} — check --ca, or "
                "pin it with --fingerprint")
    return f"TLS handshake with {peer} failed: {reason or exc}"


__all__ = ["ServerTLS", "client_context", "end_point_binding",
           "ensure_certificate", "fingerprint", "format_fingerprint", "format_hex",
           "parse_fingerprint", "server_tls"]

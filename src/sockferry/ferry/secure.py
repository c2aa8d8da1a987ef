"""TLS around a ferry connection: the client's trust policy and the server's accept.

A client trusts the server's certificate in one of three ways (``ClientTLS.trust``):
``ca`` (OpenSSL checks the chain and the host name), ``pin`` (its SHA-256 fingerprint
must equal the one given), or ``tofu`` (trust on first use: the known-hosts line must
match; a host without one is written down once the token handshake, bound to this
certificate, has succeeded).  The server peeks at the first byte before its handshake
so that a plaintext client hears one sentence instead of a TLS alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from sockferry.addresses import Address, HostPort
from sockferry.errors import (
    IdentityRefused,
    NetworkError,
    PeerRefused,
    RemoteProtocolError,
    TransferTimeout,
)
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.parser import FrameParser
from sockferry.known_hosts import KnownHosts
from sockferry.sockets import peer_and_local
from sockferry.tls import (
    ServerTLS,
    client_context,
    describe_handshake_error,
    end_point_binding,
    fingerprint,
    format_fingerprint,
)
from sockferry.tlsstream import TLSStream

log = logging.getLogger("sockferry.ferry")

PLAINTEXT_REFUSED = ("this server accepts TLS only — connect with --tls (and --fingerprint, "
                     "--ca, or trust on first use)")
TLS_RECORD_HANDSHAKE = 0x16


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client checks the server: ``ca`` file, ``pin`` fingerprint, or else the
    ``known_hosts`` file (trust on first use)."""

    ca: str | None = None
    pin: bytes | None = None
    known_hosts: Path | None = None

    def __post_init__(self) -> None:
        if self.ca is None and self.pin is None and self.known_hosts is None:
            raise ValueError("ClientTLS needs a CA file, a fingerprint or a known-hosts file")

    @property
    def trust(self) -> str:
        return "ca" if self.ca else "pin" if self.pin else "tofu"


def host_key(address: Address) -> str:
    """How a server is named in the known-hosts file: HOST:PORT, [v6]:PORT, unix:PATH."""
    return str(address)


async def connect_tls(sock: socket.socket, address: Address, tls: ClientTLS,
                      timeout_s: float, idle_timeout_s: float) -> TLSStream:
    """Handshake over ``sock`` and check the certificate before anything else is sent."""
    hostname = address.host if isinstance(address, HostPort) and tls.ca else None
    try:
        stream = TLSStream.wrap(sock, client_context(tls.ca), server_side=False,
                                server_hostname=hostname, idle_timeout_s=idle_timeout_s)
    except BaseException:
        sock.close()
        raise
    peer = stream.peer
    try:
        await stream.handshake(timeout_s)
        der = stream.peer_der
        _check_identity(tls, host_key(address), fingerprint(der))
        stream.binding = end_point_binding(der)
    except ssl.SSLError as exc:
        stream.close()
        if exc.reason == "CERTIFICATE_VERIFY_FAILED":
            raise IdentityRefused(describe_handshake_error(exc, peer)) from None
        said = _plaintext_error(stream.first_bytes)
        if said is not None and said.code == m.ErrorCode.BUSY:
            raise PeerRefused(f"server closed the connection: {said.message}",
                              code=said.code) from None
        if said is not None:
            raise NetworkError(f"{peer} does not answer in TLS (it said: {said.message}) — "
                               "connect without --tls, or restart the server with --tls",
                               address=peer) from None
        raise NetworkError(describe_handshake_error(exc, peer), address=peer) from None
    except TimeoutError:
        stream.close()
        raise TransferTimeout(f"{peer} did not complete the TLS handshake in "
                              f"{timeout_s:g} s — is it a sockferry server with --tls?"
                              ) from None
    except NetworkError as exc:
        stream.close()
        raise NetworkError(f"TLS handshake with {peer} failed: {exc} — is the server "
                           "running with --tls?", address=peer) from None
    except BaseException:
        stream.close()
        raise
    return stream


def _plaintext_error(first: bytes) -> m.Error | None:
    """The ferry ERROR a plaintext server sent where TLS was expected, if that is what
    ``first`` starts with."""
    try:
        message = next(iter(FrameParser().feed(first)), None)
    except RemoteProtocolError:
        return None
    return message if isinstance(message, m.Error) else None


def _check_identity(tls: ClientTLS, host: str, seen: bytes) -> None:
    if tls.pin is not None and seen != tls.pin:
        raise IdentityRefused(
            f"the TLS certificate of {host} has fingerprint {format_fingerprint(seen)}, not "
            f"the pinned {format_fingerprint(tls.pin)} — refusing it; check --fingerprint "
            "against the fingerprint `sockferry serve --tls` logged")
    if tls.trust != "tofu":
        return
    assert tls.known_hosts is not None
    known = KnownHosts(tls.known_hosts).lookup(host)
    if known is not None and known != seen:
        raise IdentityRefused(
            f"the TLS certificate of {host} has CHANGED since it was first trusted (known "
            f"{format_fingerprint(known)}, now {format_fingerprint(seen)}): someone may be "
            "intercepting the connection, or the server got a new certificate. Refusing it. "
            f"If the change is expected, run: sockferry known-hosts forget {host}")


def remember(tls: ClientTLS | None, address: Address, stream: TLSStream) -> None:
    """After the token handshake: write down a server trusted on first use."""
    if tls is None or tls.trust != "tofu":
        return
    assert tls.known_hosts is not None
    known = KnownHosts(tls.known_hosts)
    host = host_key(address)
    if known.lookup(host) is None:
        seen = fingerprint(stream.peer_der)
        known.add(host, seen)
        log.warning("trusting %s on first use: TLS certificate %s, added to %s", host,
                    format_fingerprint(seen), tls.known_hosts)


# ---- the server ------------------------------------------------------------------------


async def accept_tls(conn: socket.socket, tls: ServerTLS, idle_timeout_s: float,
                     handshake_timeout_s: float) -> TLSStream | None:
    """The TLS stream of an accepted connection, or None (closed, logged) if it is not a
    TLS client or its handshake fails."""
    conn.setblocking(False)
    peer, _ = peer_and_local(conn)
    loop = asyncio.get_running_loop()
    stream: TLSStream | None = None
    try:
        async with asyncio.timeout(handshake_timeout_s):
            first = await _peek(loop, conn)
            if first and first[0] != TLS_RECORD_HANDSHAKE:
                _refuse_plaintext(conn, first)
                log.warning("%s: refused a plaintext client: this server accepts TLS only "
                            "(the client needs --tls)", peer)
                return None
            if not first:
                conn.close()
                return None
            stream = TLSStream.wrap(conn, tls.context, server_side=True,
                                    idle_timeout_s=idle_timeout_s)
            await stream.handshake(handshake_timeout_s)
    except ssl.SSLError as exc:
        log.warning("%s: TLS handshake failed: %s", peer, exc.reason or exc)
    except (TimeoutError, OSError, NetworkError) as exc:
        log.info("%s: no TLS handshake: %s", peer,
                 "timed out" if isinstance(exc, TimeoutError) else exc)
    except BaseException:
        if stream is not None:
            stream.close()
        conn.close()
        raise
    else:
        assert stream is not None
        stream.binding = tls.binding
        return stream
    if stream is not None:
        stream.close()
    conn.close()
    return None


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), _set_done, ready)
            try:
                await ready
            finally:
                loop.remove_reader(conn.fileno())


def _refuse_plaintext(conn: socket.socket, first: bytes) -> None:
    with conn:
        if first[0] == m.FrameType.HELLO:
            with contextlib.suppress(OSError):
                conn.send(codec.encode(m.Error(0, m.ErrorCode.BAD_REQUEST, PLAINTEXT_REFUSED)))


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

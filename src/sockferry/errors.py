"""The one exception tree of sockferry.

``str(exc)`` of every class here is the sentence a user reads: the cause, the place and,
where there is one, what to try.  The command line catches ``SockferryError`` once and
maps each class to a documented exit code (see ``cli``).
"""

from __future__ import annotations


class SockferryError(Exception):
    """Base of every error that sockferry reports to a user."""


class UsageError(SockferryError):
    """The command line or a configuration value is wrong."""


class ProtocolError(SockferryError):
    """A protocol was broken, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """We asked a protocol core for something illegal: a bug in sockferry."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol.

    ``code`` is the protocol's own error code to send back, when the protocol has one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class MalformedPacket(RemoteProtocolError):
    """Raised by decoders only: the bytes do not parse."""


class AuthenticationFailed(SockferryError):
    """Authentication failed; says nothing about the peer's token (the command line adds
    what the user should check on its side)."""

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class IdentityRefused(SockferryError):
    """The server's TLS certificate is not the one trusted (pinned, or known from a
    first use); the message says which was expected and what to run if the change is
    legitimate."""


class PeerRefused(SockferryError):
    """The peer said no (a ferry or TFTP ERROR, an SCTP ABORT): its code and its text."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransferTimeout(SockferryError):
    """Retries were exhausted or the peer went silent."""


class NetworkError(SockferryError):
    """A socket operation failed; keeps ``errno`` and the address involved."""

    def __init__(self, message: str, errno: int | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.address = address


class StorageError(SockferryError):
    """A file operation failed; keeps ``errno`` and the path involved."""

    def __init__(self, message: str, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path


class PathRefused(StorageError):
    """A path names something outside the sandbox or is not acceptable as a name."""


class NotAvailable(SockferryError):
    """A feature needs something this machine lacks (kernel SCTP, a library)."""

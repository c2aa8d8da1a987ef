"""Option negotiation: RFC 2347 (OACK), 2348 (blksize), 2349 (timeout, tsize), 7440
(windowsize).

The server side turns a request's options into what it accepts and the OACK to send; the
client side checks an OACK against what it asked for.  Pure: sizes and limits come in as
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from sockferry.errors import RemoteProtocolError
from sockferry.tftp.packets import DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE, ErrorCode

BLKSIZE = "blksize"
TIMEOUT = "timeout"
TSIZE = "tsize"
WINDOWSIZE = "windowsize"
KNOWN_OPTIONS = (BLKSIZE, TIMEOUT, TSIZE, WINDOWSIZE)

# RFC 2349 §2: timeout is 1 to 255 seconds.
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 255
# RFC 7440 §3: windowsize is 1 to 65535 blocks.
MIN_WINDOWSIZE = 1
MAX_WINDOWSIZE = 65535
# tsize is a file size; 20 digits hold any 64-bit value, and longer numbers are abuse.
MAX_NUMBER_DIGITS = 20
MAX_TSIZE = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """What both sides agreed on; the defaults are plain RFC 1350."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout_s: int | None = None  # RFC 2349 timeout, when negotiated
    tsize: int | None = None      # RFC 2349 transfer size, when known

    def describe(self) -> str:
        parts = [f"blksize={self.blksize}", f"windowsize={self.windowsize}"]
        if self.timeout_s is not None:
            parts.append(f"timeout={self.timeout_s}")
        if self.tsize is not None:
            parts.append(f"tsize={self.tsize}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a server is willing to agree to."""

    blksize_max: int = MAX_BLKSIZE
    windowsize_max: int = 64


def parse_number(text: str) -> int | None:
    """A non-negative decimal as RFC 2347 options carry them, or None."""
    if not text or len(text) > MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def negotiate(requested: dict[str, str], *, is_read: bool, file_size: int | None,
              upload_limit: int | None, limits: ServerLimits,
              ) -> tuple[TransferOptions, dict[str, str]]:
    """The server's answer to a request's options: what is agreed and the OACK to send.

    An empty OACK means "answer as RFC 1350 would".  Options the server does not know or
    whose value it cannot use are left out of the OACK, which RFC 2347 §"Negotiation
    Protocol" defines as refusing them; the transfer then uses their defaults.  A WRQ
    whose tsize is over ``upload_limit`` raises ``RemoteProtocolError`` with DISK_FULL
    (RFC 2349 §4 lets the server refuse it).
    """
    oack: dict[str, str] = {}
    blksize, windowsize, timeout_s, tsize = DEFAULT_BLKSIZE, 1, None, None
    for name, value in requested.items():
        number = parse_number(value)
        if number is None:
            continue
        if name == BLKSIZE and number >= MIN_BLKSIZE:
            # RFC 2348 §1: the server may answer with a smaller size than asked.
            blksize = min(number, limits.blksize_max)
            oack[name] = str(blksize)
        elif name == WINDOWSIZE and number >= MIN_WINDOWSIZE:
            windowsize = min(number, MAX_WINDOWSIZE, limits.windowsize_max)
            oack[name] = str(windowsize)
        elif name == TIMEOUT and MIN_TIMEOUT_S <= number <= MAX_TIMEOUT_S:
            timeout_s = number  # RFC 2349 §3: echoed unchanged or not at all
            oack[name] = str(number)
        elif name == TSIZE:
            tsize = _answer_tsize(number, is_read=is_read, file_size=file_size,
                                  upload_limit=upload_limit)
            if tsize is not None:
                oack[name] = str(tsize)
    return TransferOptions(blksize, windowsize, timeout_s, tsize), oack


def _answer_tsize(number: int, *, is_read: bool, file_size: int | None,
                  upload_limit: int | None) -> int | None:
    if is_read:
        # RFC 2349 §4: a reader sends 0 and the OACK carries the size; without a size
        # known in advance (netascii changes it) the option is left out.  So it is for
        # an empty file: curl (7.88 at least) takes "tsize=0" for a failed transfer and
        # exits with an error, while without it it downloads the empty file.
        return file_size or None
    if number > MAX_TSIZE or (upload_limit is not None and number > upload_limit):
        raise RemoteProtocolError(
            f"an upload of {number} bytes is over this server's limit of "
            f"{upload_limit} bytes", code=ErrorCode.DISK_FULL)
    return number


def requested_options(*, blksize: int | None, windowsize: int | None,
                      timeout_s: int | None, tsize: int | None) -> dict[str, str]:
    """The options a client puts in its request; None leaves one out."""
    options: dict[str, str] = {}
    if blksize is not None and blksize != DEFAULT_BLKSIZE:
        options[BLKSIZE] = str(blksize)
    if windowsize is not None and windowsize != 1:
        options[WINDOWSIZE] = str(windowsize)
    if timeout_s is not None:
        options[TIMEOUT] = str(timeout_s)
    if tsize is not None:
        options[TSIZE] = str(tsize)
    return options


def accept_oack(requested: dict[str, str], oack: dict[str, str]) -> TransferOptions:
    """Check a server's OACK against the request; refusals raise ``RemoteProtocolError``
    with OPTION_REFUSED, which the client sends back as ERROR 8 (RFC 2347)."""
    blksize, windowsize, timeout_s, tsize = DEFAULT_BLKSIZE, 1, None, None
    for name, value in oack.items():
        if name not in requested:
            raise _refused(f"the server acknowledged option '{name}' that was not asked for")
        number = parse_number(value)
        asked = parse_number(requested[name])
        if number is None or asked is None:
            raise _refused(f"the server answered option '{name}' with '{value}'")
        if name == BLKSIZE and MIN_BLKSIZE <= number <= min(asked, MAX_BLKSIZE):
            blksize = number
        elif name == WINDOWSIZE and MIN_WINDOWSIZE <= number <= asked:
            windowsize = number
        elif name == TIMEOUT and number == asked:
            timeout_s = number
        elif name == TSIZE and number <= MAX_TSIZE:
            tsize = number
        else:
            raise _refused(f"the server answered option '{name}' with {value}, "
                           f"but {requested[name]} was asked for")
    return TransferOptions(blksize, windowsize, timeout_s, tsize)


def _refused(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=ErrorCode.OPTION_REFUSED)

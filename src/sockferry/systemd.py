"""The two systemd hooks a daemon needs, without libsystemd: sockets handed over by socket
activation (sd_listen_fds(3)) and state reports to the service manager (sd_notify(3)).

Both are plain protocols: activation passes descriptors from 3 upwards and names the
receiving process in ``LISTEN_PID``; a report is one datagram of ``KEY=VALUE`` lines to
the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace).  Nothing here runs unless those variables are set.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

from sockferry.errors import UsageError

log = logging.getLogger("sockferry")

FIRST_FD = 3  # SD_LISTEN_FDS_START
MAX_FDS = 1024  # a sanity bound on LISTEN_FDS: no service is handed more


def inherited_sockets(kind: socket.SocketKind, what: str,
                      environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed to this process, checked to be of ``kind`` (stream
    sockets also listening); [] when not socket-activated.  The variables are removed,
    as sd_listen_fds(1) does, so that nothing started from here takes them for its own.
    """
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", None), env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []  # meant for another process (a parent that did not clear them)
    if not count.isdigit() or not 0 < int(count) <= MAX_FDS:
        raise UsageError(f"LISTEN_FDS={count!r} from the service manager is not a count of "
                         "sockets: check the .socket unit")
    sockets = [_adopt(fd, kind, what) for fd in range(FIRST_FD, FIRST_FD + int(count))]
    log.info("socket activation: %d socket(s) from the service manager", len(sockets))
    return sockets


def _adopt(fd: int, kind: socket.SocketKind, what: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UsageError(f"descriptor {fd} from the service manager is not a socket "
                         f"({exc.strerror}): check the .socket unit") from None
    os.set_inheritable(fd, False)
    listening = kind != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_ACCEPTCONN)
    if sock.type != kind or not listening or sock.family not in _FAMILIES:
        described = f"{sock.family.name} {sock.type.name}"
        sock.detach()  # not ours to close: report and leave it be
        raise UsageError(f"descriptor {fd} from the service manager is a {described} "
                         f"socket; {what} needs {_WANTED[kind]}: fix the .socket unit")
    sock.setblocking(False)
    return sock


_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_WANTED = {socket.SOCK_STREAM: "listening stream sockets (ListenStream=)",
           socket.SOCK_DGRAM: "datagram sockets (ListenDatagram=)"}


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to the service
    manager if it asked for reports; a failure to report is logged, never fatal."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("could not report %s to the service manager at %s: %s",
                    state.split("=", maxsplit=1)[0], address, exc.strerror or exc)
        return False
    return True

"""``--user NAME`` / ``--group NAME``: a server started as root drops to them once bound.

Every server binds its listeners (port 69, 2345, ...), opens its root directory and
reads its token first, as root; then ``drop`` makes it the unprivileged user for good,
so a bug or a hostile client reaches only what that user can.  What stays open keeps
working: the root directory is used through its descriptor, never by its path again.
The order is the one that cannot be undone halfway: supplementary groups, then the
group, then the user (after setuid no group change is possible any more); and the drop
is checked by trying to become root again, which must fail.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import pwd
from dataclasses import dataclass

from sockferry.errors import SockferryError, UsageError


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    user: str
    group: str

    def describe(self) -> str:
        return f"user {self.user} (uid {self.uid}), group {self.group} (gid {self.gid})"


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity ``--user``/``--group`` name (names or numbers); None without
    ``--user``.  The group defaults to the user's primary group.  Checked before
    anything is bound, so a typo costs nothing."""
    if user is None:
        if group is not None:
            raise UsageError("--group needs --user: name the user to run as too")
        return None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise UsageError(f"--user {user}: no such user on this machine (see getent "
                         "passwd)") from None
    gid, group_name = entry.pw_gid, _group_name(entry.pw_gid)
    if group is not None:
        try:
            found = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except (KeyError, OverflowError):
            raise UsageError(f"--group {group}: no such group on this machine (see getent "
                             "group)") from None
        gid, group_name = found.gr_gid, found.gr_name
    if entry.pw_uid == 0:
        raise UsageError(f"--user {user} is root: name an unprivileged user, such as "
                         "nobody")
    if os.geteuid() != 0 and (entry.pw_uid, gid) != (os.getuid(), os.getgid()):
        raise UsageError(f"--user {user} needs the server to be started as root (it runs "
                         f"as uid {os.geteuid()}); start it with sudo, or leave --user out")
    return Identity(entry.pw_uid, gid, entry.pw_name, group_name)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# Modules the servers import lazily, loaded before the drop: the interpreter's files may
# not be readable by the new user (a Python under /root, a venv in a home directory), and
# a server that could not import them would fail its first request instead of at once.
# Found by diffing sys.modules at the drop and after every kind of transfer.
PRELOAD = ("blake3", "encodings.ascii", "encodings.latin_1", "encodings.idna",
           "concurrent.futures.thread", "ctypes")


def preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def drop(identity: Identity) -> None:
    """Become ``identity`` for the rest of the process's life, or raise."""
    preload()
    try:
        if os.geteuid() == 0:
            os.setgroups([identity.gid])
            os.setgid(identity.gid)  # real, effective and saved
            os.setuid(identity.uid)  # real, effective and saved: no way back
    except OSError as exc:
        raise SockferryError(f"dropping privileges to {identity.describe()} failed: "
                             f"{exc.strerror}") from exc
    if not _cannot_regain_root():
        raise SockferryError(f"after dropping to {identity.describe()} the process could "
                             "still become root again; refusing to run")
    ids = (os.getresuid(), os.getresgid())
    if ids != ((identity.uid,) * 3, (identity.gid,) * 3):
        raise SockferryError(f"dropping privileges to {identity.describe()} left the ids "
                             f"at {ids}; refusing to run")


def _cannot_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return True
    return False


def running_as_root() -> bool:
    return os.geteuid() == 0


ROOT_WARNING = ("running as root: give --user NAME (and --group NAME) to drop privileges "
                "once the server has bound its ports")

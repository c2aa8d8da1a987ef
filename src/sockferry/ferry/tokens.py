"""The shared token: where it lives, how it is created, how each side finds it.

``serve`` uses ``--token-file`` or else the default file, creating a random token there
(mode 0600) on first use.  Clients use ``--token-file``, then ``SOCKFERRY_TOKEN``, then
the same default file, so a demo on one machine needs no flags.  Token files that other
users can read are refused, as ssh refuses such keys.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from sockferry.errors import UsageError
from sockferry.sockets import storage_error

ENV_VAR = "SOCKFERRY_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_BYTES = 4096


def default_token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "sockferry" / "token"


def load_token(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise storage_error(exc, str(path)) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"token file {path} is accessible by other users — run: "
                         f"chmod 600 {path}")
    return _check(data.strip(), f"token file {path}")


def _check(token: bytes, where: str) -> bytes:
    if len(token) > MAX_TOKEN_BYTES:
        raise UsageError(f"{where} is longer than {MAX_TOKEN_BYTES} bytes")
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"{where} holds a token shorter than {MIN_TOKEN_CHARS} characters "
                         "— use a longer random token")
    return token


def create_token(path: Path) -> bytes:
    """Write a fresh random token to ``path`` (which must not exist), mode 0600."""
    token = secrets.token_urlsafe(32).encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(token + b"\n")
    except OSError as exc:
        raise storage_error(exc, str(path)) from exc
    return token


def server_token(token_file: str | None) -> tuple[bytes, Path, bool]:
    """(token, where it is, whether it was just created)."""
    if token_file:
        return load_token(Path(token_file)), Path(token_file), False
    path = default_token_path()
    if path.exists():
        return load_token(path), path, False
    return create_token(path), path, True


def client_token(token_file: str | None) -> bytes:
    if token_file:
        return load_token(Path(token_file))
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return _check(from_env.strip().encode(), f"${ENV_VAR}")
    path = default_token_path()
    if path.exists():
        return load_token(path)
    raise UsageError(f"no token: pass --token-file FILE, set ${ENV_VAR}, or copy the "
                     f"server's token to {path}")

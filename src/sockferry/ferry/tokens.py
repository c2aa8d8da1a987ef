"""The shared token: where it lives, how it is created, how each side finds it.

``serve`` uses ``--token-file`` or else the default file, creating a random token there
(mode 0600) on first use.  Clients use ``--token-file``, then ``SOCKFERRY_TOKEN``, then
the same default file, so a demo on one machine needs no flags.  Token files that other
users can read are refused, as ssh refuses such keys.

Tokens below ``MIN_TOKEN_BITS`` of estimated entropy are refused on both sides: anyone who
can connect gets a server proof for a nonce of its choosing, which makes a weak token
open to offline guessing (docs/protocol.md §3.2 states the attack and argues this floor
against a PAKE).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
import string
from pathlib import Path

from sockferry.errors import UsageError
from sockferry.sockets import storage_error

ENV_VAR = "SOCKFERRY_TOKEN"
MIN_TOKEN_CHARS = 16
MIN_TOKEN_BITS = 128
MAX_TOKEN_BYTES = 4096
_HEX = frozenset(b"0123456789abcdef")
_HEX_UPPER = frozenset(b"0123456789ABCDEF")
_BASE64 = frozenset((string.ascii_letters + string.digits + "+/-_").encode())
# The classes a character may come from, for text of no known encoding.
_CLASSES = ((frozenset(string.ascii_lowercase.encode()), 26),
            (frozenset(string.ascii_uppercase.encode()), 26),
            (frozenset(string.digits.encode()), 10),
            (frozenset((string.punctuation + " ").encode()), 33))
RUN = 3  # characters of a run (repeated, or counting up or down by one) that still count


def estimate_bits(token: bytes) -> float:
    """An upper estimate of the entropy of ``token``, in bits.

    Per character: the bits of the smallest alphabet that holds the whole token (hex 4,
    base64 or base64url 6, else the sum of the character classes present; 8 for bytes
    outside ASCII), but no more than log2 of twice the number of distinct characters
    (so "aaaa..." is worth little whatever its alphabet).  A character that continues a
    run — the same as the one before, or one up or one down, for the third time in a
    row or more — adds nothing.  Random tokens score near their real entropy; patterned
    ones far less.  Words are not recognised: a passphrase of dictionary words scores
    higher than it deserves, which is why tokens should come from a random source.
    """
    body = token.rstrip(b"=")
    if not body:
        return 0.0
    chars = frozenset(body)
    if chars <= _HEX or chars <= _HEX_UPPER:
        alphabet = 16
    elif chars <= _BASE64:
        alphabet = 64
    elif any(c > 0x7F for c in chars):
        alphabet = 256
    else:
        alphabet = sum(size for members, size in _CLASSES if chars & members) or 1
    per_char = min(math.log2(alphabet), math.log2(2 * len(chars)))
    counted = 0
    run = 1
    for i in range(1, len(body) + 1):
        if i == len(body):
            counted += min(run, RUN)
            break
        step = body[i] - body[i - 1]
        if abs(step) <= 1 and (run == 1 or step == body[i - 1] - body[i - 2]):
            run += 1
        else:
            counted += min(run, RUN)
            run = 1
    return counted * per_char


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
        # A bad path on the command line is a usage error (exit 2), and the sentence
        # must say which file it was.
        raise UsageError(f"cannot read the token file: {storage_error(exc, str(path))} — "
                         "check --token-file, or copy the server's token there "
                         "(`sockferry token show` on the server prints it)") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"token file {path} is accessible by other users — run: "
                         f"chmod 600 {path}")
    return check_token(data.strip(), f"token file {path}")


def check_token(token: bytes, where: str) -> bytes:
    """``token`` if it is long and random enough; else UsageError naming ``where``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise UsageError(f"{where} is longer than {MAX_TOKEN_BYTES} bytes")
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"{where} holds a token shorter than {MIN_TOKEN_CHARS} characters "
                         "— use a longer random token")
    bits = estimate_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise UsageError(f"{where} holds a guessable token (about {bits:.0f} bits, at least "
                         f"{MIN_TOKEN_BITS} needed) — use a random one, e.g. `openssl rand "
                         "-base64 32`, or remove the file and let `sockferry serve` make one")
    return token


def create_token(path: Path) -> bytes:
    """Write a fresh random token to ``path`` (which must not exist), mode 0600."""
    token = secrets.token_urlsafe(32).encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(token + b"\n")
    except FileExistsError as exc:
        raise UsageError(f"{path} already exists — pass --force to replace its token "
                         "(every client then needs the new one)") from exc
    except OSError as exc:
        raise storage_error(exc, str(path)) from exc
    return token


def replace_token(path: Path) -> bytes:
    """Write a fresh random token to ``path``, replacing any file there atomically: a
    reader sees the old token or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    token = create_token(tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
    return client_token_and_source(token_file)[0]


def client_token_and_source(token_file: str | None) -> tuple[bytes, str]:
    """(token, where it came from: a file's path or ``$SOCKFERRY_TOKEN``)."""
    if token_file:
        return load_token(Path(token_file)), token_file
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return check_token(from_env.strip().encode(), f"${ENV_VAR}"), f"${ENV_VAR}"
    path = default_token_path()
    if path.exists():
        return load_token(path), str(path)
    raise UsageError(f"no token: pass --token-file FILE, set ${ENV_VAR}, or copy the "
                     f"server's token to {path}")


def auth_failed_hint(source: str) -> str:
    """What a client whose token was refused should check: the one it used."""
    used = source if source.startswith("$") else f"the token file {source}"
    also = (f" (it takes precedence over {default_token_path()})"
            if source.startswith("$") else "")
    return (f"authentication failed — the server and this client do not share the same "
            f"token: check that {used}{also} holds the server's token (`sockferry token "
            "show` on the server prints it)")

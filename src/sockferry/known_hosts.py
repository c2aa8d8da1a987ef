"""The clients' known-hosts file: the TLS certificate fingerprint each server had.

Like SSH's ``known_hosts``: one line per server, ``HOST:PORT SHA256:<base64>`` (``[v6]:PORT``
for IPv6, ``unix:PATH`` for an AF_UNIX socket), ``#`` comments and blank lines kept.  A
client with ``--tls`` and neither ``--ca`` nor ``--fingerprint`` trusts a server it has no
line for on first use, and writes the line once the server has proven that it knows
the token over that very TLS channel; a server whose certificate differs from its line
is refused.  ``sockferry known-hosts list|forget HOST`` reads and edits the file, which
is plain text and may be edited by hand too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sockferry.errors import UsageError
from sockferry.sockets import storage_error
from sockferry.tls import format_fingerprint, parse_fingerprint

NAME = "known_hosts"


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "sockferry" / NAME


@dataclass(frozen=True, slots=True)
class Line:
    host: str
    fingerprint: bytes


class KnownHosts:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, str(self.path)) from exc

    def entries(self) -> list[Line]:
        found: list[Line] = []
        for number, text in enumerate(self._lines(), 1):
            fields = text.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise UsageError(f"{self.path}:{number}: expected 'HOST:PORT SHA256:...' — "
                                 "fix or remove the line")
            try:
                found.append(Line(fields[0], parse_fingerprint(fields[1])))
            except UsageError as exc:
                raise UsageError(f"{self.path}:{number}: {exc}") from None
        return found

    def lookup(self, host: str) -> bytes | None:
        return next((e.fingerprint for e in self.entries() if e.host == host), None)

    def add(self, host: str, fingerprint: bytes) -> None:
        line = f"{host} {format_fingerprint(fingerprint)}\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
        except OSError as exc:
            raise storage_error(exc, str(self.path)) from exc

    def forget(self, host: str) -> list[str]:
        """Remove the lines of ``host`` (``HOST:PORT``, or ``HOST`` for every port); the
        hosts removed."""
        kept: list[str] = []
        removed: list[str] = []
        for text in self._lines():
            fields = text.split()
            if fields and not fields[0].startswith("#") and _matches(fields[0], host):
                removed.append(fields[0])
                continue
            kept.append(text)
        if removed:
            replacement = self.path.with_name(self.path.name + ".new")
            try:
                replacement.write_text("".join(f"{t}\n" for t in kept))
                os.replace(replacement, self.path)
            except OSError as exc:
                raise storage_error(exc, str(self.path)) from exc
        return removed


def _matches(entry: str, host: str) -> bool:
    if entry == host:
        return True
    name, _, port = entry.rpartition(":")
    return port.isdigit() and name.strip("[]") == host.strip("[]")

"""Remote specs as scp writes them (``HOST:PATH``, ``[V6]:PORT:PATH``) and
``sockferry://`` URLs: pure parsing, no I/O."""

from __future__ import annotations

from sockferry.addresses import parse_port
from sockferry.errors import UsageError
from sockferry.records import record


@record
class Remote:
    host: str
    path: str
    port: int | None = None  # given in the spec: it wins over -P


URL_SCHEME = "sockferry://"


def parse_remote(text: str) -> Remote | None:
    """A remote spec, or None for a local path (scp's rule: a colon before any slash
    means remote).  ``HOST:PATH``, ``HOST:PORT:PATH`` (a part of digits between two
    colons is a port), ``[v6]:PATH``, ``[v6]:PORT:PATH`` and
    ``sockferry://HOST[:PORT]/PATH`` (percent-escapes decoded); an empty host is
    localhost."""
    if text.startswith(URL_SCHEME):
        return _parse_url(text)
    if text.startswith("["):
        close = text.find("]")
        if close <= 0 or text[close + 1 : close + 2] != ":":
            return None
        host, rest = text[1:close], text[close + 2 :]
    else:
        colon = text.find(":")
        if colon < 0 or "/" in text[:colon]:
            return None
        host, rest = text[:colon], text[colon + 1 :]
    port_text, separator, path = rest.partition(":")
    if separator and port_text.isdigit():
        return Remote(host or "localhost", path, parse_port(port_text))
    return Remote(host or "localhost", rest)


def _parse_url(text: str) -> Remote:
    from urllib.parse import unquote, urlsplit  # noqa: PLC0415 - URLs only

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"'{text}' is not a valid sockferry:// URL ({exc})") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"'{text}': a sockferry:// URL has a host, a port and a path "
                         "only")
    return Remote(parts.hostname or "localhost", unquote(parts.path[1:]), port)


def split_remote(text: str) -> tuple[str, str] | None:
    """``HOST:PATH`` -> (host, path) (see ``parse_remote``; the port is dropped)."""
    remote = parse_remote(text)
    return None if remote is None else (remote.host, remote.path)

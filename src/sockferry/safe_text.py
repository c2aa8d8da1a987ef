"""Text that came from a peer, made safe for a terminal or a log line.

A remote file name, an ERROR text or a logged request path may hold anything: an escape
sequence the terminal would execute, a newline or carriage return that forges a line
(scp's CVE-2019-6109 class), a right-to-left override that shows ``gpj.exe`` as
``exe.jpg``.  ``escape`` is the one function that makes such text visible instead; the
command line applies it to everything it writes (``cli.console``), so no caller can
forget it.  Pure: no I/O.

The escapes, chosen to be unambiguous so that two different texts never look alike:

- ``\\`` for a backslash, ``\\n``, ``\\r``, ``\\t`` for those controls;
- ``\\xNN`` for any other character up to U+00FF that is unsafe (C0, DEL, C1 controls,
  the soft hyphen);
- ``\\uNNNN`` / ``\\UNNNNNNNN`` above that: format characters (Unicode category Cf: bidi
  overrides and isolates, zero-width characters, the BOM), line and paragraph separators
  (Zl, Zp), unassigned code points and non-characters (Cn), and lone surrogates (Cs, the
  undecodable bytes of a name decoded with ``surrogateescape`` appear as ``\\udcNN``).

Every escape starts with a backslash and its length is fixed by the letter after it, and
a backslash in the text is itself escaped: the mapping is injective (tests/test_safe_text
decodes it back).  Everything else, printable non-ASCII letters included, passes as is.
"""

from __future__ import annotations

import functools
import unicodedata

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})


def escape(text: str) -> str:
    """``text`` with every unsafe character written as a visible escape (see above)."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    return "".join(map(_escape_char, text))


@functools.lru_cache(maxsize=4096)
def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if unicodedata.category(ch) not in UNSAFE_CATEGORIES:
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clip(text: str, limit: int = 120) -> str:
    """At most ``limit`` characters of ``text``, with an ellipsis when cut (escaping, if
    needed, is the output's job: see ``escape``)."""
    return text if len(text) <= limit else text[:limit] + "…"

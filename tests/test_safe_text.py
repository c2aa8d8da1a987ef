"""safe_text.escape: nothing unsafe survives, and no two texts escape alike."""

from __future__ import annotations

import logging
import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from sockferry.cli.logs import EscapingFormatter
from sockferry.safe_text import UNSAFE_CATEGORIES, clip, escape

_ESCAPE = re.compile(r"\\(?:\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_NAMED = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t"}


def unescape(text: str) -> str:
    """The inverse of ``escape``, as its docstring defines the escapes."""
    def one(match: re.Match[str]) -> str:
        token = match.group()
        return _NAMED.get(token) or chr(int(token[2:], 16))
    return _ESCAPE.sub(one, text)


def unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


# Any code point, surrogates included (what surrogateescape decoding produces).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                 blacklist_categories=()))


@given(any_text)
def test_escaped_text_has_no_unsafe_character_and_encodes(text: str) -> None:
    shown = escape(text)
    assert not any(unsafe(ch) for ch in shown)
    shown.encode("utf-8")  # lone surrogates would raise here


@given(any_text)
def test_escape_is_injective(text: str) -> None:
    assert unescape(escape(text)) == text


@given(any_text, any_text)
def test_different_texts_look_different(a: str, b: str) -> None:
    assert (escape(a) == escape(b)) == (a == b)


def test_the_hostile_classics() -> None:
    assert escape("a\x1b[2Jb") == "a\\x1b[2Jb"            # CSI: clear the screen
    assert escape("ok\nforged line") == "ok\\nforged line"
    assert escape("x\rover") == "x\\rover"
    assert escape("\x9b31m") == "\\x9b31m"                # the 8-bit CSI (C1)
    assert escape("\x7f") == "\\x7f"
    assert escape("photo\u202egpj.exe") == "photo\\u202egpj.exe"  # right-to-left override
    assert escape("\u2066\u200b\ufeff") == "\\u2066\\u200b\\ufeff"
    assert escape("line\u2028sep") == "line\\u2028sep"
    assert escape("raw\udcff") == "raw\\udcff"
    assert escape("\U000e0041") == "\\U000e0041"         # a tag character
    assert escape("a\\x1b") == "a\\\\x1b"                  # a backslash is escaped too
    assert escape("grüße 日本 ✓") == "grüße 日本 ✓"          # printable text passes


def test_clip_cuts_long_text() -> None:
    assert clip("x" * 200, 120) == "x" * 120 + "…"
    assert clip("short") == "short"


def test_a_log_record_is_one_line_whatever_it_quotes() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("sockferry", logging.INFO, __file__, 1,
                               "read %s refused", ("evil\nINFO forged\x1b[2J",), None)
    assert formatter.format(record) == "INFO read evil\\nINFO forged\\x1b[2J refused"

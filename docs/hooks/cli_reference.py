"""MkDocs hook: the command-line reference, generated from the argparse parsers.

A page that holds the marker line ``<!-- cli-reference -->`` gets it replaced with the
help text of ``sockferry`` and of every command in ``sockferry.cli.COMMANDS``, as
``sockferry COMMAND --help`` prints it.  ``COLUMNS`` is fixed while the text is made,
so the page does not depend on the terminal that runs the build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

MARKER = "<!-- cli-reference -->"
COLUMNS = "100"
SRC = Path(__file__).resolve().parents[2] / "src"


def help_texts() -> list[tuple[str, str]]:
    """(title, help text) for ``sockferry`` and each command, in COMMANDS order."""
    if str(SRC) not in sys.path:  # a checkout without an installed sockferry
        sys.path.insert(0, str(SRC))
    from sockferry.cli import COMMANDS, build_parser, command_parser  # noqa: PLC0415

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        texts = [("sockferry", build_parser(None).format_help())]
        texts += [(f"sockferry {name}", command_parser(name).format_help())
                  for name in COMMANDS]
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return texts


def render() -> str:
    parts = []
    for title, text in help_texts():
        parts.append(f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig,
                     files: Files) -> str | None:
    if MARKER not in markdown:
        return None
    return markdown.replace(MARKER, render())

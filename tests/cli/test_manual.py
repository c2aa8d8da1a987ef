"""The man pages (cli/manual.py): real groff and man read them, and they hold every
option, choice and exit code the parsers and runtime.ExitCode have."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sockferry.cli import COMMANDS, build_parser, command_parser
from sockferry.cli.manual import escape, pages
from sockferry.cli.runtime import EXIT_CODE_MEANINGS, ExitCode
from tests.cli.test_exit_codes import documented_codes
from tests.conftest import require_program

PAGES = pages()
NAMES = sorted(PAGES)
TIMEOUT_S = 60
EXIT_CODES = {name: value for name, value in vars(ExitCode).items() if name.isupper()}


@pytest.fixture(scope="module")
def man_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pages written as scripts/man writes them: python -m sockferry.cli.manual."""
    out = tmp_path_factory.mktemp("man")
    done = subprocess.run([sys.executable, "-m", "sockferry.cli.manual", str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == NAMES
    return out


def page_of(command: str | None) -> str:
    return PAGES["sockferry.1" if command is None else f"sockferry-{command}.1"]


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._SubParsersAction)]


def test_one_page_per_command_and_the_overview() -> None:
    assert sorted(["sockferry.1", *(f"sockferry-{name}.1" for name in COMMANDS)]) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_groff_reads_the_page_without_a_warning(man_dir: Path, name: str) -> None:
    groff = require_program("groff")
    done = subprocess.run([groff, "-ww", "-z", "-man", str(man_dir / name)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def _rendered(path: Path) -> str:
    man = require_program("man")
    env = {**os.environ, "MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat",
           "LC_ALL": "C.UTF-8"}
    done = subprocess.run([man, "-l", str(path)], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_man_renders_every_option_and_choice_of_the_command(man_dir: Path,
                                                             command: str) -> None:
    text = _rendered(man_dir / f"sockferry-{command}.1")
    assert text.startswith(f"SOCKFERRY-{command.upper()}(1)")
    assert f"sockferry-{command} - {COMMANDS[command][1]}" in " ".join(text.split())
    for action in visible(command_parser(command)):
        for option in action.option_strings:
            # An option name never breaks across lines nor turns into a typographic
            # hyphen: it is there as typed.
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
        for choice in action.choices or ():
            assert re.search(rf"\b{re.escape(str(choice))}\b", text), (action.dest, choice)
        if not action.option_strings and isinstance(action.metavar, str):
            assert action.metavar in text, action.metavar
    assert "SEE ALSO\n       sockferry(1)" in text


def test_man_renders_the_overview(man_dir: Path) -> None:
    text = _rendered(man_dir / "sockferry.1")
    flat = " ".join(text.split())
    for name, (_, summary) in COMMANDS.items():
        assert f"{name} {summary}; see sockferry-{name}(1)." in flat
        assert f"sockferry-{name}(1)" in text.split("SEE ALSO", 1)[1]
    for action in visible(build_parser(None)):
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    for word in ("SOCKFERRY_OPTION", "SOCKFERRY_TOKEN", "XDG_CONFIG_HOME",
                 "/etc/sockferry/config.toml", "$XDG_CONFIG_HOME/sockferry/config.toml"):
        assert word in text, word


def test_every_option_and_choice_is_in_the_roff_of_its_page() -> None:
    """In the source too, escaped: an option's hyphens are \\- (copyable hyphen-minus)."""
    for command in COMMANDS:
        page = page_of(command)
        for action in visible(command_parser(command)):
            for option in action.option_strings:
                assert f"\\fB{option.replace('-', chr(92) + '-')}\\fR" in page, option
            for choice in action.choices or ():
                assert f"\\fB{choice}\\fR" in page, choice


def test_exit_status_lists_every_exit_code() -> None:
    section = page_of(None).split('.SH "EXIT STATUS"', 1)[1].split("\n.SH ", 1)[0]
    listed = [int(code) for code in re.findall(r"^\\%\\fB(\d+)\\fR$", section, re.M)]
    assert listed == sorted(EXIT_CODES.values())
    for meaning in EXIT_CODE_MEANINGS.values():
        assert escape(meaning) in section


def test_every_exit_code_has_a_meaning_and_a_readme_row() -> None:
    assert set(EXIT_CODE_MEANINGS) == set(EXIT_CODES.values())
    assert all(m.endswith(".") and m[0].isupper() for m in EXIT_CODE_MEANINGS.values())
    assert set(documented_codes()) == set(EXIT_CODE_MEANINGS)
    # So does the short list at the end of `sockferry --help`.
    epilog = build_parser(None).epilog or ""
    help_codes = re.findall(r"(\d+) [a-z]", epilog.split("Exit codes:", 1)[1])
    assert {int(c) for c in help_codes} == set(EXIT_CODE_MEANINGS)


def test_each_command_page_lists_its_variables() -> None:
    page = page_of("serve")
    section = page.split(".SH ENVIRONMENT", 1)[1].split("\n.SH ", 1)[0]
    assert "\\%\\fBSOCKFERRY_MAX_CONNECTIONS\\fR" in section
    assert "\\%\\fB\\-\\-max\\-connections\\fR" in section
    # Global options are command-line only: no variable.
    assert "SOCKFERRY_DEBUG" not in page and "SOCKFERRY_CONFIG" not in page


@pytest.mark.parametrize(("text", "roff"), [
    ("a\\b", "\\%a\\eb"),
    (".TH line", "\\%.TH line"),  # \\% first: the line starts with text
    (". x", "\\&. x"),
    ("'quoted' word", "\\(aqquoted\\(aq word"),
    ("see --max-connections now", "see \\%\\-\\-max\\-connections now"),
    ("end of sentence.", "end of sentence."),
    ("an em dash \u2014 here", "an em dash \\[u2014] here"),
    ("key max-connections", "key \\%max\\-connections"),
])
def test_escape(text: str, roff: str) -> None:
    assert escape(text) == roff


def test_no_line_of_any_page_starts_with_an_unescaped_control_character() -> None:
    for name, page in PAGES.items():
        for line in page.splitlines():
            if line.startswith("'"):
                pytest.fail(f"{name}: {line}")
            if line.startswith("."):
                assert re.match(r'\.(\\"|(TH|SH|SS|TP|PP|PD|ad|BR)\b)', line), (name, line)

"""Every example in README.md is checked: run as written, or held against the parser.

README code blocks say what they are by their info string:

- ``sh``: examples a user types.  Each block runs, unchanged, in a sandbox of its own
  (tests/readme_sandbox.py: private network and mount namespaces, ``server.example`` on
  loopback, fresh /srv, /run and HOME); every command must succeed.
- ``console``: commands of this checkout (./scripts/...), which CI itself runs (.ci/run).
- ``text``: synopses and the module map, checked statically.
- ``python``: library snippets, compiled, and every ``sockferry.NAME`` they use must be
  exported (the runnable versions are examples/, which tests/test_api.py runs).

Outside code blocks, every inline ``sockferry COMMAND ...`` span and every table row
naming a command is held against that command's parser: each option it shows must exist,
and a listed set of choices must be the parser's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockferry.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SANDBOX = Path(__file__).resolve().parent / "readme_sandbox.py"
# toml: config files, checked in tests/cli/test_config.py
KINDS = ("sh", "console", "text", "toml", "python")
OPTION = re.compile(r"(?<![\w/-])(--?[A-Za-z][\w-]*)(?:[ =]([a-z0-9]+(?:\\?\|[a-z0-9]+)+))?")
GLOBAL_OPTIONS = {"-h", "--help", "--debug", "-q", "--quiet", "-v", "--verbose", "--version"}
BLOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    line: int
    kind: str
    text: str


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("```"):
            start, kind = index + 1, lines[index][3:].strip()
            index += 1
            while not lines[index].startswith("```"):
                index += 1
            blocks.append(Block(start, kind, "\n".join(lines[start:index])))
        index += 1
    return blocks


def _prose() -> str:
    """The README without its code blocks."""
    return re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)


def test_every_block_says_what_it_is() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks"
    for block in blocks:
        assert block.kind in KINDS, (f"README.md line {block.line}: a code block needs one "
                                     f"of the info strings {KINDS}, not '{block.kind}'")


# ---- held against the parser ------------------------------------------------------------


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parsers: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        top = build_parser(command)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parsers.update({name: p for name, p in sub.choices.items() if name == command})
    return parsers


PARSERS = _parsers()


def _mentions() -> list[tuple[str, str]]:
    """(where, text) of every place outside ``sh`` blocks that shows a command line."""
    found: list[tuple[str, str]] = []
    for block in readme_blocks():
        if block.kind == "text":
            found += [(f"block at line {block.line}", line.strip())
                      for line in block.text.splitlines()
                      if line.strip().startswith("sockferry ")]
    prose = _prose()
    found += [("inline", span) for span in re.findall(r"`(sockferry [^`]+)`", prose)]
    found += [("table row", row.split("|", 2)[1].strip().strip("`") + " " + row)
              for row in prose.splitlines() if row.startswith("| `sockferry ")]
    return found


def _commands_of(text: str) -> list[str]:
    """``sockferry send|get|ls ...`` -> [send, get, ls]; [] for global usage."""
    words = text.split()
    if len(words) < 2 or words[1].startswith("-") or words[1].isupper():
        return []
    names = [n.strip("`,") for n in words[1].replace("\\|", "|").split("|")]
    return [n for n in names if n in PARSERS] or [words[1]]


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return dict(parser._option_string_actions)


def test_command_lines_name_real_commands_options_and_choices() -> None:
    mentions = _mentions()
    assert len(mentions) > 20, "the README shows fewer command lines than expected"
    problems: list[str] = []
    for where, text in mentions:
        commands = _commands_of(text)
        for command in commands:
            if command not in PARSERS:
                problems.append(f"{where}: '{text}' names no command '{command}'")
                continue
            actions = _option_actions(PARSERS[command])
            for option, choices in OPTION.findall(text.split(" -- ")[0]):
                if option in GLOBAL_OPTIONS:
                    continue
                action = actions.get(option)
                if action is None:
                    problems.append(f"{where}: '{command}' has no option {option} "
                                    f"({text[:80]})")
                elif choices and action.choices is not None:
                    shown = set(choices.replace("\\|", "|").split("|"))
                    if shown != {str(c) for c in action.choices}:
                        problems.append(f"{where}: {command} {option} shows {sorted(shown)}, "
                                        f"the parser has {sorted(map(str, action.choices))}")
    assert not problems, "\n".join(problems)


def test_library_snippets_compile_and_use_exported_names() -> None:
    import sockferry  # noqa: PLC0415 - only this test needs the package itself

    snippets = [b for b in readme_blocks() if b.kind == "python"]
    assert snippets, "README.md shows no use of the library"
    for block in snippets:
        compile(block.text, f"README.md line {block.line}", "exec")
        for name in re.findall(r"\bsockferry\.(\w+)", block.text):
            assert name in sockferry.__all__, f"README.md line {block.line}: sockferry.{name}"


def test_the_module_map_names_modules_that_exist() -> None:
    [layout] = [b for b in readme_blocks() if b.text.startswith("src/sockferry/")]
    names = set(re.findall(r"\b([a-z_]+\.py)\b", layout.text))
    present = {p.name for p in (ROOT / "src" / "sockferry").rglob("*.py")}
    assert len(names) > 20
    assert names <= present, f"the README names missing modules: {sorted(names - present)}"


def test_checkout_commands_are_the_ones_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = [b for b in readme_blocks() if b.kind == "console"]
    assert blocks
    for block in blocks:
        for command in filter(None, map(str.strip, block.text.splitlines())):
            assert (ROOT / command.split()[0]).is_file()
            assert command in ci, f"CI does not run the README's '{command}'"


# ---- run as written ---------------------------------------------------------------------


def _sandbox_missing() -> str | None:
    if os.geteuid() != 0:
        return "the README sandbox needs root (network and mount namespaces)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


SH_BLOCKS = [b for b in readme_blocks() if b.kind == "sh"]


def test_there_are_examples_to_run() -> None:
    assert SH_BLOCKS, "README.md has no examples to run"


@pytest.mark.parametrize("block", SH_BLOCKS, ids=[f"line{b.line}" for b in SH_BLOCKS])
def test_example_runs_as_written(block: Block, tmp_path: Path) -> None:
    reason = _sandbox_missing()
    if reason is not None:
        if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
            pytest.fail(f"{reason} (SOCKFERRY_REQUIRE_PEERS=1)")
        pytest.skip(reason)
    script = tmp_path / "block.sh"
    script.write_text(block.text + "\n")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(["unshare", "--net", "--mount", "--fork", "--",
                             sys.executable, str(SANDBOX), str(work), str(script)],
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                            check=False)
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    commands = [line.strip() for line in block.text.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert [r["command"] for r in runs] == commands
    failed = [f"{r['command']} -> exit {r['code']}:\n{r['output']}" for r in runs
              if r["code"] != 0]
    assert not failed, f"README.md block at line {block.line}:\n" + "\n".join(failed)

"""``sockferry completion bash|zsh|fish``: the scripts run in the real shells and
complete what the parsers have."""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sockferry.cli import COMMANDS, command_parser
from sockferry.cli.completion import SHELLS
from tests.conftest import require_program

TIMEOUT_S = 60


def generated(shell: str, directory: Path) -> Path:
    """The script as a user gets it: ``python -m sockferry completion SHELL``."""
    done = subprocess.run([sys.executable, "-m", "sockferry", "completion", shell],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    path = directory / "home" / f"sockferry.{shell}"  # out of the way of file names
    path.write_text(done.stdout)
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory with a file and a subdirectory to complete, and a HOME of its own."""
    (tmp_path / "home").mkdir()
    (tmp_path / "payload.bin").write_bytes(b"x")
    (tmp_path / "pxe").mkdir()
    return tmp_path


def _env(work: Path) -> dict[str, str]:
    home = work / "home"
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LC_ALL": "C.UTF-8",
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share")}


# ---- bash -------------------------------------------------------------------------------


def bash_complete(work: Path, *words: str) -> list[str]:
    """COMPREPLY of the script's function for COMP_WORDS=words, the cursor on the last."""
    bash = require_program("bash")
    script = generated("bash", work)
    program = (f"source {shlex.quote(str(script))}\n"
               f"COMP_WORDS=({' '.join(map(shlex.quote, words))})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               f"COMP_LINE={shlex.quote(' '.join(words))}; COMP_POINT=${{#COMP_LINE}}\n"
               "_sockferry sockferry\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run([bash, "--norc", "--noprofile", "-c", program], cwd=work,
                          env=_env(work), capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert (done.returncode, done.stderr) == (0, "")
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_command_names(work: Path) -> None:
    assert bash_complete(work, "sockferry", "") == list(COMMANDS)
    assert bash_complete(work, "sockferry", "tftp-") == ["tftp-serve", "tftp-get", "tftp-put"]
    # After global options, and the value of --config.
    assert bash_complete(work, "sockferry", "-q", "--config", "c.toml", "pro") == ["probe"]


def test_bash_completes_every_option_of_send(work: Path) -> None:
    expected = [s for a in command_parser("send")._actions for s in a.option_strings]
    assert sorted(bash_complete(work, "sockferry", "send", "-")) == sorted(expected)
    assert bash_complete(work, "sockferry", "send", "--tok") == ["--token-file"]


def test_bash_completes_the_choices_of_serve_fsync(work: Path) -> None:
    choices = ["none", "batch", "each"]
    assert bash_complete(work, "sockferry", "serve", "--fsync", "") == choices
    assert bash_complete(work, "sockferry", "serve", "--fsync", "b") == ["batch"]


def test_bash_completes_the_value_after_an_equals_sign(work: Path) -> None:
    # COMP_WORDBREAKS holds '=': '--fsync=' reaches the function as '--fsync' '='.
    assert bash_complete(work, "sockferry", "serve", "--fsync", "=") == ["none", "batch",
                                                                          "each"]
    assert bash_complete(work, "sockferry", "serve", "--fsync", "=", "e") == ["each"]
    # And the word after it is an argument again: ROOT, a directory.
    assert bash_complete(work, "sockferry", "serve", "--fsync", "=", "each", "p") == ["pxe"]
    # Without '=' in COMP_WORDBREAKS the word is whole, and so is the reply.
    assert bash_complete(work, "sockferry", "serve", "--fsync=ea") == ["--fsync=each"]


def test_bash_completes_files_where_a_path_goes(work: Path) -> None:
    assert sorted(bash_complete(work, "sockferry", "send", "")) == ["home", "payload.bin",
                                                                     "pxe"]
    assert bash_complete(work, "sockferry", "send", "--token-file", "pay") == ["payload.bin"]
    assert bash_complete(work, "sockferry", "send", "-P", "2345", "pay") == ["payload.bin"]
    # get HOST:SRC... DEST: DEST is local.
    assert bash_complete(work, "sockferry", "get", "host:a", "pay") == ["payload.bin"]
    # A port is no path; nor is an option's value that takes a number.
    assert bash_complete(work, "sockferry", "send", "-P", "") == []
    assert bash_complete(work, "sockferry", "probe", "") == []


def test_bash_completes_positional_choices(work: Path) -> None:
    assert bash_complete(work, "sockferry", "token", "") == ["new", "show"]
    assert bash_complete(work, "sockferry", "token", "new", "pay") == ["payload.bin"]
    assert bash_complete(work, "sockferry", "completion", "") == list(SHELLS)
    assert bash_complete(work, "sockferry", "config", "show", "tftp-g") == ["tftp-get"]


# ---- fish -------------------------------------------------------------------------------


def fish_complete(work: Path, line: str) -> list[str]:
    """The candidates (without descriptions) fish offers for ``line``."""
    fish = require_program("fish")
    script = generated("fish", work)
    command = f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"
    done = subprocess.run([fish, "--no-config", "-c", command], cwd=work, env=_env(work),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    return [row.split("\t", 1)[0] for row in done.stdout.splitlines()]


def test_fish_completes_command_names(work: Path) -> None:
    assert fish_complete(work, "sockferry ser") == ["serve"]
    assert sorted(fish_complete(work, "sockferry ")) == sorted(COMMANDS)


def test_fish_completes_options_and_choices(work: Path) -> None:
    assert fish_complete(work, "sockferry serve --fs") == ["--fsync"]
    assert sorted(fish_complete(work, "sockferry serve --fsync ")) == ["batch", "each",
                                                                       "none"]
    assert sorted(fish_complete(work, "sockferry serve --fsync=")) == [
        "--fsync=batch", "--fsync=each", "--fsync=none"]
    longs = {s for a in command_parser("send")._actions for s in a.option_strings
             if s.startswith("--")}
    assert set(fish_complete(work, "sockferry send --")) == longs


def test_fish_completes_files_only_where_a_path_goes(work: Path) -> None:
    assert sorted(fish_complete(work, "sockferry send ")) == ["home/", "payload.bin", "pxe/"]
    assert fish_complete(work, "sockferry serve p") == ["pxe/"]  # ROOT: directories
    assert fish_complete(work, "sockferry token ") == ["new", "show"]
    assert fish_complete(work, "sockferry probe ") == []
    assert fish_complete(work, "sockferry send -P ") == []


# ---- zsh --------------------------------------------------------------------------------


def test_zsh_script_parses(work: Path) -> None:
    zsh = require_program("zsh")
    done = subprocess.run([zsh, "-n", str(generated("zsh", work))], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def zsh_tab(work: Path, line: str) -> str:
    """What an interactive zsh (compinit, the script on $fpath) shows after ``line`` TAB,
    control sequences removed."""
    zsh = require_program("zsh")
    functions = work / "functions"
    functions.mkdir(exist_ok=True)
    generated("zsh", work).rename(functions / "_sockferry")
    master, slave = pty.openpty()
    child = subprocess.Popen([zsh, "-f", "-i"], stdin=slave, stdout=slave, stderr=slave,
                             cwd=work, env={**_env(work), "TERM": "xterm"},
                             start_new_session=True)
    os.close(slave)

    def read(until: bytes | None, timeout_s: float = 20.0, quiet_s: float = 1.0) -> bytes:
        """Output until ``until`` appears, or (None) until it has been quiet a while."""
        seen, deadline, last = b"", time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline:
            if until is not None and until in seen:
                break
            if until is None and seen and time.monotonic() - last > quiet_s:
                break
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child is gone
                    break
                last = time.monotonic()
        return seen

    try:
        # The prompt is READY> once set; the echo of the line setting it is not.
        os.write(master, f"fpath=({functions} $fpath); autoload -Uz compinit; compinit -u "
                         "-D; PS1='READ''Y> '\n".encode())
        assert b"READY> " in read(b"READY> "), "zsh did not start"
        os.write(master, line.encode() + b"\t")
        shown = read(None)  # the completed word or the listing, then the line redrawn
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=TIMEOUT_S)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode(errors="replace"))  # colours, bold
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\r]", " ", text)  # cursor moves


def test_zsh_completes_in_a_real_shell(work: Path) -> None:
    assert "sockferry serve --fsync=" in zsh_tab(work, "sockferry serve --fsy")


def test_zsh_lists_choices_in_a_real_shell(work: Path) -> None:
    shown = zsh_tab(work, "sockferry serve --fsync=")
    for choice in ("none", "batch", "each"):
        assert choice in shown.split(), shown


def test_zsh_lists_commands_in_a_real_shell(work: Path) -> None:
    shown = zsh_tab(work, "sockferry tftp-")
    for name in ("tftp-serve", "tftp-get", "tftp-put"):
        assert name in shown, shown


# ---- all of them ------------------------------------------------------------------------


def test_every_option_of_every_command_is_in_every_script(work: Path) -> None:
    scripts = {shell: generated(shell, work).read_text() for shell in SHELLS}
    for name in COMMANDS:
        for action in command_parser(name)._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert option in scripts["bash"], (name, option)
                assert option in scripts["zsh"], (name, option)
                flag = (f"-l '{option[2:]}'" if option.startswith("--")
                        else f"-s '{option[1:]}'")
                assert flag in scripts["fish"], (name, option)
            for choice in action.choices or ():
                for shell in SHELLS:
                    assert str(choice) in scripts[shell], (shell, name, choice)


def test_help_does_not_load_the_completion_module() -> None:
    probe = ("import sys; from sockferry.cli import main; main(['--help']); "
             "print('sockferry.cli.completion' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert done.stderr.strip().splitlines()[-1] == "False"
    assert "completion" in done.stdout
